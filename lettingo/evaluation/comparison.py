"""One comparison of methods on the same users: predictions, intervals, paired differences.

Every scoring stage builds a :class:`Comparison` with :meth:`Comparison.compute` and writes it with
:meth:`Comparison.write` (``results.json``-style file, markdown, plot); every report reads it back
with :func:`read_comparison`. A case is one user x target: one per user, or several per user when
``targets`` names each user's targets. The resampling unit is the user (all of a user's cases
together); all intervals and paired differences come from one set of resampled users. Label metrics
(accuracy, F1s) are scored for every method, probability metrics (mean p_true, log-loss) for the
methods given probabilities, and left out for the others.

The JSON shape (``schema_version`` 2)::

    {"schema_version": 2, "kind": "comparison",
     "users": [...], "targets": [...] or null, "labels": [...], "truth": [...],  # one entry per case
     "predictions": {method: [...]},
     "probabilities": {method: [[p per label, in "labels" order], ...]},   # only methods that have them
     "methods": {method: {metric: {value, low, high, n}}},                   # n = users
     "paired": {reference: {method: {metric: {value, low, high, p_value, n}}}},   # method minus reference
     "details": {method: classification_metrics(...)}, "meta": {...}}

Version 1 (still read) had no ``targets`` or ``probabilities``: one case per user, label metrics only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lettingo.artifacts import atomic_path, write_json_atomic
from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, PairedDifference, compare_methods, paired_bootstrap
from lettingo.evaluation.methods import method_key
from lettingo.evaluation.metrics import check_probabilities, classification_metrics
from lettingo.evaluation.plots import plot_intervals
from lettingo.evaluation.tables import flat_columns, paired_heading, paired_table, results_table, to_markdown

SCHEMA_VERSION = 2
#: Every schema_version :meth:`Comparison.from_json` reads (1: one case per user, no probabilities).
READABLE_VERSIONS = (1, 2)
#: File stem of a comparison inside an artifact folder (`<artifact>/comparison.json`, `.md`, `.png`).
FILE_STEM = "comparison"
KIND = "comparison"
#: The sentiment labels, in confusion-matrix order. Equal to ``lettingo.data.schema.LABELS`` (a test
#: checks); repeated here because this module may not import the data package.
LABELS = ("like", "neutral", "dislike")


def _check_cases(
    users: Sequence[str],
    targets: Sequence[str] | None,
    truth: Sequence[str],
    predictions: Mapping[str, Sequence[str]],
    probabilities: Mapping[str, Sequence[Any]],
) -> None:
    """Raise ValueError unless cases are distinct (users, or user x target pairs) and each list has one per case."""
    if targets is None:
        if len(set(users)) != len(users):
            raise ValueError(f"users must be distinct: {len(users) - len(set(users))} repeated (several targets per "
                             "user need `targets`)")
    else:
        if len(targets) != len(users):
            raise ValueError(f"{len(targets)} targets for {len(users)} cases")
        cases = set(zip(users, targets, strict=True))
        if len(cases) != len(users):
            raise ValueError(f"user x target cases must be distinct: {len(users) - len(cases)} repeated")
    if len(truth) != len(users):
        raise ValueError(f"{len(truth)} true labels for {len(users)} cases")
    for part, lists in (("predictions", predictions), ("probability rows", probabilities)):
        for method, values in lists.items():
            if len(values) != len(users):
                raise ValueError(f"method {method!r} has {len(values)} {part} for {len(users)} cases")
    unknown = sorted(set(probabilities) - set(predictions))
    if unknown:
        raise ValueError(f"probabilities name methods {unknown} that have no predictions")


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
    """Methods scored on the same users: per-case predictions, bootstrap intervals, paired differences.

    ``users``, ``targets`` (None: one case per user), ``truth`` and each method's ``predictions`` and
    ``probabilities`` (method -> one row per case, columns in ``labels`` order; only methods that have
    them) are per case. ``intervals``: method -> metric -> Interval (bootstrap over users).
    ``paired``: reference -> method -> metric -> PairedDifference of method minus reference.
    ``details``: method -> ``classification_metrics`` over all cases (confusion matrix, per-class
    scores). ``meta``: free JSON info (split, recommender, n_resamples, confidence, seed, ...).
    """

    users: list[str]
    labels: list[str]
    truth: list[str]
    predictions: dict[str, list[str]]
    intervals: dict[str, dict[str, Interval]]
    paired: dict[str, dict[str, dict[str, PairedDifference]]]
    details: dict[str, dict]
    meta: dict[str, Any] = field(default_factory=dict)
    probabilities: dict[str, list[list[float]]] = field(default_factory=dict)
    targets: list[str] | None = None

    def __post_init__(self) -> None:
        """Check that every part describes the same cases and methods."""
        _check_cases(self.users, self.targets, self.truth, self.predictions, self.probabilities)
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
        probabilities: Mapping[str, Any] | None = None,
        targets: Sequence[Any] | None = None,
    ) -> Comparison:
        """Score every method on the same users: intervals, paired differences vs each reference, details.

        ``users`` has one entry per case: each user once, or, with ``targets`` (which of the user's
        targets each case is, e.g. its index), once per target; the bootstrap resamples users with all
        their cases. ``predictions`` is method -> predicted label per case; ``probabilities`` is method ->
        ``(cases, labels)`` probabilities (columns in ``labels`` order), for the methods that have them:
        they add mean p_true and log-loss. References absent from ``predictions`` are skipped.
        ``meta`` is stored as given, plus ``n_users``, ``n_cases``, ``n_resamples``, ``confidence`` and
        ``seed``.
        """
        users = [str(u) for u in users]
        cases = None if targets is None else [str(t) for t in targets]
        truth = [str(t) for t in truth]
        predicted = {str(m): [str(p) for p in values] for m, values in predictions.items()}
        given = {str(m): values for m, values in (probabilities or {}).items()}
        _check_cases(users, cases, truth, predicted, given)
        _check_keys(list(predicted))
        rows = {m: check_probabilities(values, len(users), labels) for m, values in given.items()}
        present = [r for r in references if r in predicted]
        intervals, paired = compare_methods(truth, predicted, present, labels, metrics, n_resamples, confidence, seed,
                                            groups=users, probabilities=rows)
        details = {m: classification_metrics(truth, values, labels) for m, values in predicted.items()}
        info = {**dict(meta or {}), "n_users": len(set(users)), "n_cases": len(users), "n_resamples": int(n_resamples),
                "confidence": float(confidence), "seed": int(seed)}
        return cls(users, list(labels), truth, predicted, intervals, paired, details, info,
                   {m: values.tolist() for m, values in rows.items()}, cases)

    @property
    def methods(self) -> list[str]:
        """Method labels in the order they were given."""
        return list(self.predictions)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names scored for any method, in order (probability metrics only where a method has probabilities)."""
        return tuple(dict.fromkeys(name for row in self.intervals.values() for name in row))

    def difference(self, method: str, reference: str, metric: str = "accuracy") -> PairedDifference:
        """``metric(method) - metric(reference)`` bootstrapped from the stored cases.

        Uses the comparison's resamples, confidence and seed, so it equals a stored difference of the
        same pair. A probability metric needs both methods' probabilities (else ValueError).
        """
        unknown = [m for m in (method, reference) if m not in self.predictions]
        if unknown:
            raise ValueError(f"methods {unknown} are not in this comparison; it has {self.methods}")
        meta = self.meta
        return paired_bootstrap(self.truth, self.predictions[method], self.predictions[reference], self.labels, metric,
                                n_resamples=int(meta.get("n_resamples", 1000)),
                                confidence=float(meta.get("confidence", 0.95)), seed=int(meta.get("seed", 0)),
                                groups=self.users, probabilities_a=self.probabilities.get(method),
                                probabilities_b=self.probabilities.get(reference))

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
        """One line: how many users (and cases), which intervals, which units."""
        n_users = len(set(self.users))
        line = f"{n_users} users" + ("" if n_users == len(self.users) else f" x targets ({len(self.users)} cases)")
        if "confidence" in self.meta and "n_resamples" in self.meta:
            line += (f", {_percent(self.meta['confidence'])} percentile bootstrap CIs over users "
                     f"({self.meta['n_resamples']} resamples)")
        return line + ("; values in %, log_loss in nats." if "log_loss" in self.metrics else "; values in %.")

    def markdown(self, title: str) -> str:
        """Markdown: the intervals table, then one paired-differences table per reference."""
        parts = [f"## {title}\n\n{self._caption()}\n\n" + to_markdown(self.table())]
        for reference, rows in self.paired.items():
            if rows:
                parts.append(f"### {paired_heading(reference, self.metrics)}\n\n"
                             + to_markdown(self.paired_table(reference)))
        return "\n".join(parts)

    def tracker_metrics(self, prefix: str, key_of: Callable[[str], str | None] = method_key) -> dict[str, float]:
        """Flat metrics for a tracker, every key of ``[a-z0-9_/]`` only.

        ``<prefix>/<method>/<metric>`` (+ ``_low``, ``_high``) per interval, and
        ``<prefix>/vs_<reference>/<method>/<metric>`` (+ ``_low``, ``_high``, ``_p_value``) per
        paired difference; ``<metric>`` is ``accuracy``, ``macro_f1``, ``weighted_f1``, and, for methods
        with probabilities, ``p_true`` and ``log_loss``. ``key_of`` names a method in keys (default: the
        slug of its label; a :meth:`MetricRoles.key` keeps swept values out); a method it maps to None is
        left out. Each part of ``prefix`` is slugged the same way as method labels.
        """
        prefix = _clean_prefix(prefix)
        found: dict[str, float] = {}
        for method, row in self.intervals.items():
            if (name := key_of(method)) is None:
                continue
            for metric, interval in row.items():
                key = f"{prefix}/{name}/{method_key(metric)}"
                found |= {key: interval.value, f"{key}_low": interval.low, f"{key}_high": interval.high}
        for reference, rows in self.paired.items():
            for method, row in rows.items():
                if (ref_name := key_of(reference)) is None or (name := key_of(method)) is None:
                    continue
                for metric, diff in row.items():
                    key = f"{prefix}/vs_{ref_name}/{name}/{method_key(metric)}"
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
            "targets": None if self.targets is None else list(self.targets),
            "labels": list(self.labels),
            "truth": list(self.truth),
            "predictions": {m: list(p) for m, p in self.predictions.items()},
            "probabilities": {m: [list(row) for row in rows] for m, rows in self.probabilities.items()},
            "methods": {m: {k: v.to_dict() for k, v in row.items()} for m, row in self.intervals.items()},
            "paired": {ref: {m: {k: v.to_dict() for k, v in row.items()} for m, row in rows.items()}
                       for ref, rows in self.paired.items()},
            "details": self.details,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Comparison:
        """Rebuild a Comparison from :meth:`to_json`'s dict, of any schema_version in ``READABLE_VERSIONS``.

        Another schema_version or kind raises ValueError. Version 1 reads as one case per user with no
        probabilities.
        """
        version = obj.get("schema_version") if isinstance(obj, Mapping) else None
        # `in` would also accept True for 1 and 2.0 for 2: the version must be the exact integer.
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ValueError(f"not a comparison of schema_version {' or '.join(map(str, READABLE_VERSIONS))} (found "
                             f"schema_version {version!r}); it was written by another lettingo version: rerun the "
                             "stage that wrote it")
        if obj.get("kind") != KIND:
            raise ValueError(f"expected kind {KIND!r}, found {obj.get('kind')!r}")
        required = ("users", "labels", "truth", "predictions", "methods", "paired", "details")
        missing = [k for k in required + (("targets", "probabilities") if version >= 2 else ()) if k not in obj]
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
            probabilities={m: [list(row) for row in rows] for m, rows in obj.get("probabilities", {}).items()},
            targets=None if obj.get("targets") is None else list(obj["targets"]),
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
