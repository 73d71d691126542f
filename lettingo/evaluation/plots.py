"""Plots of metric intervals and of paired differences (forest plots), written as PNG atomically (mode 0644)."""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lettingo.artifacts import atomic_path
from lettingo.evaluation.bootstrap import Interval
from lettingo.evaluation.methods import DPO, NO_DPO, ORACLE_FACTS, SFT, SHUFFLED, TABULAR, TABULAR_ORACLE

#: Colours of the methods every figure shares (matplotlib's tab10); any other method gets one from its name.
METHOD_COLORS = {DPO: "#1f77b4", SFT: "#ff7f0e", NO_DPO: "#9467bd", ORACLE_FACTS: "#2ca02c", SHUFFLED: "#7f7f7f",
                 TABULAR: "#8c564b", TABULAR_ORACLE: "#bcbd22", "GRPO": "#d62728", "DPO_SFT": "#17becf"}
#: For any other method (tab10's last colour and tab20's light ones): never one of the colours above.
_OTHER_COLORS = ("#e377c2", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#dbdb8d")


class Ranged(Protocol):
    """A value with its interval (an :class:`Interval` or a paired difference)."""

    value: float
    low: float
    high: float


def method_color(label: str) -> str:
    """The colour of a method in every figure: its own, or the base method's for `DPO (round 1)`, `DPO (seed 2)`."""
    base = label.split(" (")[0]
    known = METHOD_COLORS.get(label) or METHOD_COLORS.get(base)
    if known:
        return known
    return _OTHER_COLORS[int(hashlib.blake2b(base.encode(), digest_size=2).hexdigest(), 16) % len(_OTHER_COLORS)]


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
    for position, method, value, low, high in zip(positions, methods, values, *errors, strict=True):
        axes.errorbar([value], [position], xerr=[[low], [high]], fmt="o", capsize=4, color=method_color(method))
    axes.set_yticks(list(positions), methods)
    axes.invert_yaxis()
    axes.set_xlabel(f"{metric} (%)")
    axes.grid(axis="x", alpha=0.3)
    if title:
        axes.set_title(title)

    return save_png(figure, path)


def save_png(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` to ``path`` as PNG; the file appears complete or not at all, readable by all (0644)."""
    with atomic_path(Path(path)) as temp:
        figure.savefig(temp, format="png", dpi=150)
    return Path(path)


def plot_differences(
    rows: Mapping[str, Ranged],
    path: str | os.PathLike[str],
    title: str,
    unit: str = "points",
    scale: float = 100.0,
    confidence: float = 0.95,
) -> Path:
    """Forest plot: each paired difference (``rows``: "A − B" -> value, low, high) as a point with its interval,
    a line at zero, top to bottom in ``rows`` order, coloured by method A. ``scale`` x the values are drawn
    (100: fractions as points); ``unit`` names the axis. An effect is one whose interval misses the zero line."""
    if not rows:
        raise ValueError("no paired difference to draw")
    labels = list(rows)
    figure = Figure(figsize=(7.0, 1.2 + 0.45 * len(labels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.axvline(0.0, color="black", linewidth=0.8)
    for position, label in enumerate(labels):
        row = rows[label]
        value = scale * row.value
        error = [[max(0.0, value - scale * row.low)], [max(0.0, scale * row.high - value)]]
        axes.errorbar([value], [position], xerr=error, fmt="o", capsize=4,
                      color=method_color(label.split(" \u2212 ")[0]))
    axes.set_yticks(list(range(len(labels))), labels)
    axes.invert_yaxis()
    axes.set_xlabel(f"paired difference ({unit}; {100 * confidence:g}% interval)")
    axes.xaxis.set_major_locator(MaxNLocator(nbins=5))  # long labels of small values overlapped at the default
    axes.grid(axis="x", alpha=0.3)
    figure.suptitle(textwrap.fill(title, 85), fontsize=10)  # over the whole width: long row labels push the axes right
    return save_png(figure, path)


def plot_against(
    series: Mapping[str, Mapping[float, Ranged]],
    path: str | os.PathLike[str],
    xlabel: str,
    ylabel: str,
    title: str,
    scale: float = 100.0,
    zero_line: bool = False,
) -> Path:
    """Line plot of each series (label -> x -> value with interval) against x, intervals as error bars, the
    series side by side at each x so that their bars do not hide each other; a series named after a method
    takes its colour. ``zero_line`` draws y = 0 (for paired differences: an effect misses it)."""
    if not any(series.values()):
        raise ValueError("no point to draw")
    xs = sorted({float(x) for points in series.values() for x in points})
    step = min((b - a for a, b in zip(xs, xs[1:], strict=False)), default=1.0)
    figure = Figure(figsize=(6.5, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if zero_line:
        axes.axhline(0.0, color="black", linewidth=0.8)
    shift = 0.04 * step
    for index, (label, points) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * shift
        order = sorted(points, key=float)
        values = [scale * points[x].value for x in order]
        errors = [[max(0.0, v - scale * points[x].low) for v, x in zip(values, order, strict=True)],
                  [max(0.0, scale * points[x].high - v) for v, x in zip(values, order, strict=True)]]
        color = method_color(label) if label.split(" (")[0] in METHOD_COLORS else f"C{index % 10}"
        axes.errorbar([float(x) + offset for x in order], values, yerr=errors, fmt="o-", capsize=4, label=label,
                      color=color)
    axes.set_xticks(xs, [f"{x:g}" for x in xs])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(textwrap.fill(title, 70), fontsize=10)
    return save_png(figure, path)
