"""Report scripts on finished run folders (written by the production Comparison writer) give the expected tables."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lettingo.artifacts import RESULTS
from lettingo.evaluation.comparison import FILE_STEM, Comparison
from lettingo.evaluation.methods import DPO, NO_DPO, NO_PROFILE, SFT
from lettingo.evaluation.tables import render_markdown
from lettingo.reports import RESULTS_FILE, local_runs, markdown_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(folder: Path, dataset: str, history: int, correct: dict[str, int], n: int = 20,
             sampling: tuple[str, ...] = ("smollm2_135m",), recent: int = 10) -> Comparison:
    """A run folder whose method m gets the first correct[m] of n users right, written as the test stage does."""
    users = [f"u{i}" for i in range(n)]
    predictions = {m: ["like"] * k + ["dislike"] * (n - k) for m, k in correct.items()}
    comparison = Comparison.compute(users, ["like"] * n, predictions, references=(DPO,), n_resamples=100,
                                    meta={"split": "test"})
    paths = comparison.write(folder / RESULTS, FILE_STEM, f"{dataset} test")
    assert paths["json"] == folder / RESULTS_FILE
    config = {"dataset": {"name": dataset}, "history": {"length": history, "recent": recent},
              "backbone": {"name": "smollm2_135m"}, "align": {"methods": ["sft", "dpo"]},
              "sampling": {"backbones": {b: {"name": b, "_target_": "lettingo.llm.local.LocalBackend"}
                                         for b in sampling}}}
    (folder / "run_config.json").write_text(json.dumps({"lettingo_version": "0", "config": config}))
    return comparison


def rows_of(markdown: str, start: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith(start)]


def test_table3_rows_values_paper_column_and_paired(tmp_path) -> None:
    make_run(tmp_path / "runs" / "a", "ml10m", 30, {NO_DPO: 10, SFT: 12, DPO: 15})
    paths = load_script("table3").build(local_runs([tmp_path / "runs"]), tmp_path / "reports")
    markdown = paths["markdown"].read_text()
    intervals, paired = markdown.split("### Paired differences vs DPO")
    lines = {label: next(x for x in rows_of(intervals, f"| ml10m \\| {label} ")) for label in (NO_DPO, SFT, DPO)}
    assert len(rows_of(intervals, "| ml10m")) == 3
    assert "| 75.0 [" in lines[DPO] and lines[DPO].replace(" ", "").endswith("|53.0|")  # ours 75.0, paper 53.0
    assert lines[NO_DPO].replace(" ", "").endswith("|50.9|")
    assert "paper accuracy" in next(line for line in intervals.splitlines() if line.startswith("|"))  # the header
    # no DPO gets 10 of 20 right, DPO 15: no DPO minus DPO is -25 points.
    assert "| -25.0 [" in next(x for x in rows_of(paired, f"| ml10m \\| {NO_DPO} "))
    assert len(rows_of(paired, "| ml10m")) == 2
    assert paths["plot"].stat().st_size > 0 and paths["csv"].read_text().startswith("method,accuracy_value,")


def test_history_ablation_one_row_per_method_and_h(tmp_path) -> None:
    for h, k in ((30, 10), (50, 12), (70, 14)):
        make_run(tmp_path / "sweep" / f"history=h{h}", "ml100k", h, {NO_PROFILE: 8, DPO: k})
    make_run(tmp_path / "sweep" / "k5", "ml1m", 30, {"5H (no profile)": 6, DPO: 9}, recent=5)
    paths = load_script("history_ablation").build(local_runs([tmp_path / "sweep"]), tmp_path / "reports")
    markdown = paths["markdown"].read_text()
    for h, k in ((30, 10), (50, 12), (70, 14)):
        row = next(line for line in markdown.splitlines() if f"ml100k \\| DPO \\| H={h}" in line)
        assert f"| {100 * k / 20:.1f} [" in row
    assert sum("10H (no profile) \\| H=" in line for line in markdown.splitlines()) == 3
    assert "| ml1m \\| 5H (no profile) \\| H=30 " in markdown
    tidy = pd.read_csv(paths["csv"])  # one column per factor, not "dataset | method | H" in one
    assert list(tidy.columns[:4]) == ["dataset", "method", "H", "accuracy_value"]
    dpo = tidy[(tidy["dataset"] == "ml100k") & (tidy["method"] == DPO)].sort_values("H")
    assert dpo["H"].tolist() == [30, 50, 70] and dpo["accuracy_value"].tolist() == [0.5, 0.6, 0.7]
    assert paths["plot"].stat().st_size > 0 and oct(paths["plot"].stat().st_mode & 0o777) == "0o644"


def test_table2_takes_every_method_of_the_latest_run(tmp_path) -> None:
    make_run(tmp_path / "r" / "old", "yelp", 30, {NO_PROFILE: 5, DPO: 6})
    make_run(tmp_path / "r" / "new", "yelp", 30, {NO_PROFILE: 7, DPO: 16, "kar (smollm2_135m)": 9})
    markdown = load_script("table2").build(local_runs([tmp_path / "r"]), tmp_path / "o")["markdown"].read_text()
    assert len(rows_of(markdown, "| yelp")) == 3
    assert "| 80.0 [" in next(x for x in rows_of(markdown, "| yelp \\| DPO "))
    assert next(x for x in rows_of(markdown, "| yelp \\| DPO ")).replace(" ", "").endswith("|70.7|")


def test_single_vs_multi_and_empty_input(tmp_path) -> None:
    make_run(tmp_path / "r" / "single", "ml100k", 30, {NO_DPO: 9, DPO: 11})
    make_run(tmp_path / "r" / "multi", "ml100k", 30, {NO_DPO: 9, DPO: 13},
             sampling=("gemma3_270m", "smollm2_135m"))
    markdown = load_script("single_vs_multi").build(local_runs([tmp_path / "r"]), tmp_path / "o")["markdown"]
    text = markdown.read_text()
    assert "multi (gemma3_270m+smollm2_135m) \\| DPO" in text and "single \\| DPO" in text
    with pytest.raises(ValueError, match="no finished run"):
        load_script("table2").build([], tmp_path / "empty")


def test_api_comparison_picks_api_backbones(tmp_path) -> None:
    folder = tmp_path / "r" / "api"
    make_run(folder, "yelp", 30, {"gpt-4o": 12, NO_PROFILE: 8, DPO: 14})
    config_path = folder / "run_config.json"
    record = json.loads(config_path.read_text())
    record["config"]["sampling"]["backbones"]["gpt-4o"] = {"name": "gpt-4o",
                                                           "_target_": "lettingo.llm.openai_http.OpenAIBackend"}
    config_path.write_text(json.dumps(record))
    markdown = load_script("api_comparison").build(local_runs([tmp_path / "r"]), tmp_path / "o")["markdown"]
    assert len(rows_of(markdown.read_text(), "| yelp \\| ")) == 3


def test_old_results_and_missing_folders_are_refused(tmp_path) -> None:
    folder = tmp_path / "r" / "old"
    make_run(folder, "yelp", 30, {DPO: 3})
    (folder / RESULTS_FILE).write_text(json.dumps({"methods": {}, "versus_dpo": {}}))
    with pytest.raises(ValueError, match="comparison.json: not a comparison of schema_version 1"):
        local_runs([tmp_path / "r"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        local_runs([tmp_path / "nowhere"])


TRAINING_STACK = {"torch", "peft", "lightning", "pytorch_lightning", "lightning_fabric"}


def test_reports_and_scripts_import_no_training_stack() -> None:
    loads = "".join(
        f"s = importlib.util.spec_from_file_location({name!r}, {str(ROOT / 'experiments' / f'{name}.py')!r}); "
        "s.loader.exec_module(importlib.util.module_from_spec(s))\n"
        for name in SCRIPTS
    )
    code = ("import importlib.util, sys\nimport lettingo.reports\n" + loads
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {TRAINING_STACK!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {"table2", "table3", "ml1m_cpu", "reference_table"} <= set(SCRIPTS)
    assert result.stdout.strip() == "[]"


def test_script_command_line_writes_the_report(tmp_path) -> None:
    make_run(tmp_path / "runs" / "a", "yelp", 30, {NO_DPO: 10, SFT: 12, DPO: 15})
    command = [sys.executable, str(ROOT / "experiments" / "table3.py"), str(tmp_path / "runs"), "--out",
               str(tmp_path / "reports")]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "| yelp \\| DPO " in result.stdout
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["table3.csv", "table3.md", "table3.png"]
    refused = subprocess.run([*command, "--wandb-project", "p"], capture_output=True, text=True)
    assert refused.returncode == 2 and "unrecognized arguments: --wandb-project" in refused.stderr


def test_markdown_table_renders_any_cells_as_the_tables_module_does() -> None:
    assert markdown_table(["row", "n"], [["a|b", 3], ["c", 1.5]]) == render_markdown(["row", "n"],
                                                                                     [["a|b", "3"], ["c", "1.5"]])
    assert "| a\\|b |   3 |" in markdown_table(["row", "n"], [["a|b", 3]])


def test_forest_plot_draws_the_csv_differences_readable_by_all(tmp_path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("section,row,metric,value,low,high,p_value,n\n"
                   "paired,DPO − no DPO,accuracy,0.01,-0.01,0.03,0.3,100\n"
                   "paired,oracle facts − no profile,accuracy,0.03,0.01,0.05,0.01,100\n"
                   "paired,DPO − no DPO,macro_f1,0.02,-0.01,0.04,0.3,100\n"
                   "method,DPO,accuracy,0.5,0.4,0.6,,100\n")
    path = load_script("forest_plot").main([str(csv), "--title", "toy, K = 3, H = 30, n = 100"])
    assert path == tmp_path / "r.png" and path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError, match="no 'sensitivity' rows"):
        load_script("forest_plot").main([str(csv), "--title", "x", "--section", "sensitivity"])


def test_a_paired_report_draws_a_forest_plot(tmp_path, monkeypatch) -> None:
    drawn = {}
    monkeypatch.setattr("lettingo.reports.plot_differences", lambda rows, path, title: drawn.update(rows) or path)
    make_run(tmp_path / "runs" / "a", "ml10m", 30, {NO_DPO: 10, SFT: 12, DPO: 15})
    load_script("table3").build(local_runs([tmp_path / "runs"]), tmp_path / "reports")
    assert set(drawn) == {f"ml10m | {NO_DPO} − DPO", f"ml10m | {SFT} − DPO"}
    assert drawn[f"ml10m | {NO_DPO} − DPO"].value == pytest.approx(-0.25)


def test_method_colours_are_shared_and_never_reused_for_another_method() -> None:
    from lettingo.evaluation.plots import _OTHER_COLORS, METHOD_COLORS, method_color

    assert method_color("DPO (round 1)") == method_color("DPO (seed 2)") == method_color(DPO) == METHOD_COLORS[DPO]
    assert method_color("IPO") == method_color("IPO (round 1)") and method_color("IPO") in _OTHER_COLORS
    assert not set(_OTHER_COLORS) & set(METHOD_COLORS.values())
