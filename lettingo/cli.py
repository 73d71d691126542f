"""The `lettingo` console script: `lettingo stage=<stage> [group=option ...] [key=value ...]`.

A failure prints one line (what failed and where the full traceback went); `HYDRA_FULL_ERROR=1`
prints the traceback itself. Every failure also goes to the run folder's log.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from lettingo import CONFIG_DIR
from lettingo.run_folders import register_resolvers

register_resolvers()

log = logging.getLogger("lettingo")


def log_file() -> str | None:
    """The file the run's log goes to (Hydra's file handler), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def one_line(error: BaseException) -> str:
    """An error as one line: its type (unless it is a plain ValueError/RuntimeError) and first message line.

    Hydra wraps an error raised while building an object (a backbone, an f_Rec) in InstantiationException;
    the line is the wrapped error's.
    """
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    plain = type(error) in (ValueError, RuntimeError)
    return text if plain else f"{type(error).__name__}: {text}"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Compose the config from the command line and run the chosen stage."""
    from lettingo.pipeline import run
    from lettingo.runtime import quiet_third_party_deprecations

    quiet_third_party_deprecations()
    try:
        run(cfg)
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        target = log_file()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, "stage failed", (),
                                            sys.exc_info()))
        where = f" (traceback in {target}; HYDRA_FULL_ERROR=1 prints it)" if target else ""
        print(f"error: {one_line(error)}{where}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
