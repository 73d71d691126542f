"""What every stage receives: the resolved config, the run folder's artifacts and the tracker."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from lettingo.artifacts import ArtifactStore
from lettingo.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """One run: its config, its folder, its artifacts and where metrics go."""

    cfg: DictConfig
    run_dir: Path
    store: ArtifactStore
    tracker: Tracker


def seed_everything(seed: int, num_threads: int | None = None) -> None:
    """Seed Python, NumPy and torch; set torch's CPU thread count when given."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(int(num_threads))
