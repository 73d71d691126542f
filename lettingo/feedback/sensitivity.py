"""The shuffle check: does f_Rec read the profile? Accuracy with true profiles minus with shuffled ones.

Each user's profiles are replaced by another user's (a random derangement of the users, so
nobody keeps their own); recent items and target stay the user's own. An f_Rec that ignores the
profile scores the same either way: ``profile_sensitivity`` near zero means the task-driven
rewards say nothing about the profiles, and the whole loop is meaningless. ``flip_rate`` (the
share of predictions the shuffle changes) tells two reasons apart: near 0, f_Rec ignores the
profile; well above 0 with no accuracy change, it reads the profiles but they carry nothing useful.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lettingo.data.schema import LABELS
from lettingo.evaluation.bootstrap import paired_bootstrap
from lettingo.recommender.base import Recommender
from lettingo.recommender.cases import RecCase, predicted_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sensitivity:
    """accuracy(true profiles) - accuracy(shuffled profiles) with its paired bootstrap interval over users."""

    value: float
    low: float
    high: float
    p_value: float
    accuracy_true: float
    accuracy_shuffled: float
    flip_rate: float
    users: int
    cases: int

    def clearly_positive(self, min_effect: float) -> bool:
        """Whether the interval excludes 0 and the estimate reaches ``min_effect``."""
        return self.low > 0 and self.value >= min_effect

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON."""
        return asdict(self)


def donors(users: Sequence[str], seed: int) -> dict[str, str]:
    """User -> the other user whose profile it gets: a seeded derangement (one cycle, nobody keeps their own)."""
    if len(users) < 2:
        raise ValueError("shuffling profiles among users needs at least 2 users")
    order = [users[i] for i in np.random.default_rng(seed).permutation(len(users))]
    return {u: order[(i + 1) % len(order)] for i, u in enumerate(order)}


def shuffled_texts(texts: Mapping[str, str], seed: int) -> dict[str, str]:
    """Each user's profile text replaced by another user's (the floor of a profile method)."""
    donor = donors(list(texts), seed)
    return {user: texts[donor[user]] for user in texts}


def shuffle_profiles(cases: Sequence[RecCase], seed: int) -> list[RecCase]:
    """The cases with every user's profiles taken from another user (a seeded derangement).

    The i-th case of user u gets the profile of the i-th case (cyclically) of the user u maps to.
    """
    users = list(dict.fromkeys(c.user_id for c in cases))
    donor = donors(users, seed)
    profiles: dict[str, list[str]] = {u: [] for u in users}
    for case in cases:
        profiles[case.user_id].append(case.profile)
    seen: dict[str, int] = dict.fromkeys(users, 0)
    shuffled = []
    for case in cases:
        given = profiles[donor[case.user_id]]
        shuffled.append(case.with_profile(given[seen[case.user_id] % len(given)]))
        seen[case.user_id] += 1
    return shuffled


def profile_sensitivity(
    recommender: Recommender,
    cases: Sequence[RecCase],
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    true_probabilities: np.ndarray | None = None,
) -> Sensitivity:
    """Score ``cases`` with their true and with shuffled profiles; the paired accuracy difference.

    ``true_probabilities`` (f_Rec's output on ``cases``, e.g. from the rewards) saves scoring them again.
    The bootstrap resamples users (all of a user's cases together).
    """
    true_probs = recommender.predict(cases) if true_probabilities is None else np.asarray(true_probabilities)
    if len(true_probs) != len(cases):
        raise ValueError(f"{len(true_probs)} probability rows for {len(cases)} cases")
    shuffled_probs = recommender.predict(shuffle_profiles(cases, seed))
    labels = [c.label for c in cases]
    groups = [c.user_id for c in cases]
    pred_true, pred_shuffled = predicted_labels(true_probs), predicted_labels(shuffled_probs)
    diff = paired_bootstrap(labels, pred_true, pred_shuffled, LABELS, "accuracy", n_resamples, confidence, seed, groups)
    flips = float(np.mean([a != b for a, b in zip(pred_true, pred_shuffled, strict=True)]))
    return Sensitivity(diff.value, diff.low, diff.high, diff.p_value, _accuracy(labels, pred_true),
                       _accuracy(labels, pred_shuffled), flips, diff.n, len(cases))


def _accuracy(labels: Sequence[str], predicted: Sequence[str]) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))


def sensitivity_message(result: Sensitivity, name: str, min_effect: float) -> str:
    """One line for the log; a loud warning when f_Rec does not clearly use the profile."""
    line = (
        f"profile_sensitivity of {name}: {100 * result.value:+.1f} points "
        f"[{100 * result.low:+.1f}, {100 * result.high:+.1f}] (accuracy {100 * result.accuracy_true:.1f}% with true "
        f"profiles, {100 * result.accuracy_shuffled:.1f}% shuffled; the shuffle changes "
        f"{100 * result.flip_rate:.1f}% of the predictions; {result.users} users, {result.cases} profiles)"
    )
    if result.clearly_positive(min_effect):
        return line
    return (
        "WARNING " + "!" * 20 + f"\n{line}\nf_Rec does not clearly read the profiles (interval reaches 0 or the effect "
        f"is below {100 * min_effect:.0f} points): rewards and preference pairs built on it carry little "
        "information about the profiles.\n" + "!" * 28
    )
