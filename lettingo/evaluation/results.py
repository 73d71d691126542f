"""The `results.json` shape every scoring stage writes and every report reads.

```
{"labels": [...], "n_users": int, "reference_method": str | null,
 "methods": {method: {metric: {value, low, high, n}}},
 "confusion_matrices": {method: [[...]]}, "per_class": {method: {...}},
 "versus_reference": {method: {metric: {value, low, high, p_value, n}}}}   # method minus reference
```
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, paired_bootstrap, summarize
from lettingo.evaluation.metrics import classification_metrics


def method_results(
    y_true: Sequence[str],
    predictions: Mapping[str, Sequence[str]],
    labels: Sequence[str],
    reference_method: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Any]:
    """Every method's metrics with bootstrap intervals, and paired differences against a reference.

    All methods are scored on the same rows (users), so the paired bootstrap of
    `method - reference` resamples the same users for both.
    """
    if reference_method is not None and reference_method not in predictions:
        raise ValueError(f"reference method {reference_method!r} is not among {sorted(predictions)}")
    methods, confusions, per_class = {}, {}, {}
    for method, y_pred in predictions.items():
        if len(y_pred) != len(y_true):
            raise ValueError(f"method {method!r} has {len(y_pred)} predictions for {len(y_true)} cases")
        full = classification_metrics(y_true, y_pred, labels)
        found = summarize(y_true, y_pred, labels, metrics, n_resamples, seed=seed, groups=groups)
        methods[method] = {name: interval.to_dict() for name, interval in found.items()}
        confusions[method], per_class[method] = full["confusion_matrix"], full["per_class"]
    versus = {}
    if reference_method is not None:
        for method, y_pred in predictions.items():
            if method == reference_method:
                continue
            versus[method] = {
                name: paired_bootstrap(y_true, y_pred, predictions[reference_method], labels, name,
                                       n_resamples, seed=seed, groups=groups).to_dict()
                for name in metrics
            }
    return {"labels": list(labels), "n_users": len(set(groups)) if groups is not None else len(y_true),
            "reference_method": reference_method, "methods": methods, "confusion_matrices": confusions,
            "per_class": per_class, "versus_reference": versus}


def intervals(results: Mapping[str, Any]) -> dict[str, dict[str, Interval]]:
    """method -> metric -> Interval, from a results dict."""
    return {
        method: {name: Interval(**values) for name, values in entry.items()}
        for method, entry in results["methods"].items()
    }


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json file."""
    return json.loads(Path(path).read_text())
