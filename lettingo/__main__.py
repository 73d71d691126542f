"""`python -m lettingo` is the `lettingo` console script."""

from lettingo.cli import main

main()
