"""Bootstrap confidence intervals over users, single and paired.

The resampling unit is the user: with ``groups`` (one id per row) whole users are drawn with
replacement, keeping all of a user's rows (e.g. their several targets) together (cluster bootstrap);
without it each row is a unit. Each unit's rows are first reduced to a vector of sums (its confusion
counts, and, where the method gave probabilities, the sums of each probability metric's per-case
score), so one resample is a multiplicity vector over units and its sums are a matrix product. All
resamples are scored at once; intervals use the percentile method.

Label metrics (``LABEL_METRICS``) are scored for every method; probability metrics
(``lettingo.evaluation.metrics.PROBABILITY_METRICS``) only for methods given probabilities, and
left out for the others.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lettingo.evaluation.metrics import (
    METRIC_FUNCTIONS,
    PROBABILITY_METRICS,
    check_labels,
    encode_labels,
    true_label_probabilities,
)

LABEL_METRICS = ("accuracy", "macro_f1", "weighted_f1")
DEFAULT_METRICS = (*LABEL_METRICS, *PROBABILITY_METRICS)
# Upper bound on resamples x units held in memory at once; bounds peak memory for big inputs.
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A metric's point estimate with its bootstrap interval; ``n`` is the number of units."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for results.json."""
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """metric(a) - metric(b) on the same units, its interval and two-sided bootstrap p-value."""

    value: float
    low: float
    high: float
    p_value: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for results.json."""
        return asdict(self)


def _unit_codes(groups: Sequence[Hashable] | None, n_rows: int) -> tuple[np.ndarray, int]:
    """Resampling unit of each row (0..G-1, first-seen order) and the number of units G."""
    if groups is None:
        return np.arange(n_rows), n_rows
    if len(groups) != n_rows:
        raise ValueError(f"groups has {len(groups)} entries but there are {n_rows} rows")
    index: dict[Hashable, int] = {}
    codes = np.fromiter((index.setdefault(g, len(index)) for g in groups), np.int64, n_rows)
    return codes, len(index)


def _unit_sums(
    true_codes: np.ndarray,
    pred_codes: np.ndarray,
    p_true: np.ndarray | None,
    units: np.ndarray,
    n_units: int,
    n_classes: int,
) -> np.ndarray:
    """Each unit's sums, shape ``(G, C*C [+ P])``: flattened confusion counts, then (with ``p_true``) the
    sum of each probability metric's per-case score, in ``PROBABILITY_METRICS`` order."""
    cells = n_classes * n_classes
    flat = units * cells + true_codes * n_classes + pred_codes
    confusions = np.bincount(flat, minlength=n_units * cells).reshape(n_units, cells).astype(np.float64)
    if p_true is None:
        return confusions
    scores = [np.bincount(units, weights=score(p_true), minlength=n_units) for score in PROBABILITY_METRICS.values()]
    return np.column_stack([confusions, *scores])


def _multiplicities(n_units: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of resamples as ``(b, G)`` counts of how often each unit was drawn."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n_units)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_units, size=(size, n_units))
        draws += np.arange(size)[:, None] * n_units
        yield np.bincount(draws.ravel(), minlength=size * n_units).reshape(size, n_units)


def _resampled_sums(unit_sums: Sequence[np.ndarray], n_resamples: int, seed: int) -> list[np.ndarray]:
    """For each ``(G, S)`` input, its ``(B, S)`` sums over the SAME resampled units."""
    n_units = unit_sums[0].shape[0]
    parts: list[list[np.ndarray]] = [[] for _ in unit_sums]
    for weights in _multiplicities(n_units, n_resamples, seed):
        weights = weights.astype(np.float64)
        for collected, units in zip(parts, unit_sums, strict=True):
            collected.append(weights @ units)
    return [np.concatenate(p) for p in parts]


def _score(sums: np.ndarray, metric: str, n_classes: int) -> np.ndarray:
    """Metric from sums of shape ``(..., S)`` (see :func:`_unit_sums`) -> scores ``(...)``."""
    cells = n_classes * n_classes
    confusions = sums[..., :cells].reshape(*sums.shape[:-1], n_classes, n_classes)
    if metric in METRIC_FUNCTIONS:
        return METRIC_FUNCTIONS[metric](confusions)
    column = cells + list(PROBABILITY_METRICS).index(metric)
    return sums[..., column] / confusions.sum(axis=(-2, -1))


@dataclass(frozen=True)
class _Scores:
    """Full-data scores, bootstrap distributions and unit count for each scored prediction list.

    A list without probabilities has no probability metrics in its ``points`` and ``samples``.
    """

    points: list[dict[str, float]]
    samples: list[dict[str, np.ndarray]]
    n_units: int


def _bootstrap(
    y_true: Sequence[str],
    predictions: Sequence[Sequence[str]],
    labels: Sequence[str],
    metrics: Sequence[str],
    n_resamples: int,
    seed: int,
    groups: Sequence[Hashable] | None,
    probabilities: Sequence[Any | None],
) -> _Scores:
    """Score every prediction list (with its probabilities, or None) on the full data and on the same resamples."""
    unknown = [name for name in metrics if name not in DEFAULT_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(DEFAULT_METRICS)}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    labels = check_labels(labels)
    n_classes = len(labels)
    if len(y_true) == 0:
        raise ValueError("cannot bootstrap zero rows")
    for y_pred in predictions:
        if len(y_pred) != len(y_true):
            raise ValueError(f"y_true has {len(y_true)} rows but predictions have {len(y_pred)}")
    units, n_units = _unit_codes(groups, len(y_true))
    true_codes = encode_labels(y_true, labels)
    unit_sums = [
        _unit_sums(true_codes, encode_labels(y_pred, labels),
                   None if proba is None else true_label_probabilities(y_true, proba, labels), units, n_units,
                   n_classes)
        for y_pred, proba in zip(predictions, probabilities, strict=True)
    ]
    scored = [[name for name in metrics if name in METRIC_FUNCTIONS or proba is not None] for proba in probabilities]
    resampled = _resampled_sums(unit_sums, n_resamples, seed)
    points = [{name: float(_score(u.sum(axis=0), name, n_classes)) for name in names}
              for u, names in zip(unit_sums, scored, strict=True)]
    samples = [{name: _score(r, name, n_classes) for name in names} for r, names in zip(resampled, scored, strict=True)]
    return _Scores(points, samples, n_units)


def _require_probabilities(metric: str, *probabilities: Any | None) -> None:
    """Raise ValueError when ``metric`` is a probability metric and a method has no probabilities."""
    if metric in PROBABILITY_METRICS and any(p is None for p in probabilities):
        raise ValueError(f"metric {metric!r} needs each method's probabilities")


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Lower and upper percentile bounds of a bootstrap distribution."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def resampled_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    probabilities: Any | None = None,
) -> dict[str, np.ndarray]:
    """Bootstrap distribution of each metric: name -> array of ``n_resamples`` scores.

    ``probabilities`` (``(n, C)``, columns in ``labels`` order) adds the probability metrics.
    """
    return _bootstrap(y_true, [y_pred], labels, metrics, n_resamples, seed, groups, [probabilities]).samples[0]


def summarize(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    probabilities: Any | None = None,
) -> dict[str, Interval]:
    """Point estimate and percentile bootstrap interval of each metric, from one set of resamples.

    ``groups`` (e.g. user ids, one per row) resamples whole groups instead of rows. ``probabilities``
    (``(n, C)``, columns in ``labels`` order) adds the probability metrics; without it they are left out.
    """
    scores = _bootstrap(y_true, [y_pred], labels, metrics, n_resamples, seed, groups, [probabilities])
    return {
        name: Interval(value, *_percentiles(scores.samples[0][name], confidence), scores.n_units)
        for name, value in scores.points[0].items()
    }


def bootstrap_interval(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    metric: str = "accuracy",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    probabilities: Any | None = None,
) -> Interval:
    """Point estimate and percentile bootstrap interval of one metric (see :func:`summarize`).

    A probability metric without ``probabilities`` raises ValueError.
    """
    _require_probabilities(metric, probabilities)
    return summarize(y_true, y_pred, labels, (metric,), n_resamples, confidence, seed, groups, probabilities)[metric]


def _difference(
    point_a: float, point_b: float, samples_a: np.ndarray, samples_b: np.ndarray, confidence: float, n_units: int
) -> PairedDifference:
    """a - b from full-data scores and scores on the same resamples, with interval and p-value."""
    differences = samples_a - samples_b
    at_most_zero = np.count_nonzero(differences <= 0) + 1
    at_least_zero = np.count_nonzero(differences >= 0) + 1
    p_value = min(1.0, 2 * float(min(at_most_zero, at_least_zero)) / (len(differences) + 1))
    return PairedDifference(point_a - point_b, *_percentiles(differences, confidence), p_value, n_units)


def paired_bootstrap(
    y_true: Sequence[str],
    pred_a: Sequence[str],
    pred_b: Sequence[str],
    labels: Sequence[str],
    metric: str = "accuracy",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    probabilities_a: Any | None = None,
    probabilities_b: Any | None = None,
) -> PairedDifference:
    """metric(a) - metric(b), with both methods scored on the same resampled units.

    The two-sided p-value is ``2 * min(P(d <= 0), P(d >= 0))`` over the resampled differences d,
    each share with add-one smoothing so it is never exactly 0, capped at 1. A probability metric
    needs both methods' probabilities (``(n, C)``, columns in ``labels`` order), else ValueError.
    """
    _require_probabilities(metric, probabilities_a, probabilities_b)
    scores = _bootstrap(y_true, [pred_a, pred_b], labels, (metric,), n_resamples, seed, groups,
                        [probabilities_a, probabilities_b])
    (point_a, point_b), (samples_a, samples_b) = scores.points, scores.samples
    return _difference(point_a[metric], point_b[metric], samples_a[metric], samples_b[metric], confidence,
                       scores.n_units)


def compare_methods(
    y_true: Sequence[str],
    predictions: Mapping[str, Sequence[str]],
    references: Sequence[str],
    labels: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    probabilities: Mapping[str, Any] | None = None,
) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, dict[str, PairedDifference]]]]:
    """Every method's intervals, and each other method's paired difference against each reference.

    Returns ``(intervals, paired)``: method -> metric -> Interval, and reference -> method ->
    metric -> PairedDifference (method minus reference). Every method is scored on ONE set of
    resampled units, so the numbers equal :func:`summarize` and :func:`paired_bootstrap` with the
    same seed, at the cost of one bootstrap. ``probabilities`` (method -> ``(n, C)``, columns in
    ``labels`` order) gives the probability metrics of the methods it names; a paired difference
    has the metrics both methods have. References not among ``predictions`` raise ValueError.
    """
    if not predictions:
        raise ValueError("no methods to compare")
    probabilities = probabilities or {}
    for part, names in (("references", references), ("probabilities", probabilities)):
        missing = [name for name in names if name not in predictions]
        if missing:
            raise ValueError(f"{part} {missing} are not among the methods {list(predictions)}")
    methods = list(predictions)
    scores = _bootstrap(y_true, [predictions[m] for m in methods], labels, metrics, n_resamples, seed, groups,
                        [probabilities.get(m) for m in methods])
    points = dict(zip(methods, scores.points, strict=True))
    samples = dict(zip(methods, scores.samples, strict=True))
    intervals = {
        m: {name: Interval(value, *_percentiles(samples[m][name], confidence), scores.n_units)
            for name, value in points[m].items()}
        for m in methods
    }
    paired = {
        ref: {
            m: {name: _difference(points[m][name], points[ref][name], samples[m][name], samples[ref][name],
                                  confidence, scores.n_units) for name in points[m] if name in points[ref]}
            for m in methods if m != ref
        }
        for ref in dict.fromkeys(references)
    }
    return intervals, paired


def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """The mean of ``values`` (one per unit) on each of ``n_resamples`` resamples of the units."""
    sums = np.concatenate([weights.astype(np.float64) @ values
                           for weights in _multiplicities(len(values), n_resamples, seed)])
    return sums / len(values)


def _unit_values(values: Sequence[float]) -> np.ndarray:
    """``values`` as a float array of at least one finite entry per unit."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0 or not np.isfinite(array).all():
        raise ValueError("expected one finite value per unit, at least one unit")
    return array


def mean_interval(values: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> Interval:
    """The mean of per-unit ``values`` (e.g. each user's reward) with its percentile bootstrap interval."""
    array = _unit_values(values)
    return Interval(float(array.mean()), *_percentiles(_resampled_means(array, n_resamples, seed), confidence),
                    len(array))


def paired_mean_difference(values_a: Sequence[float], values_b: Sequence[float], n_resamples: int = 1000,
                           confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """mean(a) - mean(b) over the same units (a's and b's value of each user), resampled together.

    The p-value is :func:`paired_bootstrap`'s (two-sided, add-one smoothed).
    """
    a, b = _unit_values(values_a), _unit_values(values_b)
    if len(a) != len(b):
        raise ValueError(f"paired values need one per unit for both methods, got {len(a)} and {len(b)}")
    resampled = _resampled_means(a - b, n_resamples, seed)
    return _difference(float(a.mean()), float(b.mean()), resampled, np.zeros_like(resampled), confidence, len(a))
