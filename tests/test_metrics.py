"""Metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)
from sklearn.metrics import (
    confusion_matrix as sk_confusion_matrix,
)
from sklearn.metrics import (
    log_loss as sk_log_loss,
)

from lettingo.evaluation.metrics import (
    METRIC_FUNCTIONS,
    classification_metrics,
    confusion_matrix,
    encode_labels,
    log_loss,
    mean_p_true,
)

LABELS = ("like", "neutral", "dislike")


def assert_matches_sklearn(y_true: list[str], y_pred: list[str], labels=LABELS) -> None:
    """Every number classification_metrics reports equals scikit-learn's."""
    result = classification_metrics(y_true, y_pred, labels)
    labels = list(labels)
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for average in ("macro", "weighted"):
        expected = f1_score(y_true, y_pred, labels=labels, average=average, zero_division=0)
        assert result[f"{average}_f1"] == pytest.approx(expected)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        scores = result["per_class"][label]
        assert scores["precision"] == pytest.approx(precision[i])
        assert scores["recall"] == pytest.approx(recall[i])
        assert scores["f1"] == pytest.approx(f1[i])
        assert scores["support"] == support[i]
    assert result["confusion_matrix"] == sk_confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert result["n"] == len(y_true)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [1, 7, 200])
def test_random_inputs_match_sklearn(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    skew = rng.dirichlet(np.ones(3))
    y_true = list(rng.choice(LABELS, size=n, p=skew))
    y_pred = list(rng.choice(LABELS, size=n))
    assert_matches_sklearn(y_true, y_pred)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [
        # "dislike" is never predicted.
        (["like", "neutral", "dislike", "dislike"], ["like", "like", "neutral", "like"]),
        # "neutral" never occurs in y_true.
        (["like", "like", "dislike", "dislike"], ["neutral", "like", "neutral", "dislike"]),
        # "neutral" occurs in neither.
        (["like", "dislike", "dislike"], ["like", "like", "dislike"]),
        # Everything right; everything wrong.
        (["like", "neutral", "dislike"], ["like", "neutral", "dislike"]),
        (["like", "like", "like"], ["dislike", "dislike", "neutral"]),
    ],
)
def test_edge_cases_match_sklearn(y_true: list[str], y_pred: list[str]) -> None:
    assert_matches_sklearn(y_true, y_pred)


def test_hand_computed_example() -> None:
    y_true = ["like", "like", "like", "neutral", "dislike", "dislike"]
    y_pred = ["like", "like", "neutral", "neutral", "like", "dislike"]
    result = classification_metrics(y_true, y_pred, LABELS)
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    # like: P 2/3, R 2/3, F1 2/3; neutral: P 1/2, R 1, F1 2/3; dislike: P 1, R 1/2, F1 2/3.
    assert result["per_class"]["neutral"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert result["per_class"]["dislike"]["precision"] == 1.0
    assert result["macro_f1"] == pytest.approx(2 / 3)
    assert result["weighted_f1"] == pytest.approx(2 / 3)


def test_zero_division_gives_zero() -> None:
    result = classification_metrics(["like", "like"], ["dislike", "dislike"], LABELS)
    assert result["per_class"]["neutral"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    assert result["macro_f1"] == 0.0
    assert result["weighted_f1"] == 0.0


def test_label_order_sets_matrix_order() -> None:
    y_true, y_pred = ["like", "dislike"], ["dislike", "dislike"]
    forward = classification_metrics(y_true, y_pred, LABELS)["confusion_matrix"]
    backward = classification_metrics(y_true, y_pred, LABELS[::-1])["confusion_matrix"]
    assert forward == [[0, 0, 1], [0, 0, 0], [0, 0, 1]]
    assert backward == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_result_is_json_serialisable() -> None:
    result = classification_metrics(["like", "neutral"], ["like", "like"], LABELS)
    assert json.loads(json.dumps(result)) == result


def test_metric_functions_are_batched() -> None:
    rng = np.random.default_rng(3)
    stack = np.stack([confusion_matrix(rng.integers(0, 3, 50), rng.integers(0, 3, 50), 3) for _ in range(5)])
    for name, metric in METRIC_FUNCTIONS.items():
        batched = metric(stack)
        assert batched.shape == (5,)
        for i, matrix in enumerate(stack):
            assert batched[i] == pytest.approx(float(metric(matrix))), name


def test_metric_functions_match_classification_metrics() -> None:
    rng = np.random.default_rng(4)
    y_true, y_pred = list(rng.choice(LABELS, 60)), list(rng.choice(LABELS, 60))
    matrix = confusion_matrix(encode_labels(y_true, LABELS), encode_labels(y_pred, LABELS), 3)
    result = classification_metrics(y_true, y_pred, LABELS)
    for name, metric in METRIC_FUNCTIONS.items():
        assert float(metric(matrix)) == result[name]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "message"),
    [
        (["like"], ["love"], LABELS, "love"),
        (["like", "like"], ["like"], LABELS, "rows"),
        ([], [], LABELS, "zero rows"),
        (["like"], ["like"], ("like", "like"), "distinct"),
        (["like"], ["like"], (), "empty"),
    ],
)
def test_bad_input_raises(y_true, y_pred, labels, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, labels)


def sklearn_log_loss(y_true: list[str], probabilities: np.ndarray) -> float:
    """scikit-learn's log_loss, whose probability columns are in sorted label order (ours are in LABELS order)."""
    order = sorted(LABELS)
    return sk_log_loss(y_true, probabilities[:, [LABELS.index(label) for label in order]], labels=order)


def test_probability_metrics_hand_computed_and_sklearn() -> None:
    y_true = ["like", "neutral", "dislike", "like"]
    probabilities = np.array([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.25, 0.25, 0.5]])
    assert mean_p_true(y_true, probabilities, LABELS) == pytest.approx((0.5 + 0.6 + 0.8 + 0.25) / 4)
    expected = -(np.log(0.5) + np.log(0.6) + np.log(0.8) + np.log(0.25)) / 4
    assert log_loss(y_true, probabilities, LABELS) == pytest.approx(expected)
    assert log_loss(y_true, probabilities, LABELS) == pytest.approx(sklearn_log_loss(y_true, probabilities))


@pytest.mark.parametrize("seed", range(5))
def test_log_loss_matches_sklearn_with_certain_and_zero_probabilities(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = list(rng.choice(LABELS, size=50))
    probabilities = rng.dirichlet(np.full(3, 0.3), size=50)
    # One case certain and right, one certain and wrong: both clipped to [eps, 1 - eps], as scikit-learn does.
    probabilities[0] = np.eye(3)[LABELS.index(y_true[0])]
    probabilities[1] = np.eye(3)[(LABELS.index(y_true[1]) + 1) % 3]
    assert log_loss(y_true, probabilities, LABELS) == pytest.approx(sklearn_log_loss(y_true, probabilities), rel=1e-12)
    assert np.isfinite(log_loss(y_true, probabilities, LABELS))


@pytest.mark.parametrize(
    ("probabilities", "message"),
    [
        ([[0.5, 0.5]], "shape"),
        ([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], "shape"),
        ([[1.2, -0.2, 0.0]], "within"),
        ([[np.nan, 0.5, 0.5]], "finite"),
        ([[0.5, 0.3, 0.3]], "sum to 1"),
    ],
)
def test_bad_probabilities_raise(probabilities, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_p_true(["like"], probabilities, LABELS)
