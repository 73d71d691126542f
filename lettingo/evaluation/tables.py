"""Results tables: intervals per method and metric as a DataFrame, rendered to markdown.

A table has one row per method (index named ``method``) and two-level columns: the heading (e.g.
``accuracy``, ``paper accuracy``, ``Δ accuracy vs 10H``) and the field (``value``, ``low``,
``high``, ``p_value``). Values are fractions; :func:`to_markdown` shows them as percentages, except
log-loss (in nats, as it is).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, PairedDifference

INTERVAL_FIELDS = ("value", "low", "high")
DIFFERENCE_FIELDS = ("value", "low", "high", "p_value")
#: How :func:`to_markdown` shows a metric's numbers: (scale, decimals). Mean p_true gets two decimals in %
#: because the differences it can detect are a fraction of a point; log-loss stays in nats.
_FORMATS = {"p_true": (100.0, 2), "log_loss": (1.0, 3)}
_PERCENT = (100.0, 1)
#: Metrics where lower is better.
LOWER_IS_BETTER = ("log_loss",)


def _frame(
    rows: Mapping[str, Mapping[str, Interval | PairedDifference]],
    headings: Mapping[str, str],
    fields: Sequence[str],
) -> pd.DataFrame:
    """One row per method; for each metric -> heading, one column per field (NaN if missing)."""
    columns = pd.MultiIndex.from_tuples([(h, f) for h in headings.values() for f in fields])
    data = [
        [getattr(row[metric], field) if metric in row else math.nan for metric in headings for field in fields]
        for row in rows.values()
    ]
    frame = pd.DataFrame(data, index=pd.Index(list(rows), name="method"), columns=columns)
    return frame.astype("float64")


def _check_reference(reference: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> None:
    """Raise ValueError for reference metrics not in ``metrics`` or values that look like %."""
    for method, values in reference.items():
        for metric, value in values.items():
            if metric not in metrics:
                raise ValueError(f"reference for {method!r} has metric {metric!r}, not one of {tuple(metrics)}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"reference {method!r} {metric} = {value}: give fractions in [0, 1], not percentages")


def results_table(
    rows: Mapping[str, Mapping[str, Interval]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    reference: Mapping[str, Mapping[str, float]] | None = None,
    reference_label: str = "paper",
) -> pd.DataFrame:
    """Table of ``rows`` (method -> metric -> Interval), with optional reference numbers.

    ``reference`` (method -> metric -> fraction, e.g. the paper's reported accuracy) adds one
    column per reported metric, headed ``"<reference_label> <metric>"``, after the measured ones.
    Methods only in ``reference`` get rows with empty measured cells. Missing cells are NaN.
    """
    reference = reference or {}
    if not rows and not reference:
        raise ValueError("results_table needs at least one row")
    _check_reference(reference, metrics)
    methods = list(rows) + [m for m in reference if m not in rows]
    measured = _frame({m: rows.get(m, {}) for m in methods}, {m: m for m in metrics}, INTERVAL_FIELDS)
    reported = [m for m in metrics if any(m in values for values in reference.values())]
    if not reported:
        return measured
    columns = pd.MultiIndex.from_tuples([(f"{reference_label} {m}", "value") for m in reported])
    paper = pd.DataFrame(
        [[reference.get(method, {}).get(m, math.nan) for m in reported] for method in methods],
        index=measured.index,
        columns=columns,
        dtype="float64",
    )
    return pd.concat([measured, paper], axis=1)


def paired_table(
    rows: Mapping[str, Mapping[str, PairedDifference]],
    baseline: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> pd.DataFrame:
    """Table of differences vs ``baseline`` (method -> metric -> PairedDifference).

    Columns are headed ``"Δ <metric> vs <baseline>"``.
    """
    if not rows:
        raise ValueError("paired_table needs at least one row")
    headings = {m: f"Δ {m} vs {baseline}" for m in metrics}
    return _frame(rows, headings, DIFFERENCE_FIELDS)


def paired_heading(reference: str, metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """Heading of a paired-differences table against ``reference``: which way each sign points."""
    lower = [m for m in metrics if m in LOWER_IS_BETTER]
    exception = f"; for {' and '.join(lower)} (lower is better) positive does" if lower else ""
    return f"Paired differences vs {reference} (method minus {reference}, same users; negative favours {reference}" \
           f"{exception})"


def flat_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of a two-level table with the ``method`` index as a column and columns ``<heading>_<field>``.

    For CSV files and tracker tables, which want one header row.
    """
    flat = df.copy()
    flat.columns = [f"{heading}_{field}" for heading, field in flat.columns]
    return flat.reset_index()


def _format_p(p_value: float) -> str:
    """``p=0.23``, or ``p<0.01`` when two decimals would show 0."""
    return "p<0.01" if p_value < 0.01 else f"p={p_value:.2f}"


def _heading_format(heading: str) -> tuple[float, int]:
    """(scale, decimals) of a heading's metric: a heading is the metric's name, alone or among other words."""
    return next((_FORMATS[word] for word in heading.split() if word in _FORMATS), _PERCENT)


def _format_cell(cell: Mapping[str, float], scale: float = 100.0, decimals: int = 1) -> str:
    """One heading's fields as text: ``53.0``, ``53.0 [46.1, 59.9]`` or ``+3.1 [-2.0, 8.2], p=0.23`` (in %)."""
    if math.isnan(cell["value"]):
        return ""
    value = scale * cell["value"]
    if "low" not in cell:
        return f"{value:.{decimals}f}"
    bounds = f"[{scale * cell['low']:.{decimals}f}, {scale * cell['high']:.{decimals}f}]"
    if "p_value" not in cell:
        return f"{value:.{decimals}f} {bounds}"
    return f"{value:+.{decimals}f} {bounds}, {_format_p(cell['p_value'])}"


def render_markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Markdown pipe table; first column left-aligned, the others right-aligned, padded."""
    table = [list(header), *[list(r) for r in body]]
    table = [[cell.replace("|", "\\|") for cell in row] for row in table]
    widths = [max(3, *(len(row[i]) for row in table)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|:" + "-" * widths[0] + "-|" + "".join("-" * (w + 1) + ":|" for w in widths[1:])
    return "\n".join([line(table[0]), rule, *(line(row) for row in table[1:])]) + "\n"


def to_markdown(df: pd.DataFrame) -> str:
    """Render a table from :func:`results_table` or :func:`paired_table` as markdown, in percent (log-loss in nats).

    Each heading becomes one column; its cell shows the value, the interval when the table has
    ``low``/``high`` fields, and the p-value (value signed) when it has ``p_value``.
    """
    headings = list(dict.fromkeys(df.columns.get_level_values(0)))
    body = [
        [str(method)] + [_format_cell(df.loc[method, heading].to_dict(), *_heading_format(heading))
                         for heading in headings]
        for method in df.index
    ]
    return render_markdown([df.index.name or "method", *headings], body)
