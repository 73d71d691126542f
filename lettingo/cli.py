"""The `lettingo` console script: `lettingo stage=<stage> [group=option ...] [key=value ...]`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from lettingo.pipeline import run

#: conf/ sits beside the package in the source tree (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Compose the config from the command line and run the chosen stage."""
    run(cfg)


if __name__ == "__main__":
    main()
