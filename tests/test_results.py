"""results.json: every method scored with intervals, paired differences on the same users."""

from __future__ import annotations

import json

import pytest
from sklearn.metrics import accuracy_score, f1_score

from lettingo.evaluation.results import intervals, method_results

LABELS = ("like", "neutral", "dislike")
Y_TRUE = ["like", "like", "neutral", "dislike", "like", "dislike", "neutral", "like"]
PRED = {
    "dpo": ["like", "like", "neutral", "dislike", "like", "like", "neutral", "like"],
    "base": ["like", "neutral", "like", "dislike", "like", "like", "like", "like"],
}


def test_method_results_values_and_pairs() -> None:
    results = json.loads(json.dumps(method_results(Y_TRUE, PRED, LABELS, reference_method="dpo", n_resamples=200)))
    for method, pred in PRED.items():
        metrics = results["methods"][method]
        assert metrics["accuracy"]["value"] == pytest.approx(accuracy_score(Y_TRUE, pred))
        assert metrics["macro_f1"]["value"] == pytest.approx(f1_score(Y_TRUE, pred, average="macro"))
        assert metrics["accuracy"]["low"] <= metrics["accuracy"]["value"] <= metrics["accuracy"]["high"]
    diff = results["versus_reference"]["base"]["accuracy"]
    assert diff["value"] == pytest.approx(accuracy_score(Y_TRUE, PRED["base"]) - accuracy_score(Y_TRUE, PRED["dpo"]))
    assert set(results["versus_reference"]) == {"base"} and results["n_users"] == 8
    assert results["confusion_matrices"]["dpo"][2] == [1, 0, 1]  # true dislike: one right, one called like
    assert intervals(results)["dpo"]["accuracy"].value == pytest.approx(7 / 8)


def test_unknown_reference_and_length_mismatch_are_refused() -> None:
    with pytest.raises(ValueError, match="reference method"):
        method_results(Y_TRUE, PRED, LABELS, reference_method="sft")
    with pytest.raises(ValueError, match="7 predictions for 8"):
        method_results(Y_TRUE, {"x": Y_TRUE[:7]}, LABELS)
