"""Disjoint, seeded splits of eligible users: test, rec_train and the profile-training groups."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

UNUSED = "unused"
TEST = "test"
REC_TRAIN = "rec_train"
#: `dataset.splits` key whose size every profile-training group gets, one group per configured H.
PROFILE_TRAIN = "profile_train"


def profile_split(history: int) -> str:
    """The name of the profile-training group whose users serve H = ``history``."""
    return f"{PROFILE_TRAIN}_h{int(history)}"


def expand_split_sizes(sizes: Mapping[str, int], histories: Sequence[int]) -> dict[str, int]:
    """Split sizes with `profile_train` replaced by one group of that size per H in ``histories``.

    Named groups (`profile_train_h30: 60`) are kept as given, so a dataset may size them one by one.
    """
    expanded = {name: int(size) for name, size in sizes.items() if name != PROFILE_TRAIN}
    if PROFILE_TRAIN in sizes:
        for history in sorted(set(map(int, histories))):
            expanded.setdefault(profile_split(history), int(sizes[PROFILE_TRAIN]))
    return expanded


def scaled_sizes(sizes: Mapping[str, int], available: int) -> dict[str, int]:
    """The requested split sizes, scaled down proportionally when fewer users are available."""
    requested = sum(sizes.values())
    if requested <= available:
        return dict(sizes)
    factor = available / requested
    scaled = {name: int(size * factor) for name, size in sizes.items()}
    log.warning(
        "only %d eligible users for %d requested: split sizes scaled down to %s", available, requested, scaled
    )
    return scaled


def assign_splits(user_ids: Sequence[str], sizes: Mapping[str, int], seed: int) -> dict[str, str]:
    """Map each user to a split name, drawing users without replacement in a seeded order.

    Splits take users in the order `sizes` lists them; users left over are `unused`.
    The assignment depends only on the set of users, the sizes and the seed.
    """
    for name, size in sizes.items():
        if size < 0:
            raise ValueError(f"split {name!r} has a negative size {size}")
    users = sorted(set(map(str, user_ids)))
    sizes = scaled_sizes(sizes, len(users))
    order = np.random.default_rng(seed).permutation(len(users))
    assignment = dict.fromkeys(users, UNUSED)
    start = 0
    for name, size in sizes.items():
        for index in order[start : start + size]:
            assignment[users[index]] = name
        start += size
    return assignment


def rec_train_users(samples: pd.DataFrame, max_users: int | None) -> pd.DataFrame:
    """The samples of the rec_train users (the first ``max_users`` when set), which a trainable f_Rec learns from."""
    users = samples[samples["split"] == REC_TRAIN]
    if users.empty:
        raise ValueError(f"the samples have no {REC_TRAIN!r} users; check dataset.splits")
    return users if max_users is None else users.head(max_users)


def split_role(split: str) -> str:
    """A split's name without its H (`profile_train_h30` -> `profile_train`): the tracker-key part that every
    run of an H sweep shares."""
    return PROFILE_TRAIN if split.startswith(f"{PROFILE_TRAIN}_h") and split[len(PROFILE_TRAIN) + 2:].isdigit() \
        else split
