"""The reader control f_Rec (E1): the tabular f_Rec plus one number read from the profile, the mean rating it states.

Its dependence on the profile text is known by construction: the profile reaches the trees only as
`stated_mean` (NaN when the text states none, which gradient-boosted trees route on their own), so a
generator raises this f_Rec's verdict only by stating a mean rating that helps predict the user's labels.
Stage train_rec fits it on cases whose profile is the user's oracle facts (stating the true mean) or
empty, so it learns what a stated mean is worth beside the recent ratings and the item statistics.

The parser is the one the stated-mean rule reward (`lettingo.feedback.rule_reward`) checks: the first decimal
number in [1, 5] written, or the number right after the word "average", whichever comes first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from lettingo.recommender.cases import RecCase
from lettingo.recommender.tabular import Item, TabularRecommender

#: The name of the feature read from the profile.
STATED_MEAN = "profile_stated_mean"

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


def stated_mean_feature(text: str) -> float:
    """`stated_mean` as a feature value: NaN (missing) when the text states none."""
    value = stated_mean(text)
    return math.nan if value is None else value


class ReaderRecommender(TabularRecommender):
    """The tabular f_Rec's features plus `stated_mean_feature` of the case's profile, as the last column.

    Fitted by `fit_cases` on cases with profiles (stage train_rec: oracle facts or empty, a seeded half and
    half); `fit` on samples would see only empty profiles, so the feature would always be missing.
    """

    @property
    def feature_names(self) -> list[str]:
        """The tabular feature names, then the stated mean."""
        return [*super().feature_names, STATED_MEAN]

    def matrix(self, cases: Sequence[tuple[RecCase, Sequence[Item] | None]]) -> np.ndarray:
        """The tabular feature matrix with each case's stated mean appended."""
        stated = np.fromiter((stated_mean_feature(c.profile) for c, _ in cases), dtype=float, count=len(cases))
        return np.column_stack([super().matrix(cases), stated])
