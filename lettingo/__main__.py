"""`python -m lettingo` is the `lettingo` console script."""

from lettingo.cli import main

if __name__ == "__main__":  # not when a spawned rank imports this module as its parent's main
    main()
