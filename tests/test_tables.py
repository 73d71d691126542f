"""Results tables, their markdown, and the interval plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lettingo.evaluation.bootstrap import Interval, PairedDifference
from lettingo.evaluation.plots import plot_intervals
from lettingo.evaluation.tables import flat_columns, paired_heading, paired_table, results_table, to_markdown

ROWS = {
    "10H": {
        "accuracy": Interval(0.45, 0.427, 0.472, 2000),
        "macro_f1": Interval(0.41, 0.39, 0.432, 2000),
    },
    "10H+70P | DPO": {
        "accuracy": Interval(0.53, 0.461, 0.599, 2000),
        "macro_f1": Interval(0.5, 0.48, 0.52, 2000),
    },
}
PAPER = {"10H": {"accuracy": 0.45}, "10H+70P | DPO": {"accuracy": 0.53}, "KAR": {"accuracy": 0.5}}


def test_results_table_values_and_layout() -> None:
    table = results_table(ROWS, ("accuracy", "macro_f1"), reference=PAPER)
    assert list(table.index) == ["10H", "10H+70P | DPO", "KAR"]
    assert table.index.name == "method"
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == [
        "accuracy",
        "macro_f1",
        "paper accuracy",
    ]
    assert table.loc["10H+70P | DPO", ("accuracy", "low")] == 0.461
    assert table.loc["KAR", ("paper accuracy", "value")] == 0.5
    assert math.isnan(table.loc["KAR", ("accuracy", "value")])


def test_results_markdown_is_exact() -> None:
    table = results_table(ROWS, ("accuracy", "macro_f1"), reference=PAPER)
    assert to_markdown(table) == (
        "| method         |          accuracy |          macro_f1 | paper accuracy |\n"
        "|:---------------|------------------:|------------------:|---------------:|\n"
        "| 10H            | 45.0 [42.7, 47.2] | 41.0 [39.0, 43.2] |           45.0 |\n"
        "| 10H+70P \\| DPO | 53.0 [46.1, 59.9] | 50.0 [48.0, 52.0] |           53.0 |\n"
        "| KAR            |                   |                   |           50.0 |\n"
    )


def test_table_without_reference_has_only_measured_columns() -> None:
    table = results_table({"10H": ROWS["10H"]}, ("accuracy",))
    assert to_markdown(table) == (
        "| method |          accuracy |\n|:-------|------------------:|\n| 10H    | 45.0 [42.7, 47.2] |\n"
    )


def test_flat_columns_has_one_header_row() -> None:
    flat = flat_columns(results_table(ROWS, ("accuracy",), reference=PAPER))
    assert list(flat.columns) == ["method", "accuracy_value", "accuracy_low", "accuracy_high", "paper accuracy_value"]
    assert flat["method"].tolist() == ["10H", "10H+70P | DPO", "KAR"]


def test_paired_markdown_is_exact() -> None:
    rows = {
        "LettinGo": {"accuracy": PairedDifference(0.031, -0.02, 0.082, 0.23, 2000)},
        "PALR": {"accuracy": PairedDifference(-0.05, -0.08, -0.02, 0.004, 2000)},
    }
    table = paired_table(rows, baseline="10H", metrics=("accuracy",))
    assert table.loc["PALR", ("Δ accuracy vs 10H", "p_value")] == 0.004
    assert to_markdown(table) == (
        "| method   |         Δ accuracy vs 10H |\n"
        "|:---------|--------------------------:|\n"
        "| LettinGo |  +3.1 [-2.0, 8.2], p=0.23 |\n"
        "| PALR     | -5.0 [-8.0, -2.0], p<0.01 |\n"
    )


def test_probability_metrics_markdown_is_exact() -> None:
    # p_true in % with two decimals (its detectable differences are a fraction of a point), log-loss in nats.
    rows = {
        "10H": {"p_true": Interval(0.4123, 0.4001, 0.4256, 2000), "log_loss": Interval(1.0234, 1.0012, 1.0456, 2000)},
        "majority": {},
    }
    assert to_markdown(results_table(rows, ("p_true", "log_loss"))) == (
        "| method   |               p_true |             log_loss |\n"
        "|:---------|---------------------:|---------------------:|\n"
        "| 10H      | 41.23 [40.01, 42.56] | 1.023 [1.001, 1.046] |\n"
        "| majority |                      |                      |\n"
    )
    paired = {"DPO": {"p_true": PairedDifference(0.0042, 0.0011, 0.0073, 0.008, 2000),
                      "log_loss": PairedDifference(-0.0121, -0.0203, -0.0040, 0.004, 2000)}}
    assert to_markdown(paired_table(paired, "10H", ("p_true", "log_loss"))) == (
        "| method |            Δ p_true vs 10H |               Δ log_loss vs 10H |\n"
        "|:-------|---------------------------:|--------------------------------:|\n"
        "| DPO    | +0.42 [0.11, 0.73], p<0.01 | -0.012 [-0.020, -0.004], p<0.01 |\n"
    )


def test_paired_heading_says_which_way_log_loss_points() -> None:
    assert paired_heading("10H", ("accuracy",)) == "Paired differences vs 10H (method minus 10H, same users; " \
                                                   "negative favours 10H)"
    assert paired_heading("10H", ("accuracy", "log_loss")).endswith(
        "negative favours 10H; for log_loss (lower is better) positive does)")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"10H": {"accuracy": 44.95}}, "fractions"),
        ({"10H": {"auc": 0.5}}, "auc"),
    ],
)
def test_bad_reference_raises(reference: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        results_table(ROWS, ("accuracy",), reference=reference)


def test_plot_writes_png(tmp_path: Path) -> None:
    path = plot_intervals(ROWS, "accuracy", tmp_path / "plots" / "accuracy.png", title="ML-10M")
    assert path == tmp_path / "plots" / "accuracy.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["accuracy.png"]


def test_plot_missing_metric_raises_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weighted_f1"):
        plot_intervals(ROWS, "weighted_f1", tmp_path / "f1.png")
    assert list(tmp_path.iterdir()) == []
