"""The baselines table: f_Rec with and without profile inputs against majority class and user mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from lettingo.data.schema import LABELS, LabelThresholds
from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, PairedDifference, paired_bootstrap, summarize
from lettingo.recommender.base import Recommender
from lettingo.recommender.baselines import empty_profile_cases, majority_label, raw_history_cases, user_mean_labels
from lettingo.recommender.cases import case_from_sample, predicted_labels
from lettingo.recommender.text import ItemTextConfig

MAJORITY = "majority class"
USER_MEAN = "user mean rating"


@dataclass(frozen=True)
class BaselineResults:
    """Predictions of each method on the same users, their intervals and paired differences vs majority."""

    users: list[str]
    truth: list[str]
    predictions: dict[str, list[str]]
    intervals: dict[str, dict[str, Interval]]
    versus_majority: dict[str, dict[str, PairedDifference]]


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


def score_baselines(
    samples: pd.DataFrame,
    predictions: Mapping[str, list[str]],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> BaselineResults:
    """Bootstrap intervals of every method and paired differences against the majority class."""
    truth = [str(t["label"]) for t in samples["target"]]
    intervals = {
        method: summarize(truth, pred, LABELS, DEFAULT_METRICS, n_resamples, confidence, seed)
        for method, pred in predictions.items()
    }
    versus = {
        method: {
            metric: paired_bootstrap(truth, pred, predictions[MAJORITY], LABELS, metric, n_resamples, confidence, seed)
            for metric in DEFAULT_METRICS
        }
        for method, pred in predictions.items()
        if method != MAJORITY
    }
    return BaselineResults(samples["user_id"].astype(str).tolist(), truth, dict(predictions), intervals, versus)
