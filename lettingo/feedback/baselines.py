"""The baselines table: f_Rec with and without profile inputs, its floor (shuffled profiles) and ceiling
(oracle facts), against majority class and user mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from lettingo.data.schema import LabelThresholds
from lettingo.evaluation.methods import MAJORITY, ORACLE_FACTS, SHUFFLED, SHUFFLED_ORACLE, USER_MEAN, no_profile_label
from lettingo.feedback.sensitivity import shuffled_texts
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
    recent: int,
    profiles: Mapping[str, str] | None = None,
    oracle: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Method name -> predicted label per sample (in ``samples`` order).

    ``train_labels`` (targets of the training users) give the majority class; ``recent`` is K, which
    names the no-profile row. ``profiles`` (one text per user) adds f_Rec with the base generator's
    profile and its floor, the same profiles shuffled among users; ``oracle`` (the user facts of the
    older history as the profile) adds the ceiling a faithful profile could reach, and its floor.
    """
    records = samples.to_dict("records")

    def with_texts(texts: Mapping[str, str]) -> list[str]:
        cases = [case_from_sample(s, texts[str(s["user_id"])]) for s in records]
        return predicted_labels(recommender.predict(cases))

    rows = {MAJORITY: [majority_label(list(train_labels))] * len(samples),
            USER_MEAN: user_mean_labels(samples, thresholds),
            no_profile_label(recent): predicted_labels(recommender.predict(empty_profile_cases(samples)))}
    for history in raw_histories:
        cases = raw_history_cases(samples, int(history), item_text)
        rows[f"{recent}H + raw {int(history)}H"] = predicted_labels(recommender.predict(cases))
    if profiles is not None:
        rows[f"{recent}H + P (base generator)"] = with_texts(profiles)
        rows[SHUFFLED] = with_texts(shuffled_texts(profiles, seed))
    if oracle is not None:
        rows[ORACLE_FACTS] = with_texts(oracle)
        rows[SHUFFLED_ORACLE] = with_texts(shuffled_texts(oracle, seed))
    return rows
