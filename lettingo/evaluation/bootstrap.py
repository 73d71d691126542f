"""Bootstrap confidence intervals over users, single and paired.

The resampling unit is the user: with ``groups`` (one id per row) whole users are drawn with
replacement, keeping all of a user's rows together (cluster bootstrap); without it each row is a
unit. Each unit's rows are first reduced to a confusion-count vector, so one resample is a
multiplicity vector over units and its confusion matrix is a matrix product. All resamples are
scored at once; intervals use the percentile method.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lettingo.evaluation.metrics import METRIC_FUNCTIONS, check_labels, encode_labels

DEFAULT_METRICS = ("accuracy", "macro_f1", "weighted_f1")
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


def _unit_confusions(
    true_codes: np.ndarray, pred_codes: np.ndarray, units: np.ndarray, n_units: int, n_classes: int
) -> np.ndarray:
    """Flattened confusion counts of each unit, shape ``(G, C*C)``."""
    cells = n_classes * n_classes
    flat = units * cells + true_codes * n_classes + pred_codes
    return np.bincount(flat, minlength=n_units * cells).reshape(n_units, cells).astype(np.float64)


def _multiplicities(n_units: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of resamples as ``(b, G)`` counts of how often each unit was drawn."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n_units)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_units, size=(size, n_units))
        draws += np.arange(size)[:, None] * n_units
        yield np.bincount(draws.ravel(), minlength=size * n_units).reshape(size, n_units)


def _resampled_confusions(
    unit_confusions: Sequence[np.ndarray], n_resamples: int, seed: int, n_classes: int
) -> list[np.ndarray]:
    """For each ``(G, C*C)`` input, ``(B, C, C)`` confusions over the SAME resampled units."""
    n_units = unit_confusions[0].shape[0]
    parts: list[list[np.ndarray]] = [[] for _ in unit_confusions]
    for weights in _multiplicities(n_units, n_resamples, seed):
        weights = weights.astype(np.float64)
        for collected, units in zip(parts, unit_confusions, strict=True):
            collected.append(weights @ units)
    return [np.concatenate(p).reshape(n_resamples, n_classes, n_classes) for p in parts]


@dataclass(frozen=True)
class _Scores:
    """Full-data scores, bootstrap distributions and unit count for each scored prediction list."""

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
) -> _Scores:
    """Score every prediction list on the full data and on the same resampled units."""
    unknown = [name for name in metrics if name not in METRIC_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRIC_FUNCTIONS)}")
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
    unit_confusions = [
        _unit_confusions(true_codes, encode_labels(y_pred, labels), units, n_units, n_classes) for y_pred in predictions
    ]
    resampled = _resampled_confusions(unit_confusions, n_resamples, seed, n_classes)
    points = [
        {name: float(METRIC_FUNCTIONS[name](u.sum(axis=0).reshape(n_classes, n_classes))) for name in metrics}
        for u in unit_confusions
    ]
    samples = [{name: METRIC_FUNCTIONS[name](c) for name in metrics} for c in resampled]
    return _Scores(points, samples, n_units)


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
) -> dict[str, np.ndarray]:
    """Bootstrap distribution of each metric: name -> array of ``n_resamples`` scores."""
    return _bootstrap(y_true, [y_pred], labels, metrics, n_resamples, seed, groups).samples[0]


def summarize(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Interval]:
    """Point estimate and percentile bootstrap interval of each metric, from one set of resamples.

    ``groups`` (e.g. user ids, one per row) resamples whole groups instead of rows.
    """
    scores = _bootstrap(y_true, [y_pred], labels, metrics, n_resamples, seed, groups)
    return {
        name: Interval(
            scores.points[0][name],
            *_percentiles(scores.samples[0][name], confidence),
            scores.n_units,
        )
        for name in metrics
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
) -> Interval:
    """Point estimate and percentile bootstrap interval of one metric (see :func:`summarize`)."""
    return summarize(y_true, y_pred, labels, (metric,), n_resamples, confidence, seed, groups)[metric]


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
) -> PairedDifference:
    """metric(a) - metric(b), with both methods scored on the same resampled units.

    The two-sided p-value is ``2 * min(P(d <= 0), P(d >= 0))`` over the resampled differences d,
    each share with add-one smoothing so it is never exactly 0, capped at 1.
    """
    scores = _bootstrap(y_true, [pred_a, pred_b], labels, (metric,), n_resamples, seed, groups)
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
) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, dict[str, PairedDifference]]]]:
    """Every method's intervals, and each other method's paired difference against each reference.

    Returns ``(intervals, paired)``: method -> metric -> Interval, and reference -> method ->
    metric -> PairedDifference (method minus reference). Every method is scored on ONE set of
    resampled units, so the numbers equal :func:`summarize` and :func:`paired_bootstrap` with the
    same seed, at the cost of one bootstrap. References not among ``predictions`` raise ValueError.
    """
    if not predictions:
        raise ValueError("no methods to compare")
    missing = [r for r in references if r not in predictions]
    if missing:
        raise ValueError(f"references {missing} are not among the methods {list(predictions)}")
    methods = list(predictions)
    scores = _bootstrap(y_true, [predictions[m] for m in methods], labels, metrics, n_resamples, seed, groups)
    points = dict(zip(methods, scores.points, strict=True))
    samples = dict(zip(methods, scores.samples, strict=True))
    intervals = {
        m: {name: Interval(points[m][name], *_percentiles(samples[m][name], confidence), scores.n_units)
            for name in metrics}
        for m in methods
    }
    paired = {
        ref: {
            m: {name: _difference(points[m][name], points[ref][name], samples[m][name], samples[ref][name],
                                  confidence, scores.n_units) for name in metrics}
            for m in methods if m != ref
        }
        for ref in dict.fromkeys(references)
    }
    return intervals, paired
