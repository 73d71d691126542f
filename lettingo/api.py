"""The Python API for notebooks and scripts, as RecBole's ``run_recbole``: the `lettingo` command without a shell.

    import lettingo
    cfg = lettingo.compose(["experiment=quickstart", "history=h50"])   # checked, as the command line checks it
    results = lettingo.run(cfg)                                       # or lettingo.run(["debug=tiny"])
    table = lettingo.load_results(cfg.paths.run_dir)                  # the test stage's comparison, one row per method

The run folder is the one the command would pick (a new dated folder for the pipeline, the experiment's latest
for a single stage, or ``run_dir=``), chosen when :func:`run` starts; logging is the notebook's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lettingo import CONFIG_DIR
from lettingo.artifacts import RESULTS
from lettingo.evaluation.comparison import FILE_STEM, read_comparison
from lettingo.run_folders import register_resolvers, run_folder
from lettingo.schemas import compose_config


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``lettingo <overrides>`` runs, composed and checked (a bad value raises a one-line ValueError).

    ``paths.run_dir`` is None until :func:`run` picks the folder, unless ``paths.run_dir=`` is among the overrides.
    """
    register_resolvers()
    cfg = compose_config(list(overrides), CONFIG_DIR)
    if OmegaConf.is_interpolation(cfg.paths, "run_dir"):  # Hydra's output folder: there is no Hydra run here
        cfg.paths.run_dir = None
    return cfg


def run(cfg_or_overrides: DictConfig | Sequence[str] = ()) -> dict[str, Any]:
    """Run the stage(s) of a config from :func:`compose` (or of the overrides given) and return their results:
    stage name -> its summary for the pipeline, the stage's summary for a single stage. A config's
    ``paths.run_dir`` is set to the folder the run wrote (so :func:`load_results` can read it)."""
    from lettingo.pipeline import run as run_stages

    cfg = cfg_or_overrides if isinstance(cfg_or_overrides, DictConfig) else compose(cfg_or_overrides)
    if cfg.paths.run_dir is None:
        cfg.paths.run_dir = run_folder(cfg.paths.experiment_dir, cfg.stage, cfg.run_dir)
    return run_stages(cfg)


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The test stage's comparison of a finished run folder: one row per method, ``<metric>_value``, ``_low`` and
    ``_high`` columns (fractions; log_loss in nats)."""
    path = Path(run_dir) / RESULTS / f"{FILE_STEM}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: give the folder of a run whose test stage finished")
    return read_comparison(path).flat_table()
