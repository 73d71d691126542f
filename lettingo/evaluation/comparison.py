"""One comparison of methods on the same users: predictions, intervals, paired differences.

Every scoring stage builds a :class:`Comparison` with :meth:`Comparison.compute` and writes it with
:meth:`Comparison.write` (``results.json``-style file, markdown, plot); every report reads it back
with :func:`read_comparison`. The resampling unit is the user (one prediction per user and
method); all intervals and paired differences come from one set of resampled users.

The JSON shape (``schema_version`` 1)::

    {"schema_version": 1, "kind": "comparison",
     "users": [...], "labels": [...], "truth": [...], "predictions": {method: [...]},
     "methods": {method: {metric: {value, low, high, n}}},
     "paired": {reference: {method: {metric: {value, low, high, p_value, n}}}},   # method minus reference
     "details": {method: classification_metrics(...)}, "meta": {...}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lettingo.artifacts import atomic_path, write_json_atomic
from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, PairedDifference, compare_methods
from lettingo.evaluation.methods import method_key
from lettingo.evaluation.metrics import classification_metrics
from lettingo.evaluation.plots import plot_intervals
from lettingo.evaluation.tables import flat_columns, paired_table, results_table, to_markdown

SCHEMA_VERSION = 1
#: File stem of a comparison inside an artifact folder (`<artifact>/comparison.json`, `.md`, `.png`).
FILE_STEM = "comparison"
KIND = "comparison"
#: The sentiment labels, in confusion-matrix order. Equal to ``lettingo.data.schema.LABELS`` (a test
#: checks); repeated here because this module may not import the data package.
LABELS = ("like", "neutral", "dislike")


def _check_lengths(users: Sequence[str], truth: Sequence[str], predictions: Mapping[str, Sequence[str]]) -> None:
    """Raise ValueError unless users are distinct and every list has one entry per user."""
    if len(set(users)) != len(users):
        raise ValueError(f"users must be distinct: {len(users) - len(set(users))} repeated")
    if len(truth) != len(users):
        raise ValueError(f"{len(truth)} true labels for {len(users)} users")
    for method, predicted in predictions.items():
        if len(predicted) != len(users):
            raise ValueError(f"method {method!r} has {len(predicted)} predictions for {len(users)} users")


def _check_keys(methods: Sequence[str]) -> None:
    """Raise ValueError when two method labels share a tracker key."""
    seen: dict[str, str] = {}
    for method in methods:
        key = method_key(method)
        if key in seen:
            raise ValueError(f"methods {seen[key]!r} and {method!r} share the tracker key {key!r}; rename one")
        seen[key] = method


def _clean_prefix(prefix: str) -> str:
    """Tracker prefix with every ``/``-separated part made a slug (``test/Profile-Test`` -> ``test/profile_test``)."""
    return "/".join(method_key(part) for part in prefix.split("/"))


def _percent(fraction: float) -> str:
    """``0.95`` -> ``95%``."""
    return f"{100 * fraction:g}%"


@dataclass(frozen=True)
class Comparison:
    """Methods scored on the same users: per-user predictions, bootstrap intervals, paired differences.

    ``intervals``: method -> metric -> Interval (bootstrap over users). ``paired``: reference ->
    method -> metric -> PairedDifference of method minus reference. ``details``: method ->
    ``classification_metrics`` (confusion matrix, per-class scores). ``meta``: free JSON info
    (split, recommender, n_resamples, confidence, seed, ...).
    """

    users: list[str]
    labels: list[str]
    truth: list[str]
    predictions: dict[str, list[str]]
    intervals: dict[str, dict[str, Interval]]
    paired: dict[str, dict[str, dict[str, PairedDifference]]]
    details: dict[str, dict]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check that every part describes the same users and methods."""
        _check_lengths(self.users, self.truth, self.predictions)
        if not self.predictions:
            raise ValueError("a comparison needs at least one method")
        for part in ("intervals", "details"):
            if set(getattr(self, part)) != set(self.predictions):
                raise ValueError(f"{part} has methods {sorted(getattr(self, part))}, "
                                 f"predictions have {sorted(self.predictions)}")
        for reference, rows in self.paired.items():
            unknown = sorted(set(rows) - set(self.predictions)) + ([reference] if reference not in self.predictions
                                                                    else [])
            if unknown:
                raise ValueError(f"paired differences vs {reference!r} name unknown methods {unknown}")
        _check_keys(list(self.predictions))

    @classmethod
    def compute(
        cls,
        users: Sequence[Any],
        truth: Sequence[str],
        predictions: Mapping[str, Sequence[str]],
        references: Sequence[str],
        labels: Sequence[str] = LABELS,
        metrics: Sequence[str] = DEFAULT_METRICS,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
        meta: Mapping[str, Any] | None = None,
    ) -> Comparison:
        """Score every method on the same users: intervals, paired differences vs each reference, details.

        ``predictions`` is method -> predicted label per user (in ``users`` order). References absent
        from ``predictions`` are skipped. ``meta`` is stored as given, plus ``n_users``,
        ``n_resamples``, ``confidence`` and ``seed``.
        """
        users = [str(u) for u in users]
        truth = [str(t) for t in truth]
        predicted = {str(m): [str(p) for p in values] for m, values in predictions.items()}
        _check_lengths(users, truth, predicted)
        _check_keys(list(predicted))
        present = [r for r in references if r in predicted]
        intervals, paired = compare_methods(truth, predicted, present, labels, metrics, n_resamples, confidence, seed)
        details = {m: classification_metrics(truth, values, labels) for m, values in predicted.items()}
        info = {**dict(meta or {}), "n_users": len(users), "n_resamples": int(n_resamples),
                "confidence": float(confidence), "seed": int(seed)}
        return cls(users, list(labels), truth, predicted, intervals, paired, details, info)

    @property
    def methods(self) -> list[str]:
        """Method labels in the order they were given."""
        return list(self.predictions)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names scored, in order."""
        return tuple(next(iter(self.intervals.values())))

    def _rows(self, methods: Sequence[str] | None) -> dict[str, dict[str, Interval]]:
        """method -> metric -> Interval for ``methods`` (all when None); unknown names raise ValueError."""
        chosen = self.methods if methods is None else list(methods)
        unknown = [m for m in chosen if m not in self.intervals]
        if unknown:
            raise ValueError(f"methods {unknown} are not in this comparison; it has {self.methods}")
        return {m: self.intervals[m] for m in chosen}

    def table(
        self,
        methods: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        reference: Mapping[str, Mapping[str, float]] | None = None,
    ) -> pd.DataFrame:
        """Intervals table (``evaluation.tables.results_table``) of ``methods`` (all when None).

        ``reference`` (method -> metric -> fraction) adds the paper's numbers beside ours.
        """
        return results_table(self._rows(methods), metrics or self.metrics, reference)

    def paired_table(self, reference: str, metrics: Sequence[str] | None = None) -> pd.DataFrame:
        """Paired differences of every other method minus ``reference`` (``evaluation.tables.paired_table``)."""
        if reference not in self.paired:
            raise ValueError(f"no paired differences against {reference!r}; references: {list(self.paired)}")
        return paired_table(self.paired[reference], reference, metrics or self.metrics)

    def flat_table(self, methods: Sequence[str] | None = None) -> pd.DataFrame:
        """The intervals table with one header row (``method``, ``<metric>_value``, ``_low``, ``_high``)."""
        return flat_columns(self.table(methods))

    def _caption(self) -> str:
        """One line: how many users, which intervals."""
        line = f"{len(self.users)} users"
        if "confidence" in self.meta and "n_resamples" in self.meta:
            line += (f", {_percent(self.meta['confidence'])} percentile bootstrap CIs over users "
                     f"({self.meta['n_resamples']} resamples)")
        return line + "; values in %."

    def markdown(self, title: str) -> str:
        """Markdown: the intervals table, then one paired-differences table per reference."""
        parts = [f"## {title}\n\n{self._caption()}\n\n" + to_markdown(self.table())]
        for reference, rows in self.paired.items():
            if rows:
                parts.append(f"### Paired differences vs {reference} (method minus {reference}, same users; "
                             f"negative favours {reference})\n\n" + to_markdown(self.paired_table(reference)))
        return "\n".join(parts)

    def tracker_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metrics for a tracker, every key of ``[a-z0-9_/]`` only.

        ``<prefix>/<method_key>/<metric>`` (+ ``_low``, ``_high``) per interval, and
        ``<prefix>/vs_<reference_key>/<method_key>/<metric>`` (+ ``_low``, ``_high``, ``_p_value``) per
        paired difference. Each part of ``prefix`` is slugged the same way as method labels.
        """
        prefix = _clean_prefix(prefix)
        found: dict[str, float] = {}
        for method, row in self.intervals.items():
            for metric, interval in row.items():
                key = f"{prefix}/{method_key(method)}/{method_key(metric)}"
                found |= {key: interval.value, f"{key}_low": interval.low, f"{key}_high": interval.high}
        for reference, rows in self.paired.items():
            for method, row in rows.items():
                for metric, diff in row.items():
                    key = f"{prefix}/vs_{method_key(reference)}/{method_key(method)}/{method_key(metric)}"
                    found |= {key: diff.value, f"{key}_low": diff.low, f"{key}_high": diff.high,
                              f"{key}_p_value": diff.p_value}
        return found

    def plot(self, path: str | Path, metric: str = "macro_f1", title: str = "") -> Path:
        """PNG of ``metric`` per method with its interval (written atomically); returns the path."""
        return plot_intervals(self.intervals, metric, path, title)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (see the module docstring for the shape)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "users": list(self.users),
            "labels": list(self.labels),
            "truth": list(self.truth),
            "predictions": {m: list(p) for m, p in self.predictions.items()},
            "methods": {m: {k: v.to_dict() for k, v in row.items()} for m, row in self.intervals.items()},
            "paired": {ref: {m: {k: v.to_dict() for k, v in row.items()} for m, row in rows.items()}
                       for ref, rows in self.paired.items()},
            "details": self.details,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Comparison:
        """Rebuild a Comparison from :meth:`to_json`'s dict; another schema_version or kind raises ValueError."""
        version = obj.get("schema_version") if isinstance(obj, Mapping) else None
        if version != SCHEMA_VERSION:
            raise ValueError(f"not a comparison of schema_version {SCHEMA_VERSION} (found schema_version "
                             f"{version!r}); it was written by another lettingo version: rerun the stage that wrote it")
        if obj.get("kind") != KIND:
            raise ValueError(f"expected kind {KIND!r}, found {obj.get('kind')!r}")
        missing = [k for k in ("users", "labels", "truth", "predictions", "methods", "paired", "details")
                   if k not in obj]
        if missing:
            raise ValueError(f"comparison JSON lacks the fields {missing}")
        return cls(
            users=list(obj["users"]),
            labels=list(obj["labels"]),
            truth=list(obj["truth"]),
            predictions={m: list(p) for m, p in obj["predictions"].items()},
            intervals={m: {k: Interval(**v) for k, v in row.items()} for m, row in obj["methods"].items()},
            paired={ref: {m: {k: PairedDifference(**v) for k, v in row.items()} for m, row in rows.items()}
                    for ref, rows in obj["paired"].items()},
            details=dict(obj["details"]),
            meta=dict(obj.get("meta") or {}),
        )

    def write(self, folder: str | Path, name: str, title: str, metric: str = "macro_f1") -> dict[str, Path]:
        """Write ``<name>.png`` (``metric``), ``<name>.md`` and, last, ``<name>.json`` into ``folder``, atomically.

        Returns ``{"plot", "markdown", "json"}`` -> path. The JSON comes last, so a reader that finds
        it finds the others too.
        """
        folder = Path(folder)
        paths = {"plot": folder / f"{name}.png", "markdown": folder / f"{name}.md", "json": folder / f"{name}.json"}
        self.plot(paths["plot"], metric, title)
        with atomic_path(paths["markdown"]) as tmp:
            tmp.write_text(self.markdown(title))
        write_json_atomic(paths["json"], self.to_json())
        return paths


def read_comparison(path: str | Path) -> Comparison:
    """Read a comparison JSON file (e.g. a run's ``results.json``); errors name the file."""
    path = Path(path)
    try:
        return Comparison.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
