"""Process set-up every stage shares: seeds, torch's CPU thread count, third-party deprecation noise, the Trainer."""

from __future__ import annotations

import random
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

if TYPE_CHECKING:
    import lightning.pytorch as L

#: Deprecations raised inside third-party code by its own calls (nothing of ours can change them); silenced
#: by exact message so that a run log shows only warnings about what lettingo does.
THIRD_PARTY_DEPRECATIONS = (
    # lightning/pytorch/utilities/_pytree.py on torch >= 2.10 (Lightning's own use of torch's pytree API)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def quiet_third_party_deprecations() -> None:
    """Silence the deprecations of THIRD_PARTY_DEPRECATIONS (FutureWarning/DeprecationWarning) in this process."""
    for message in THIRD_PARTY_DEPRECATIONS:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=message, category=category)


def seed_everything(seed: int, num_threads: int | None = None) -> None:
    """Seed Python, NumPy and torch; set torch's CPU thread count when given."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(int(num_threads))


def lightning_trainer(trainer_cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The Lightning Trainer of ``trainer_cfg`` (a ``trainer`` config node) with ``overrides`` on top.

    Its progress bar is tqdm's: Lightning picks Rich's when rich is installed, and Rich draws nothing
    into a redirected log (a batch job's, nohup's) until the fit has ended.
    """
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import TQDMProgressBar

    callbacks = list(overrides.pop("callbacks", []))
    if overrides.get("enable_progress_bar", trainer_cfg.get("enable_progress_bar", True)):
        callbacks.append(TQDMProgressBar())
    return instantiate(trainer_cfg, **overrides, callbacks=callbacks)
