"""The stated-mean rule reward (E0, the positive control): does the profile state the user's mean rating?

Strict, so a generator cannot earn it by spraying numbers: the stated value is the first decimal number
in [1, 5] written (``3.7``) or the number right after the word "average" (``average of 4``, ``averages
3.5``), whichever comes first; it earns 1.0 within ±0.05 of the user's mean rating over the H older items
the prompt shows (the prompt writes that mean to one decimal, so copying it earns the reward), else 0.0.
Every decimal number in [1, 5] beyond the first costs 0.25; a degenerate text scores -1.0. The same rule
against another user's mean (`shuffled_mean_rewards`) is the guard: a gain there is no user fact. The stated
value is parsed as the reader control f_Rec reads it (`lettingo.recommender.reader.stated_mean`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lettingo.data.samples import older_history
from lettingo.feedback.sensitivity import donors
from lettingo.profiles.user_facts import rating_stats
from lettingo.recommender.reader import rating_decimals, stated_mean

#: How far the stated value may be from the user's mean (the prompt rounds it to one decimal).
TOLERANCE = 0.05
#: What each decimal number in [1, 5] beyond the first costs.
EXTRA_DECIMAL_COST = 0.25
#: The reward of a degenerate text (empty, repetition, echo: `lettingo.profiles.quality`).
DEGENERATE_REWARD = -1.0


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
