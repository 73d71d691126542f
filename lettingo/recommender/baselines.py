"""Baselines that read no profile: majority class, the user's mean rating, and f_Rec's profile-free inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd

from lettingo.data.samples import older_history, plain_item
from lettingo.data.schema import LABELS, LabelThresholds
from lettingo.recommender.cases import RecCase, case_from_sample
from lettingo.recommender.text import ItemTextConfig, raw_history_profile


def majority_label(labels: Sequence[str]) -> str:
    """The most frequent label (ties go to the first in LABELS order)."""
    if not labels:
        raise ValueError("the majority class of no labels is undefined")
    counts = Counter(labels)
    return max(LABELS, key=lambda label: (counts.get(label, 0), -LABELS.index(label)))


def user_mean_labels(samples: pd.DataFrame, thresholds: LabelThresholds) -> list[str]:
    """Per sample: the mean rating over all its interactions before the target, mapped to a label.

    "All" is what the sample holds: the older history (the largest H) and the K recent items.
    """
    labels = []
    for older, recent in zip(samples["older"], samples["recent"], strict=True):
        ratings = [float(item["rating"]) for item in [*older, *recent]]
        labels.append(thresholds.label(sum(ratings) / len(ratings)))
    return labels


def empty_profile_cases(samples: pd.DataFrame) -> list[RecCase]:
    """The 10H baseline: each sample's real target with the profile left empty."""
    return [case_from_sample(sample) for sample in samples.to_dict("records")]


def raw_history_cases(samples: pd.DataFrame, history: int, item_text: ItemTextConfig) -> list[RecCase]:
    """The 10H + raw H baseline: the last H older items pasted, as text, where the profile goes."""
    cases = []
    for sample in samples.to_dict("records"):
        older = [plain_item(i) for i in older_history(sample, history)]
        cases.append(case_from_sample(sample, raw_history_profile(older, item_text)))
    return cases
