"""Report scripts on hand-made finished run folders give the expected tables, CSVs and plots."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lettingo.evaluation.results import method_results
from lettingo.reports import local_runs

LABELS = ("like", "neutral", "dislike")
ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(folder: Path, dataset: str, history: int, correct: dict[str, int], n: int = 20,
             sampling: tuple[str, ...] = ("smollm2_135m",)) -> None:
    """A run folder whose method m gets the first correct[m] of n users right."""
    y_true = ["like"] * n
    predictions = {m: ["like"] * k + ["dislike"] * (n - k) for m, k in correct.items()}
    folder.mkdir(parents=True)
    results = method_results(y_true, predictions, LABELS, reference_method="DPO", n_resamples=100)
    (folder / "results.json").write_text(json.dumps(results))
    config = {"dataset": {"name": dataset}, "history": {"length": history}, "backbone": {"name": "smollm2_135m"},
              "sampling": {"backbones": {b: {"name": b, "_target_": "lettingo.llm.local.LocalBackend"}
                                         for b in sampling}}}
    (folder / "run_config.json").write_text(json.dumps({"lettingo_version": "0", "config": config}))


def test_table3_rows_values_and_paper_column(tmp_path) -> None:
    make_run(tmp_path / "runs" / "a", "ml10m", 30, {"no DPO": 10, "SFT": 12, "DPO": 15})
    paths = load_script("table3").build(local_runs([tmp_path / "runs"]), tmp_path / "reports")
    markdown = paths["markdown"].read_text()
    lines = {label: line for line in markdown.splitlines() for label in ("no DPO", "SFT", "DPO")
             if line.startswith(f"| ml10m \\| {label} ")}
    assert len(lines) == 3 and len([x for x in markdown.splitlines() if x.startswith("| ml10m")]) == 3
    assert "| 75.0 [" in lines["DPO"] and lines["DPO"].replace(" ", "").endswith("|53.0|")
    assert lines["no DPO"].replace(" ", "").endswith("|50.9|")
    assert paths["plot"].stat().st_size > 0 and paths["csv"].read_text().startswith("method,")


def test_history_ablation_one_row_per_method_and_h(tmp_path) -> None:
    for h, k in ((30, 10), (50, 12), (70, 14)):
        make_run(tmp_path / "sweep" / f"history=h{h}", "ml100k", h, {"10H (no profile)": 8, "DPO": k})
    paths = load_script("history_ablation").build(local_runs([tmp_path / "sweep"]), tmp_path / "reports")
    markdown = paths["markdown"].read_text()
    for h, k in ((30, 10), (50, 12), (70, 14)):
        row = next(line for line in markdown.splitlines() if f"DPO \\| H={h}" in line)
        assert f"| {100 * k / 20:.1f} [" in row
    assert sum("10H (no profile) \\| H=" in line for line in markdown.splitlines()) == 3


def test_single_vs_multi_and_empty_input(tmp_path) -> None:
    make_run(tmp_path / "r" / "single", "ml100k", 30, {"no DPO": 9, "DPO": 11})
    make_run(tmp_path / "r" / "multi", "ml100k", 30, {"no DPO": 9, "DPO": 13},
             sampling=("gemma3_270m", "smollm2_135m"))
    markdown = load_script("single_vs_multi").build(local_runs([tmp_path / "r"]), tmp_path / "o")["markdown"]
    text = markdown.read_text()
    assert "multi (gemma3_270m+smollm2_135m) \\| DPO" in text and "single \\| DPO" in text
    with pytest.raises(ValueError, match="no finished run"):
        load_script("table2").build([], tmp_path / "empty")
