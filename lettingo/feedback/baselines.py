"""The baselines table: f_Rec with and without profile inputs, its floor (shuffled profiles) and ceiling
(oracle facts), against majority class and user mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lettingo.data.schema import LabelThresholds
from lettingo.evaluation.methods import MAJORITY, ORACLE_FACTS, SHUFFLED, SHUFFLED_ORACLE, USER_MEAN, no_profile_label
from lettingo.feedback.sensitivity import shuffled_texts
from lettingo.recommender.base import Recommender
from lettingo.recommender.baselines import empty_profile_cases, majority_label, raw_history_cases, user_mean_labels
from lettingo.recommender.cases import case_from_sample
from lettingo.recommender.text import ItemTextConfig


def baseline_probabilities(
    recommender: Recommender,
    samples: pd.DataFrame,
    raw_histories: Sequence[int],
    item_text: ItemTextConfig,
    recent: int,
    profiles: Mapping[str, str] | None = None,
    oracle: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Row name -> f_Rec's label probabilities per sample (in ``samples`` order), for every row f_Rec scores.

    ``recent`` is K, which names the no-profile row. ``profiles`` (one text per user) adds f_Rec with the base
    generator's profile and its floor, the same profiles shuffled among users; ``oracle`` (the user facts of
    the older history as the profile) adds the ceiling a faithful profile could reach, and its floor.
    """
    records = samples.to_dict("records")

    def with_texts(texts: Mapping[str, str]) -> np.ndarray:
        return recommender.predict([case_from_sample(s, texts[str(s["user_id"])]) for s in records])

    rows = {no_profile_label(recent): recommender.predict(empty_profile_cases(samples))}
    for history in raw_histories:
        rows[f"{recent}H + raw {int(history)}H"] = recommender.predict(raw_history_cases(samples, int(history),
                                                                                         item_text))
    if profiles is not None:
        rows[f"{recent}H + P (base generator)"] = with_texts(profiles)
        rows[SHUFFLED] = with_texts(shuffled_texts(profiles, seed))
    if oracle is not None:
        rows[ORACLE_FACTS] = with_texts(oracle)
        rows[SHUFFLED_ORACLE] = with_texts(shuffled_texts(oracle, seed))
    return rows


def rule_predictions(samples: pd.DataFrame, train_labels: Sequence[str],
                     thresholds: LabelThresholds) -> dict[str, list[str]]:
    """The rows no model scores: the majority class of the training users' targets and each user's mean rating."""
    return {MAJORITY: [majority_label(list(train_labels))] * len(samples),
            USER_MEAN: user_mean_labels(samples, thresholds)}
