"""The stated-mean rule reward (E0, the positive control): does the profile state the user's mean rating?

Strict, so a generator cannot earn it by spraying numbers: the stated value is the first decimal number
in [1, 5] written (``3.7``) or the number right after the word "average" (``average of 4``, ``averages
3.5``), whichever comes first; it earns 1.0 within ±0.05 of the user's mean rating over the H older items
the prompt shows (the prompt writes that mean to one decimal, so copying it earns the reward), else 0.0.
Every decimal number in [1, 5] beyond the first costs 0.25; a degenerate text scores -1.0. The same rule
against another user's mean (`shuffled_mean_rewards`) is the guard: a gain there is no user fact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lettingo.data.samples import older_history
from lettingo.feedback.sensitivity import donors
from lettingo.profiles.user_facts import rating_stats

#: How far the stated value may be from the user's mean (the prompt rounds it to one decimal).
TOLERANCE = 0.05
#: What each decimal number in [1, 5] beyond the first costs.
EXTRA_DECIMAL_COST = 0.25
#: The reward of a degenerate text (empty, repetition, echo: `lettingo.profiles.quality`).
DEGENERATE_REWARD = -1.0

_DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?!\d)")
_AFTER_AVERAGE = re.compile(r"\baverages?(?:\s+of|\s+is)?[\s:=]+(\d+(?:\.\d+)?)(?!\d)", re.IGNORECASE)


def rating_decimals(text: str) -> list[re.Match[str]]:
    """The decimal numbers in [1, 5] written in ``text``, in order."""
    return [m for m in _DECIMAL.finditer(text) if 1.0 <= float(m.group()) <= 5.0]


def stated_mean(text: str) -> float | None:
    """The mean rating ``text`` states (the first decimal in [1, 5] or the number after "average"); None when none."""
    first = rating_decimals(text)[:1]
    after = _AFTER_AVERAGE.search(text)
    candidates = [(m.start(), float(m.group())) for m in first]
    if after is not None:
        candidates.append((after.start(1), float(after.group(1))))
    return min(candidates)[1] if candidates else None


def stated_mean_reward(text: str, mean: float, degenerate: bool) -> float:
    """The rule reward of one profile against the user's mean rating ``mean`` (see the module docstring)."""
    if degenerate:
        return DEGENERATE_REWARD
    value = stated_mean(text)
    hit = value is not None and abs(value - mean) <= TOLERANCE + 1e-9
    extra = max(len(rating_decimals(text)) - 1, 0)
    return float(hit) - EXTRA_DECIMAL_COST * extra


def user_mean(sample: Mapping[str, Any], history: int) -> float:
    """The mean rating of the ``history`` older items the generator's prompt shows."""
    return rating_stats(older_history(sample, history)).mean


def shuffled_mean_rewards(users: Sequence[str], texts: Sequence[str], degenerate: Sequence[bool],
                          means: Mapping[str, float], seed: int) -> list[float]:
    """The rule reward of each profile against another user's mean (a seeded derangement of the users, as the
    shuffle check's): the floor the true reward must beat."""
    donor = donors(list(dict.fromkeys(users)), seed)
    return [stated_mean_reward(text, means[donor[user]], bad)
            for user, text, bad in zip(users, texts, degenerate, strict=True)]
