"""Plots of metric intervals, written as PNG atomically (temp file, then rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lettingo.evaluation.bootstrap import Interval


def plot_intervals(
    rows: Mapping[str, Mapping[str, Interval]],
    metric: str,
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Horizontal point plot of ``metric`` per method (in %), CI as error bars; returns the path.

    Methods are drawn top to bottom in ``rows`` order. The PNG appears at ``path`` only once it
    is complete.
    """
    missing = [method for method, row in rows.items() if metric not in row]
    if not rows or missing:
        raise ValueError(f"no {metric!r} interval for methods {missing or '(no rows given)'}")
    methods = list(rows)
    intervals = [rows[m][metric] for m in methods]
    values = [100 * i.value for i in intervals]
    # A percentile interval can miss its point estimate; matplotlib rejects negative lengths.
    errors = [
        [max(0.0, 100 * (i.value - i.low)) for i in intervals],
        [max(0.0, 100 * (i.high - i.value)) for i in intervals],
    ]

    # Figure + Agg canvas directly: no pyplot global state, no dependence on the session backend.
    figure = Figure(figsize=(6.0, 1.0 + 0.4 * len(methods)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = range(len(methods))
    axes.errorbar(values, positions, xerr=errors, fmt="o", capsize=4)
    axes.set_yticks(list(positions), methods)
    axes.invert_yaxis()
    axes.set_xlabel(f"{metric} (%)")
    axes.grid(axis="x", alpha=0.3)
    if title:
        axes.set_title(title)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png", dpi=150)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    return path
