"""Process set-up every stage shares: seeds and torch's CPU thread count."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int, num_threads: int | None = None) -> None:
    """Seed Python, NumPy and torch; set torch's CPU thread count when given."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(int(num_threads))
