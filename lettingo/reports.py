"""Collect finished runs (local run folders or a W&B project) and write report tables and plots.

Each `experiments/` script picks rows from the collected runs; this module finds the runs, writes
the markdown table, the CSV and the PNG into the report folder, and holds the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lettingo.artifacts import atomic_path
from lettingo.evaluation.bootstrap import Interval
from lettingo.evaluation.plots import plot_intervals
from lettingo.evaluation.results import intervals
from lettingo.evaluation.tables import results_table, to_markdown
from lettingo.held_out import DPO, NO_DPO, NO_PROFILE, SFT

#: The paper's accuracy (fractions; LLaMA3-8B-Instruct zero-shot f_Rec), labelled as the paper's.
#: Method names are those of the test stage (`lettingo.held_out`).
PAPER_TABLE2 = {
    "ml10m": {NO_PROFILE: 0.4495, DPO: 0.5300},
    "yelp": {NO_PROFILE: 0.3745, DPO: 0.7070},
    "amazon_books": {NO_PROFILE: 0.4815, DPO: 0.7075},
}
PAPER_TABLE3 = {
    "ml10m": {NO_DPO: 0.509, SFT: 0.511, DPO: 0.530},
    "yelp": {NO_DPO: 0.649, SFT: 0.662, DPO: 0.704},
    "amazon_books": {NO_DPO: 0.591, SFT: 0.637, DPO: 0.704},
}
#: The alignment ablation's methods, in table order.
TABLE3_METHODS = (NO_DPO, SFT, DPO)


@dataclass(frozen=True)
class RunRecord:
    """One finished run: where it came from, its resolved config and its results.json."""

    source: str
    config: Mapping[str, Any]
    results: Mapping[str, Any]

    def get(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (`history.length`), or `default`."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def intervals(self) -> dict[str, dict[str, Interval]]:
        """method -> metric -> Interval."""
        return intervals(self.results)


def local_runs(roots: Iterable[str | Path]) -> list[RunRecord]:
    """Every run folder under `roots` that holds both results.json and run_config.json, oldest first."""
    records = []
    for root in roots:
        for results_path in sorted(Path(root).rglob("results.json"), key=lambda p: p.stat().st_mtime):
            config_path = results_path.parent / "run_config.json"
            if config_path.exists():
                config = json.loads(config_path.read_text())["config"]
                records.append(RunRecord(str(results_path.parent), config, json.loads(results_path.read_text())))
    return records


def wandb_runs(project: str, entity: str | None = None) -> list[RunRecord]:
    """Finished runs of a W&B project whose summary holds `results` (logged by the test stage)."""
    import wandb

    api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    return [
        RunRecord(f"wandb:{run.path}", dict(run.config), dict(run.summary["results"]))
        for run in api.runs(path)
        if "results" in run.summary
    ]


def write_report(
    name: str,
    rows: Mapping[str, Mapping[str, Interval]],
    out_dir: str | Path,
    metrics: Sequence[str] = ("accuracy", "macro_f1", "weighted_f1"),
    reference: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "",
    plot_metric: str = "accuracy",
) -> dict[str, Path]:
    """Write `<name>.md`, `<name>.csv` and `<name>.png` (the plot metric with its CI) into `out_dir`."""
    if not rows:
        raise ValueError(f"report {name!r}: no finished run matched; nothing to tabulate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(rows, metrics=metrics, reference=reference)
    markdown = (f"## {title}\n\n" if title else "") + to_markdown(table) + "\n"
    paths = {"markdown": out / f"{name}.md", "csv": out / f"{name}.csv", "plot": out / f"{name}.png"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown)
    flat = table.copy()
    flat.columns = [" ".join(c).strip() for c in flat.columns]
    with atomic_path(paths["csv"]) as tmp:
        flat.to_csv(tmp)
    plot_intervals({m: r for m, r in rows.items() if plot_metric in r}, plot_metric, paths["plot"], title=title)
    print(markdown)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return paths


def report_cli(description: str, build: Callable[[list[RunRecord], Path], dict[str, Path]]) -> None:
    """Command line shared by the experiments scripts: run folders and/or a W&B project in, report out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="*", default=["outputs"], help="run folders or folders above them")
    parser.add_argument("--wandb-project", help="also read finished runs from this W&B project")
    parser.add_argument("--wandb-entity", help="W&B entity of the project")
    parser.add_argument("--out", default="outputs/reports", help="report folder (default: outputs/reports)")
    args = parser.parse_args()
    records = local_runs(args.runs)
    if args.wandb_project:
        records += wandb_runs(args.wandb_project, args.wandb_entity)
    build(records, Path(args.out))


def latest_by(records: Sequence[RunRecord], key: Callable[[RunRecord], Any]) -> dict[Any, RunRecord]:
    """The latest run for each key value (records are ordered oldest first)."""
    return {key(record): record for record in records}
