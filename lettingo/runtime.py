"""Process set-up every stage shares: seeds, torch's CPU thread count, third-party deprecation noise."""

from __future__ import annotations

import random
import warnings

import numpy as np

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
