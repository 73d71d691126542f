"""Baselines that read no profile, on hand-made samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lettingo.data.schema import LabelThresholds
from lettingo.recommender.baselines import empty_profile_cases, majority_label, raw_history_cases, user_mean_labels
from lettingo.recommender.text import ItemTextConfig, case_fields


def item(i: int, rating: float) -> dict:
    label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
    return {"item_id": str(i), "title": f"Film {i}", "attributes": np.array(["Drama"], dtype=object),
            "rating": rating, "label": label, "text": ""}


def sample(user: str, older: list[float], recent: list[float], target: float) -> dict:
    return {"user_id": user, "older": [item(i, r) for i, r in enumerate(older)],
            "recent": [item(100 + i, r) for i, r in enumerate(recent)], "target": item(999, target)}


SAMPLES = pd.DataFrame([
    sample("a", [5, 5, 4], [4, 3], 1),  # mean 4.2 -> like
    sample("b", [1, 2, 3], [3, 4], 5),  # mean 2.6 -> neutral
    sample("c", [1, 1, 2], [2, 3], 5),  # mean 1.8 -> dislike
    sample("d", [4, 4, 4], [3, 5], 3),  # mean 4.0 -> like (the threshold is inclusive)
])


def test_user_mean_maps_the_mean_of_all_earlier_ratings_through_the_thresholds() -> None:
    assert user_mean_labels(SAMPLES, LabelThresholds(4.0, 2.0)) == ["like", "neutral", "dislike", "like"]
    assert user_mean_labels(SAMPLES, LabelThresholds(4.5, 1.5)) == ["neutral", "neutral", "neutral", "neutral"]


def test_majority_label_and_ties() -> None:
    assert majority_label(["neutral", "dislike", "neutral", "like"]) == "neutral"
    assert majority_label(["dislike", "like"]) == "like"  # ties go to the first label in LABELS order
    with pytest.raises(ValueError):
        majority_label([])


def test_profile_free_inputs() -> None:
    empty = empty_profile_cases(SAMPLES)
    assert [c.profile for c in empty] == [""] * 4 and [c.label for c in empty] == ["dislike", "like", "like", "neutral"]
    raw = raw_history_cases(SAMPLES, history=2, item_text=ItemTextConfig())
    assert raw[0].profile.splitlines()[1:] == ["1. Film 1 | Drama | rated 5 (like)",
                                               "2. Film 2 | Drama | rated 4 (like)"]
    fields = case_fields(raw[0], ItemTextConfig(), "(none)")
    assert fields["target"] == "Film 999 | Drama"  # the target's rating stays hidden
    assert fields["recent_newest_first"].splitlines()[0].startswith("1. Film 101")
    with pytest.raises(ValueError, match="fewer than H"):
        raw_history_cases(SAMPLES, history=5, item_text=ItemTextConfig())
