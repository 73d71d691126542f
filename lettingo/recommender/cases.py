"""What f_Rec scores: one case = (user, profile text, K recent items with ratings, target item)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lettingo.data.samples import plain_item
from lettingo.data.schema import LABELS

LABEL_INDEX: dict[str, int] = {label: i for i, label in enumerate(LABELS)}


@dataclass(frozen=True)
class RecCase:
    """One prediction: the user's sentiment toward `target` given `profile` and `recent` (oldest first).

    `profile` is free text; the empty string means "no profile" (the 10H baseline). The target's
    rating is never shown to f_Rec: it only provides the true label.
    """

    user_id: str
    profile: str
    recent: tuple[Mapping[str, Any], ...]
    target: Mapping[str, Any]

    @property
    def label(self) -> str:
        """The true label: the target's sentiment."""
        return str(self.target["label"])

    def with_profile(self, profile: str) -> RecCase:
        """The same case with another profile."""
        return RecCase(self.user_id, profile, self.recent, self.target)

    def without_recent(self) -> RecCase:
        """The same case with no recent items (only the profile describes the user)."""
        return RecCase(self.user_id, self.profile, (), self.target)


def case_from_sample(sample: Mapping[str, Any], profile: str = "") -> RecCase:
    """The case of a sample's real target: its K recent items and its profile."""
    return RecCase(
        user_id=str(sample["user_id"]),
        profile=profile,
        recent=tuple(plain_item(i) for i in sample["recent"]),
        target=plain_item(sample["target"]),
    )


def target_cases(sample: Mapping[str, Any], profile: str, targets: int = 1) -> list[RecCase]:
    """The cases of a sample's last ``targets`` target windows (`evaluate.targets_per_user`), oldest target first.

    The last is the real target's case (`case_from_sample`); every target follows the older history.
    """
    if targets == 1:
        return [case_from_sample(sample, profile)]
    windows = list(sample.get("targets", ()))
    if len(windows) < targets:
        raise ValueError(f"user {sample['user_id']} has {len(windows)} target windows, fewer than "
                         f"evaluate.targets_per_user={targets}: the samples were made for another M")
    return [RecCase(str(sample["user_id"]), profile, tuple(plain_item(i) for i in w["recent"]),
                    plain_item(w["target"])) for w in windows[len(windows) - targets :]]


def shifted_cases(sample: Mapping[str, Any], profile: str, n_targets: int) -> list[RecCase]:
    """Up to `n_targets` cases of one user: the real target, then each recent item in turn (newest first).

    Case j predicts the j-th item counted back from the target from the K items before it. Every
    such target lies after the older history the profile was written from, so no case leaks its
    answer into the profile; the extra cases multiply the training data of a trainable f_Rec.
    """
    if n_targets < 1:
        raise ValueError(f"n_targets must be at least 1, got {n_targets}")
    recent = [plain_item(i) for i in sample["recent"]]
    timeline = [plain_item(i) for i in sample["older"]] + recent + [plain_item(sample["target"])]
    k = len(recent)
    cases = []
    for back in range(min(n_targets, len(recent) + 1)):
        end = len(timeline) - 1 - back
        if end < k:
            break
        cases.append(RecCase(str(sample["user_id"]), profile, tuple(timeline[end - k : end]), timeline[end]))
    return cases


def label_codes(cases: Sequence[RecCase]) -> np.ndarray:
    """The true label index (in LABELS order) of each case."""
    return np.fromiter((LABEL_INDEX[c.label] for c in cases), dtype=np.int64, count=len(cases))


def predicted_labels(probabilities: np.ndarray) -> list[str]:
    """The arg-max label of each row of an (n, 3) probability array."""
    return [LABELS[i] for i in np.asarray(probabilities).argmax(axis=1)]
