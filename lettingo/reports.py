"""Collect finished local runs and write report tables and plots.

Each `experiments/` script picks rows from the collected runs; this module finds the runs (every
folder with a ``results.json`` written by ``Comparison.write`` / ``Comparison.to_json`` and a
``run_config.json``), writes the markdown table, the CSV and the PNG into the report folder, and
holds the paper's numbers. A script that reports one run folder takes its common parts from here:
the run's command, commit and invocations, the stage-times table, and :class:`Numbers`, the CSV of every
number it prints. It imports only ``lettingo.evaluation``, ``lettingo.artifacts`` and
``lettingo.provenance`` (no torch), so reports run anywhere the results were copied to.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lettingo.artifacts import RESULTS, atomic_path
from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, PairedDifference
from lettingo.evaluation.comparison import FILE_STEM, Comparison, read_comparison
from lettingo.evaluation.methods import DEFAULT_RECENT, DPO, NO_DPO, NO_PROFILE, SFT, method_label, no_profile_label
from lettingo.evaluation.plots import plot_against, plot_differences, plot_intervals
from lettingo.evaluation.tables import (
    flat_columns,
    paired_heading,
    paired_table,
    render_markdown,
    results_table,
    to_markdown,
)
from lettingo.provenance import INVOCATIONS_FILE, read_invocations

RESULTS_FILE = f"{RESULTS}/{FILE_STEM}.json"  # the test stage's `results` artifact
RUN_CONFIG_FILE = "run_config.json"
STAGE_TIMES_FILE = "stage_times.json"
#: The columns of a results script's CSV: every number of its markdown, one per row.
CSV_COLUMNS = ("section", "row", "metric", "value", "low", "high", "p_value", "n")
#: The pipeline's stages in the order they run (the stage-times table's order).
STAGE_ORDER = ("data", "explore", "rec_profiles", "train_rec", "evaluate", "align", "test")

#: The PAPER's accuracy (fractions; LLaMA3-8B-Instruct zero-shot f_Rec), shown in "paper" columns,
#: never as ours. Keys are the method labels of `lettingo.evaluation.methods`.
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


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its folder, its resolved config and its comparison (results.json)."""

    source: str
    config: Mapping[str, Any]
    comparison: Comparison

    def get(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (`history.length`), or `default`."""
        return config_value(self.config, dotted, default)

    def intervals(self) -> dict[str, dict[str, Interval]]:
        """method -> metric -> Interval."""
        return self.comparison.intervals

    def versus(self, reference: str) -> dict[str, dict[str, PairedDifference]]:
        """method -> metric -> difference of method minus `reference` ({} when the run has none)."""
        return self.comparison.paired.get(reference, {})

    def no_profile(self) -> str:
        """The run's no-profile method label, from its K (`history.recent`)."""
        return no_profile_label(int(self.get("history.recent", DEFAULT_RECENT)))

    def alignment_rows(self) -> list[str]:
        """The alignment ablation's rows (Table 3): the base generator, then every method of `align.methods`
        (its last round's generator), in the run's order: a new method appears without being listed anywhere."""
        return [NO_DPO, *(method_label(m, 1, 1) for m in self.get("align.methods", []))]


def read_run(folder: Path) -> RunRecord:
    """The run in `folder` (its results.json and run_config.json)."""
    config = json.loads((folder / RUN_CONFIG_FILE).read_text())["config"]
    return RunRecord(str(folder), config, read_comparison(folder / RESULTS_FILE))


def finished_run_folders(root: str | Path) -> list[Path]:
    """Folders under `root` (itself included) holding run_config.json and results.json, oldest results first."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"run folder {root} does not exist")
    folders = [p.parent for p in root.rglob(RUN_CONFIG_FILE) if (p.parent / RESULTS_FILE).exists()]
    return sorted(folders, key=lambda folder: (folder / RESULTS_FILE).stat().st_mtime)


def is_debug_run(config: Mapping[str, Any]) -> bool:
    """Whether a run's config came from a debug setup (`debug=tiny`): its numbers mean nothing."""
    return bool(config.get("debug_setup"))


def refuse_debug_run(folder: str | Path, config: Mapping[str, Any], include_debug: bool) -> None:
    """Raise ValueError when the run in ``folder`` is a debug run and debug runs were not asked for."""
    if is_debug_run(config) and not include_debug:
        raise ValueError(f"{folder} is a debug run (debug={config['debug_setup']}): its numbers mean nothing; "
                         f"--include-debug reads it anyway")


def local_runs(roots: Iterable[str | Path], include_debug: bool = False) -> list[RunRecord]:
    """Every finished run under `roots`, oldest first (see :func:`finished_run_folders`); debug runs
    (`debug=...`) only with ``include_debug``.

    A results.json of another schema_version raises ValueError naming the file.
    """
    records = [read_run(folder) for root in roots for folder in finished_run_folders(root)]
    return [record for record in records if include_debug or not is_debug_run(record.config)]


def latest_by(records: Sequence[RunRecord], key: Callable[[RunRecord], Any]) -> dict[Any, RunRecord]:
    """The latest run for each key value (records are ordered oldest first)."""
    return {key(record): record for record in records}


def _markdown(
    rows: Mapping[str, Mapping[str, Interval]],
    metrics: Sequence[str],
    reference: Mapping[str, Mapping[str, float]] | None,
    title: str,
    paired: Mapping[str, Mapping[str, PairedDifference]] | None,
    paired_reference: str,
    runs: Sequence[RunRecord],
) -> str:
    """The report's markdown: title, the run folders read, intervals table (paper columns beside), optional
    paired table."""
    read = "Runs read: " + ", ".join(f"`{shown_path(record.source)}`" for record in runs) + "\n\n" if runs else ""
    text = (f"## {title}\n\n" if title else "") + read + to_markdown(results_table(rows, metrics, reference))
    if paired:
        text += (f"\n### {paired_heading(paired_reference, metrics)}\n\n"
                 + to_markdown(paired_table(paired, paired_reference, metrics)))
    return text + "\n"


def write_report(
    name: str,
    rows: Mapping[str, Mapping[str, Interval]],
    out_dir: str | Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    reference: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "",
    plot_metric: str = "accuracy",
    paired: Mapping[str, Mapping[str, PairedDifference]] | None = None,
    paired_reference: str = DPO,
    runs: Sequence[RunRecord] = (),
    factors: Mapping[str, Mapping[str, Any]] | None = None,
    against: str | None = None,
) -> dict[str, Path]:
    """Write `<name>.md`, `<name>.csv` and `<name>.png` into `out_dir` (the plot: the plot metric against factor
    ``against`` when given, else the paired differences as a forest plot when `paired` is given, else each row's
    interval).

    `rows` is row label -> metric -> Interval; `reference` (row label -> metric -> fraction) adds
    the paper's numbers in "paper" columns; `paired` (row label -> metric -> difference) adds a
    table of differences against `paired_reference`; `runs` are the runs the rows came from (named in
    the report). `factors` (row label -> factor -> value, e.g. dataset, method, H) makes the CSV tidy: one
    column per factor instead of the row label; with ``against`` (one of them, numeric) the plot draws the metric
    against it, one line per combination of the other factors. Metrics no row has (e.g. p_true and log_loss
    where no method gave probabilities) get no column.
    """
    if not rows:
        raise ValueError(f"report {name!r}: no finished run matched (a run folder holds {RUN_CONFIG_FILE} and "
                         f"{RESULTS_FILE}); nothing to tabulate")
    metrics = [m for m in metrics if any(m in row for row in rows.values())]
    out = Path(out_dir)
    paths = {"markdown": out / f"{name}.md", "csv": out / f"{name}.csv", "plot": out / f"{name}.png"}
    markdown = _markdown(rows, metrics, reference, title, paired, paired_reference, runs)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown)
    table = flat_columns(results_table(rows, metrics, reference))
    if factors:
        columns = list(dict.fromkeys(k for row in factors.values() for k in row))
        tidy = pd.DataFrame([[factors.get(label, {}).get(k) for k in columns] for label in table["method"]],
                            columns=columns)
        table = pd.concat([tidy, table.drop(columns="method")], axis=1)
    with atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    differences = {f"{row} \u2212 {paired_reference}": found[plot_metric]
                   for row, found in (paired or {}).items() if plot_metric in found}
    if against and factors:
        series: dict[str, dict[float, Interval]] = {}
        for label, found in rows.items():
            if plot_metric in found and label in factors:
                line = " | ".join(str(v) for k, v in factors[label].items() if k != against)
                series.setdefault(line, {})[float(factors[label][against])] = found[plot_metric]
        plot_against(series, paths["plot"], xlabel=against, ylabel=f"{plot_metric} (%)", title=title)
    elif differences:  # the claims rest on paired differences: draw those
        plot_differences(differences, paths["plot"], f"{title}: {plot_metric}, method − {paired_reference}")
    else:
        plot_intervals({m: r for m, r in rows.items() if plot_metric in r}, plot_metric, paths["plot"], title=title)
    print(markdown)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return paths


def report_cli(description: str, build: Callable[[list[RunRecord], Path], dict[str, Path]]) -> None:
    """Command line shared by the experiments scripts: run folders in, report folder out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="*", default=["outputs"], help="run folders or folders above them")
    parser.add_argument("--out", default="outputs/reports", help="report folder (default: outputs/reports)")
    parser.add_argument("--include-debug", action="store_true", help="read debug runs (debug=...) too")
    args = parser.parse_args()
    build(local_runs(args.runs, args.include_debug), Path(args.out))


def forest_plot(csv_path: str | Path, section: str, metric: str, path: str | Path, title: str,
                reference: str | None = None, unit: str = "points", scale: float = 100.0) -> Path:
    """Draw the paired differences of a results CSV (tidy: section, row, metric, value, low, high) as a forest
    plot (:func:`plot_differences`): the rows of ``section`` for ``metric``, labelled "<row> − <reference>" when
    ``reference`` is given (rows that are methods), else by their row (rows that are differences)."""
    frame = pd.read_csv(csv_path)
    found = frame[(frame["section"] == section) & (frame["metric"] == metric) & frame["low"].notna()]
    if found.empty:
        raise ValueError(f"{csv_path}: no {section!r} rows with an interval for {metric!r}")
    rows = {(row.row if reference is None else f"{row.row} \u2212 {reference}"): row
            for row in found.itertuples(index=False) if row.row != reference}
    return plot_differences(rows, path, title, unit=unit, scale=scale)


def single_run_parser(description: str, experiment: str, default_out: str) -> argparse.ArgumentParser:
    """Command line of a results script that reads one finished run folder of ``lettingo experiment=<experiment>``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help=f"one finished run folder of `lettingo experiment={experiment}`")
    parser.add_argument("--out", default=default_out, help=f"folder of the results file (default: {default_out})")
    parser.add_argument("--remark", action="append", default=[],
                        help="a line printed under the stage times, as yours (repeatable), e.g. a pause in a stage")
    parser.add_argument("--include-debug", action="store_true", help="read a debug run (debug=...) too")
    return parser


def reversed_difference(difference: PairedDifference) -> PairedDifference:
    """``b - a`` from ``a - b``: the value negated, the bounds negated AND swapped; p-value and n unchanged.

    The percentile interval of ``-d`` is ``[-high(d), -low(d)]``; the two-sided p-value is symmetric.
    """
    # 0.0 - x, not -x: a zero difference stays 0.0 (never prints as -0.0).
    return PairedDifference(0.0 - difference.value, 0.0 - difference.high, 0.0 - difference.low, difference.p_value,
                            difference.n)


def paired_difference(
    comparison: Comparison, method: str, reference: str, metric: str = "accuracy"
) -> PairedDifference:
    """``metric(method) - metric(reference)`` on the comparison's users.

    Taken from ``comparison.paired[reference][method]`` when stored; else the stored reverse
    (``paired[method][reference]``) via :func:`reversed_difference`; else computed with
    :meth:`Comparison.difference` from the stored cases, with the comparison's resamples,
    confidence and seed (the same resampled users as the stored differences). Raises ValueError
    naming the methods when either is not in the comparison.
    """
    stored = comparison.paired.get(reference, {}).get(method, {})
    if metric in stored:
        return stored[metric]
    reverse = comparison.paired.get(method, {}).get(reference, {})
    if metric in reverse:
        return reversed_difference(reverse[metric])
    return comparison.difference(method, reference, metric)


def excludes_zero(difference: PairedDifference | Interval) -> bool:
    """Whether the interval lies wholly above or wholly below zero (a bound AT zero does not exclude it)."""
    return difference.low > 0 or difference.high < 0


def effect_verdict(difference: PairedDifference | Interval) -> str:
    """The words a report uses for a paired difference: an effect is claimed only when its interval excludes 0."""
    return "interval excludes zero" if excludes_zero(difference) else "no effect shown (interval includes zero)"


def rec_model_line(meta: Mapping[str, Any]) -> str:
    """How a run's f_Rec was trained, from its ``rec_model/_meta.json`` record, to judge its rows by.

    Records from before ``select_by`` existed chose by macro-F1; ``cut_share`` (pairs longer than the
    model reads) is said only where the record has it.
    """
    if not meta.get("trained"):
        return "f_Rec not trained here" if meta else "no rec_model record"
    score = float(meta.get("val_score", meta.get("val_macro_f1", math.nan)))
    line = (f"f_Rec trained {meta.get('epochs')} epochs, {meta.get('steps')} steps on {meta.get('train_cases')} "
            f"cases of {meta.get('train_users')} users, checkpoint by validation {meta.get('select_by', 'macro_f1')} "
            f"{score:.3f}")
    if meta.get("cut_share") is not None:
        line += f", {100 * float(meta['cut_share']):.0f}% of its pairs cut to fit"
    return line


def shown_path(path: str | Path) -> str:
    """How a report names a folder: relative to the working directory when inside it (so a committed results
    file reads the same in every checkout), else its absolute path."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown pipe table of any cells (shown with ``str``); first column left-aligned, the others right-aligned."""
    return render_markdown([str(c) for c in header], [[str(c) for c in row] for row in rows])


def config_value(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """A config value by dotted key (`history.length`), or ``default``."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


def require_files(folder: Path, names: Sequence[str], experiment: str) -> None:
    """Raise FileNotFoundError naming the first of ``names`` missing from ``folder``: not a finished run of
    ``lettingo experiment=<experiment>``."""
    for name in names:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: give a finished run folder of "
                                    f"`lettingo experiment={experiment}`")


def format_number(value: Any, digits: int = 1) -> str:
    """A float with ``digits`` decimals, another value as ``str``; "" for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


class Numbers:
    """A results script's CSV rows: every number its markdown shows, one per row (:data:`CSV_COLUMNS`)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, row: str, metric: str, value: Any, low: Any = None, high: Any = None,
            p_value: Any = None, n: Any = None) -> None:
        """One number, with its interval, p-value and n where it has them."""
        self.rows.append(dict(zip(CSV_COLUMNS, (section, row, metric, value, low, high, p_value, n), strict=True)))

    def interval(self, section: str, row: str, metric: str, interval: Interval) -> None:
        """An interval's value, bounds and n."""
        self.add(section, row, metric, interval.value, interval.low, interval.high, None, interval.n)

    def difference(self, section: str, row: str, metric: str, diff: PairedDifference) -> None:
        """A paired difference's value, bounds, p-value and n."""
        self.add(section, row, metric, diff.value, diff.low, diff.high, diff.p_value, diff.n)

    def write(self, path: Path) -> None:
        """Write the rows as CSV to ``path`` (atomically; None as an empty cell)."""
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in self.rows)


def recorded_overrides(folder: Path, record: Mapping[str, Any]) -> list[str] | None:
    """The command-line overrides of the run: from run_config.json when it records them, else Hydra's
    ``.hydra/overrides.yaml``; None when neither is there."""
    for key in ("overrides", "hydra_overrides"):
        found = record.get(key, record.get("config", {}).get(key))
        if isinstance(found, list):
            return [str(o) for o in found]
    hydra_file = folder / ".hydra" / "overrides.yaml"
    if hydra_file.is_file():
        found = yaml.safe_load(hydra_file.read_text()) or []
        return [str(o) for o in found]
    return None


def command_of(folder: Path, record: Mapping[str, Any], reconstructed: Sequence[str]) -> tuple[str, str]:
    """The command that made the run folder and where it was read from; ``lettingo <reconstructed>`` when
    the run recorded no overrides."""
    overrides = recorded_overrides(folder, record)
    if overrides is not None:
        return shlex.join(["lettingo", *overrides]), "the overrides the run recorded"
    stages = sorted(p.stem for p in (folder / "configs").glob("*.json"))
    return (shlex.join(["lettingo", *reconstructed]),
            f"reconstructed from the config (no overrides recorded; configs/ holds the stages {stages})")


def git_commit(record: Mapping[str, Any]) -> str:
    """The commit of the code that ran (run_config.json's ``git_commit``), or ``unknown``."""
    return str(record.get("git_commit") or record.get("config", {}).get("git_commit") or "unknown")


def run_lines(folder: Path, record: Mapping[str, Any], reconstructed: Sequence[str]) -> list[str]:
    """The results file's lines naming the run folder, the command that made it and the commit that ran
    (``reconstructed``: see :func:`command_of`)."""
    command, source = command_of(folder, record, reconstructed)
    return [f"- run folder: `{shown_path(folder)}`", f"- command: `{command}` ({source})",
            f"- git commit: `{git_commit(record)}`; lettingo {record.get('lettingo_version', 'unknown')}"]


def invocation_lines(folder: Path) -> list[str]:
    """One line per recorded invocation of the run folder: when, which stage, the commit and the command."""
    invocations = read_invocations(folder)
    if not invocations:
        return [f"- invocations: not recorded (the folder predates `{INVOCATIONS_FILE}`)"]
    lines = [f"- invocations ({len(invocations)}, from `{INVOCATIONS_FILE}`; stage times add up over them):"]
    for entry in invocations:
        commit = str(entry.get("git_commit") or "unknown")[:12] + (" + local changes" if entry.get("git_dirty") else "")
        lines.append(f"  - {entry.get('started')}: stage {entry.get('stage')} at commit `{commit}`: "
                     f"`{entry.get('command')}`")
    return lines


def stage_times_table(folder: Path, numbers: Numbers) -> str:
    """The wall time of each stage (``stage_times.json``) and the total, as markdown; each into ``numbers``."""
    times = read_json(folder / STAGE_TIMES_FILE)
    if not times:
        return f"_No {STAGE_TIMES_FILE} in the run folder._\n"
    order = [s for s in STAGE_ORDER if s in times] + [s for s in times if s not in STAGE_ORDER]
    rows = [[stage, f"{float(times[stage]):.1f}", f"{float(times[stage]) / 60:.1f}"] for stage in order]
    total = sum(float(times[s]) for s in order)
    for stage in order:
        numbers.add("stage_seconds", stage, "seconds", float(times[stage]))
    numbers.add("stage_seconds", "total", "seconds", total)
    rows.append(["total", f"{total:.1f}", f"{total / 60:.1f}"])
    return markdown_table(["stage", "seconds", "minutes"], rows)


def remarks_paragraph(remarks: Sequence[str]) -> str:
    """The ``--remark`` lines as a list under the stage times, marked as the person's, not the script's."""
    if not remarks:
        return ""
    return ("\nRemarks given with `--remark` by whoever ran this script (not read from the run folder):\n\n"
            + "\n".join(f"- {remark}" for remark in remarks) + "\n")
