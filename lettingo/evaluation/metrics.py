"""Classification metrics for the 3-way sentiment task: from confusion matrices and from probabilities.

Label metrics (accuracy, the F1s) are functions of the confusion matrix, and every such function
works on a batch of matrices of shape ``(..., C, C)``: the bootstrap computes thousands of resampled
confusion matrices at once and scores them in one call. Division by zero gives 0, as scikit-learn
does with ``zero_division=0``.

Probability metrics (mean probability of the true label, log-loss) are means of a per-case score of
the probability the method gave the true label, so a set of cases reduces to the score's sum and the
number of cases. With several targets per user the cases are pooled: every user x target case
weighs the same, as in the label metrics' pooled confusion matrix (with the same number of targets
per user this equals averaging within each user first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

ConfusionMetric = Callable[[np.ndarray], np.ndarray]
CaseScore = Callable[[np.ndarray], np.ndarray]
# How far a probability row may sum from 1 (float32 softmax outputs are well within it); a larger gap means
# the columns are not one distribution over the labels.
_SUM_TOLERANCE = 1e-3


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Return ``labels`` as a tuple, raising ValueError if it is empty or has duplicates."""
    labels = tuple(labels)
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels!r}")
    return labels


def encode_labels(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Map each value to its position in ``labels``; raise ValueError naming any unknown value."""
    index = {label: code for code, label in enumerate(check_labels(labels))}
    unknown = sorted({str(value) for value in values if value not in index})
    if unknown:
        raise ValueError(f"values {unknown} are not among the labels {tuple(labels)!r}")
    return np.fromiter((index[value] for value in values), dtype=np.int64, count=len(values))


def confusion_matrix(true_codes: np.ndarray, pred_codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Count matrix of shape ``(C, C)``: rows are true classes, columns predicted classes."""
    cells = np.asarray(true_codes) * n_classes + np.asarray(pred_codes)
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator`` with 0 wherever the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support, each of shape ``(..., C)``."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diagonal(confusion, axis1=-2, axis2=-1)
    support = confusion.sum(axis=-1)
    predicted = confusion.sum(axis=-2)
    return {
        "precision": _safe_divide(true_positives, predicted),
        "recall": _safe_divide(true_positives, support),
        # 2TP / (2TP + FP + FN): equals 2PR / (P + R), and is 0 exactly when TP is 0.
        "f1": _safe_divide(2 * true_positives, support + predicted),
        "support": support,
    }


def accuracy(confusion: np.ndarray) -> np.ndarray:
    """Fraction of correct predictions, for confusion matrices of shape ``(..., C, C)``."""
    confusion = np.asarray(confusion, dtype=np.float64)
    correct = np.trace(confusion, axis1=-2, axis2=-1)
    return _safe_divide(correct, confusion.sum(axis=(-2, -1)))


def macro_f1(confusion: np.ndarray) -> np.ndarray:
    """Unweighted mean of the per-class F1 over all labels (absent labels count as 0)."""
    return per_class_scores(confusion)["f1"].mean(axis=-1)


def weighted_f1(confusion: np.ndarray) -> np.ndarray:
    """Mean of the per-class F1 weighted by each class's support (number of true rows)."""
    scores = per_class_scores(confusion)
    weighted = (scores["f1"] * scores["support"]).sum(axis=-1)
    return _safe_divide(weighted, scores["support"].sum(axis=-1))


METRIC_FUNCTIONS: Mapping[str, ConfusionMetric] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "weighted_f1": weighted_f1,
}
"""Metric name -> vectorised function of confusion matrices ``(..., C, C)`` -> scores ``(...)``.
Build the matrices from integer-coded labels with :func:`confusion_matrix` (or, batched, as the
bootstrap does)."""


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class scores and the confusion matrix, as plain Python.

    ``per_class`` is keyed by label; ``confusion_matrix`` has rows = true and columns = predicted,
    both in ``labels`` order. The result is JSON-serialisable.
    """
    labels = check_labels(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    confusion = confusion_matrix(encode_labels(y_true, labels), encode_labels(y_pred, labels), len(labels))
    scores = per_class_scores(confusion)
    per_class = {
        label: {
            "precision": float(scores["precision"][code]),
            "recall": float(scores["recall"][code]),
            "f1": float(scores["f1"][code]),
            "support": int(scores["support"][code]),
        }
        for code, label in enumerate(labels)
    }
    return {
        "n": len(y_true),
        "labels": list(labels),
        **{name: float(metric(confusion)) for name, metric in METRIC_FUNCTIONS.items()},
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def check_probabilities(probabilities: Any, n_rows: int, labels: Sequence[str]) -> np.ndarray:
    """``probabilities`` as a float64 array ``(n_rows, C)``, columns in ``labels`` order.

    Raises ValueError when the shape is wrong, a value is not finite or outside [0, 1], or a row
    does not sum to 1 (within 1e-3).
    """
    n_classes = len(check_labels(labels))
    array = np.asarray(probabilities, dtype=np.float64)
    if array.shape != (n_rows, n_classes):
        raise ValueError(f"probabilities have shape {array.shape}; expected ({n_rows}, {n_classes}), one column "
                         f"per label in the order {tuple(labels)!r}")
    if not np.all(np.isfinite(array)) or array.min(initial=0.0) < 0 or array.max(initial=0.0) > 1:
        raise ValueError("probabilities must be finite and within [0, 1]")
    sums = array.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    if off.size:
        raise ValueError(f"{off.size} probability rows do not sum to 1 (row {int(off[0])} sums to {sums[off[0]]:.6f})")
    return array


def true_label_probabilities(y_true: Sequence[str], probabilities: Any, labels: Sequence[str]) -> np.ndarray:
    """The probability each case gave its true label, shape ``(n,)`` (see :func:`check_probabilities`)."""
    array = check_probabilities(probabilities, len(y_true), labels)
    return array[np.arange(len(y_true)), encode_labels(y_true, labels)]


def _log_loss_scores(p_true: np.ndarray) -> np.ndarray:
    """Per-case natural-log loss ``-log p_true``, with p_true clipped to ``[eps, 1 - eps]`` (float64 eps)."""
    # scikit-learn's log_loss clips every probability to [eps, 1 - eps] with its dtype's eps and takes the
    # true label's log, without renormalising the row: the same numbers for float64 input.
    eps = np.finfo(np.float64).eps
    return -np.log(np.clip(p_true, eps, 1 - eps))


PROBABILITY_METRICS: Mapping[str, CaseScore] = {
    "p_true": np.asarray,  # the score is the probability itself
    "log_loss": _log_loss_scores,
}
"""Metric name -> per-case score of the true label's probability ``(...)`` -> ``(...)``; the metric is the
score's mean over cases. Higher is better for ``p_true``, lower for ``log_loss``."""


def _mean_score(name: str, y_true: Sequence[str], probabilities: Any, labels: Sequence[str]) -> float:
    """Mean of probability metric ``name``'s per-case score over every case."""
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    return float(PROBABILITY_METRICS[name](true_label_probabilities(y_true, probabilities, labels)).mean())


def mean_p_true(y_true: Sequence[str], probabilities: Any, labels: Sequence[str]) -> float:
    """Mean over cases of the probability given to the true label; ``probabilities`` is ``(n, C)`` in ``labels`` order.

    Several targets per user are pooled (every case weighs the same; see the module docstring).
    """
    return _mean_score("p_true", y_true, probabilities, labels)


def log_loss(y_true: Sequence[str], probabilities: Any, labels: Sequence[str]) -> float:
    """Mean natural-log loss ``-log p(true label)`` over cases, as scikit-learn's ``log_loss`` computes it.

    Probabilities are clipped to ``[eps, 1 - eps]`` (float64 machine epsilon), so a zero probability
    costs about 36 nats, not infinity. Cases are pooled like :func:`mean_p_true`.
    """
    return _mean_score("log_loss", y_true, probabilities, labels)
