"""The baselines table: f_Rec with and without profile inputs against majority class and user mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from lettingo.data.schema import LabelThresholds
from lettingo.evaluation.methods import MAJORITY, USER_MEAN
from lettingo.recommender.base import Recommender
from lettingo.recommender.baselines import empty_profile_cases, majority_label, raw_history_cases, user_mean_labels
from lettingo.recommender.cases import case_from_sample, predicted_labels
from lettingo.recommender.text import ItemTextConfig


def baseline_predictions(
    recommender: Recommender,
    samples: pd.DataFrame,
    train_labels: Sequence[str],
    thresholds: LabelThresholds,
    raw_histories: Sequence[int],
    item_text: ItemTextConfig,
    profiles: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Method name -> predicted label per sample (in ``samples`` order).

    ``train_labels`` (targets of the training users) give the majority class. ``profiles`` (one
    text per user of ``samples``) adds the row of f_Rec with the base generator's profile.
    """
    name = recommender.name
    majority = majority_label(list(train_labels))
    rows = {MAJORITY: [majority] * len(samples), USER_MEAN: user_mean_labels(samples, thresholds)}
    rows[f"{name} 10H"] = predicted_labels(recommender.predict(empty_profile_cases(samples)))
    for history in raw_histories:
        cases = raw_history_cases(samples, int(history), item_text)
        rows[f"{name} 10H + raw {int(history)}H"] = predicted_labels(recommender.predict(cases))
    if profiles is not None:
        cases = [case_from_sample(s, profiles[str(s["user_id"])]) for s in samples.to_dict("records")]
        rows[f"{name} 10H + P (base generator)"] = predicted_labels(recommender.predict(cases))
    return rows
