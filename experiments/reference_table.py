"""Reference table: the rows that need no generation, per (K, H), from the evaluate stage's baselines.

Reads `baselines/comparison.json` and `run_config.json` of every run folder under the given folders
(a sweep over K = `history.recent` and H = `history.length`; the latest run of each (dataset, K, H)
wins) and writes `<out>/reference_table.md` and `.csv`: per (K, H) the accuracy with its 95% interval
of the no-profile row (f_Rec reads the K recent items only), shuffled oracle facts, oracle facts (the
older history's facts as the profile), the tabular f_Rec, tabular + oracle facts and the majority
class, and the paired differences oracle facts - no-profile row and tabular + oracle facts - tabular on
the same users (stored by the stage, or computed from the stored predictions with the comparison's own
resamples); and how each run's text f_Rec was trained (its rec_model record).
An effect is claimed only where the paired interval excludes zero.

Run: python experiments/reference_table.py <sweep folder or run folders ...> [--out results] [--keep DIR]

``--keep DIR`` copies the few files the table reads of each run (its run_config.json, evaluate's
comparison and the rec_model record; no checkpoint) into ``DIR/<dataset>_k<K>_h<H>/``, so the grid can be
filled over several machines or checkouts: pass ``DIR`` again with the new runs, e.g.
``python experiments/reference_table.py results/reference_runs outputs/sweep_reference --keep results/reference_runs``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lettingo.artifacts import BASELINES, META_FILE, REC_MODEL, atomic_path
from lettingo.evaluation.bootstrap import Interval, PairedDifference
from lettingo.evaluation.comparison import FILE_STEM, Comparison, read_comparison
from lettingo.evaluation.methods import (
    DEFAULT_RECENT,
    MAJORITY,
    ORACLE_FACTS,
    SHUFFLED_ORACLE,
    TABULAR,
    TABULAR_ORACLE,
    no_profile_label,
)
from lettingo.evaluation.plots import plot_against
from lettingo.reports import (
    RUN_CONFIG_FILE,
    effect_verdict,
    excludes_zero,
    is_debug_run,
    markdown_table,
    paired_difference,
    rec_model_line,
    shown_path,
)

NAME = "reference_table"
DEFAULT_OUT = "results"
BASELINES_FILE = f"{BASELINES}/{FILE_STEM}.json"
MINUS = "\u2212"
METRIC = "accuracy"
NO_PROFILE_COLUMN = "no profile"  # stands for the row's own no_profile_label(K)
#: column key -> method label (None: the row's no-profile label), in table order.
COLUMNS: dict[str, str | None] = {"no_profile": None, "shuffled_oracle_facts": SHUFFLED_ORACLE,
                                  "oracle_facts": ORACLE_FACTS, "tabular": TABULAR,
                                  "tabular_oracle_facts": TABULAR_ORACLE, "majority_class": MAJORITY}
#: difference key -> (method, reference) column keys, method minus reference.
DIFFERENCES: dict[str, tuple[str, str]] = {"oracle_facts_minus_no_profile": ("oracle_facts", "no_profile"),
                                           "tabular_oracle_facts_minus_tabular": ("tabular_oracle_facts", "tabular")}
REC_META_FILE = f"{REC_MODEL}/{META_FILE}"
#: What --keep copies of a run: everything this table reads.
KEPT_FILES = (RUN_CONFIG_FILE, BASELINES_FILE, REC_META_FILE)
#: In a kept copy: the run folder it was copied from.
KEPT_FROM_FILE = "kept_from.json"


class BaselineRun:
    """One run folder's evaluate-stage comparison and the (dataset, K, H) it was made for.

    (A plain class, not a dataclass: the scripts are also loaded by path, outside ``sys.modules``.)
    """

    def __init__(self, folder: Path, dataset: str, recent: int, history: int | None, comparison: Comparison,
                 rec_model: dict[str, Any], kept_from: str | None = None, debug: bool = False) -> None:
        self.folder, self.dataset, self.recent, self.history = folder, dataset, recent, history
        self.comparison, self.rec_model, self.kept_from, self.debug = comparison, rec_model, kept_from, debug

    def origin(self) -> str:
        """Where the run ran, for a kept copy (``--keep``); empty for a run folder itself."""
        return "" if self.kept_from is None else f"kept from `{shown_path(self.kept_from)}`; "

    def training_line(self) -> str:
        """How the text f_Rec of the run was trained (from its rec_model artifact), to judge its rows by."""
        return rec_model_line(self.rec_model)

    def select_by(self) -> str:
        """The validation metric that chose the checkpoint (records before select_by existed: macro-F1)."""
        return str(self.rec_model.get("select_by", "macro_f1"))

    def val_score(self) -> float:
        return float(self.rec_model.get("val_score", self.rec_model.get("val_macro_f1", math.nan)))

    def label(self, column: str) -> str:
        """The method label of a column key in this run (the no-profile label depends on K)."""
        found = COLUMNS[column]
        return no_profile_label(self.recent) if found is None else found

    def interval(self, column: str) -> Interval | None:
        return self.comparison.intervals.get(self.label(column), {}).get(METRIC)

    def difference(self, key: str) -> PairedDifference | None:
        """``method - reference`` of difference ``key``; None when either row is not in the run."""
        method, reference = (self.label(c) for c in DIFFERENCES[key])
        if method not in self.comparison.predictions or reference not in self.comparison.predictions:
            return None
        return paired_difference(self.comparison, method, reference, METRIC)


def baseline_folders(roots: Iterable[str | Path]) -> list[Path]:
    """Folders under ``roots`` (each root included) holding run_config.json and baselines/comparison.json,
    oldest comparison first."""
    folders = []
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"run folder {root} does not exist")
        folders += [p.parent.parent for p in root.rglob(BASELINES_FILE)
                    if (p.parent.parent / RUN_CONFIG_FILE).is_file()]
    unique = list(dict.fromkeys(f.resolve() for f in folders))
    return sorted(unique, key=lambda folder: (folder / BASELINES_FILE).stat().st_mtime)


def read_baseline_run(folder: Path) -> BaselineRun:
    config = json.loads((folder / RUN_CONFIG_FILE).read_text())["config"]
    history = config.get("history", {})
    length = history.get("length")
    rec_meta, kept = folder / REC_META_FILE, folder / KEPT_FROM_FILE
    return BaselineRun(folder, str(config.get("dataset", {}).get("name")), int(history.get("recent", DEFAULT_RECENT)),
                       None if length is None else int(length), read_comparison(folder / BASELINES_FILE),
                       json.loads(rec_meta.read_text()) if rec_meta.is_file() else {},
                       json.loads(kept.read_text())["folder"] if kept.is_file() else None, is_debug_run(config))


def keep(runs: Iterable[BaselineRun], folder: str | Path) -> list[Path]:
    """Copy :data:`KEPT_FILES` of each run into ``folder/<dataset>_k<K>_h<H>/`` (modification times kept, so
    the latest run still wins when the copies are read back); returns the copies. A copy of an older run of
    the same (dataset, K, H) is replaced, as the table itself would prefer the newer run."""
    copies = []
    for run in runs:
        target = (Path(folder) / f"{run.dataset}_k{run.recent}_h{run.history}").resolve()
        copies.append(target)
        if target == run.folder:
            continue  # read from its own kept copy
        if (target / KEPT_FROM_FILE).is_file():
            print(f"keep: replacing {target} (a copy of {json.loads((target / KEPT_FROM_FILE).read_text())['folder']})")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for name in KEPT_FILES:
            if (run.folder / name).is_file():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run.folder / name, staging / name)
        (staging / KEPT_FROM_FILE).write_text(json.dumps({"folder": run.kept_from or str(run.folder)}) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return copies


def collect(roots: Iterable[str | Path], include_debug: bool = False) -> list[BaselineRun]:
    """The latest run of each (dataset, K, H), sorted by dataset, K, H; debug runs only with ``include_debug``."""
    latest = {}
    for folder in baseline_folders(roots):
        run = read_baseline_run(folder)
        if include_debug or not run.debug:
            latest[(run.dataset, run.recent, run.history)] = run
    return [latest[key] for key in sorted(latest, key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2]))]


def _interval(interval: Interval | None) -> str:
    return "not run" if interval is None else \
        f"{100 * interval.value:.1f} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def _difference(diff: PairedDifference | None) -> str:
    if diff is None:
        return "not run"
    return f"{100 * diff.value:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}], p={diff.p_value:.3f}"


def _column_title(column: str) -> str:
    return "no-profile row (KH)" if COLUMNS[column] is None else str(COLUMNS[column])


def _difference_title(key: str) -> str:
    method, reference = DIFFERENCES[key]
    return f"{_column_title(method)} {MINUS} {_column_title(reference)}"


def csv_row(run: BaselineRun) -> dict[str, Any]:
    """One CSV row: dataset, K, H, n_users, folder, then value/low/high per column and per difference."""
    row: dict[str, Any] = {"dataset": run.dataset, "K": run.recent, "H": run.history,
                           "n_users": len(run.comparison.users), "folder": shown_path(run.folder),
                           "kept_from": "" if run.kept_from is None else shown_path(run.kept_from)}
    for column in COLUMNS:
        found = run.interval(column)
        for field in ("value", "low", "high"):
            row[f"{column}_{METRIC}_{field}"] = math.nan if found is None else getattr(found, field)
    for key in DIFFERENCES:
        diff = run.difference(key)
        for field in ("value", "low", "high", "p_value"):
            row[f"{key}_{METRIC}_{field}"] = math.nan if diff is None else getattr(diff, field)
        row[f"{key}_excludes_zero"] = "" if diff is None else excludes_zero(diff)
    for field in ("epochs", "steps", "train_cases"):
        row[f"rec_model_{field}"] = run.rec_model.get(field, "")
    row["rec_model_select_by"], row["rec_model_val_score"] = run.select_by(), run.val_score()
    row["rec_model_cut_share"] = run.rec_model.get("cut_share", "")
    return row


def build(roots: Iterable[str | Path], out: str | Path = DEFAULT_OUT,
          kept: str | Path | None = None, include_debug: bool = False) -> dict[str, Path]:
    """Write ``reference_table.md`` and ``.csv`` into ``out`` from the run folders under ``roots`` (debug runs
    only with ``include_debug``); with ``kept``, first copy what the table reads of each run there (:func:`keep`)
    and tabulate the copies."""
    roots = list(roots)
    runs = collect(roots, include_debug)
    if not runs:
        raise ValueError(f"no run folder under {[str(r) for r in roots]} holds {RUN_CONFIG_FILE} and {BASELINES_FILE} "
                         "(the evaluate stage writes it); nothing to tabulate")
    if kept is not None:
        runs = [read_baseline_run(copy) for copy in keep(runs, kept)]
    out = Path(out)
    key = ["dataset", "K", "H", "n"]
    accuracy = [[r.dataset, r.recent, r.history, len(r.comparison.users),
                 *(_interval(r.interval(c)) for c in COLUMNS)] for r in runs]
    paired = []
    for run in runs:
        cells = []
        for diff_key in DIFFERENCES:
            diff = run.difference(diff_key)
            cells += [_difference(diff), "" if diff is None else effect_verdict(diff)]
        paired.append([run.dataset, run.recent, run.history, len(run.comparison.users), *cells])
    confidence = {float(r.comparison.meta.get("confidence", 0.95)) for r in runs}
    level = "/".join(f"{100 * c:g}%" for c in sorted(confidence))
    verdict_header = []
    for diff_key in DIFFERENCES:
        verdict_header += [f"{_difference_title(diff_key)}", "verdict"]
    markdown = (
        "# Reference rows per (K, H): no generation\n\n"
        f"The evaluate stage's rows on its held-out users (n per row): accuracy in % with {level} percentile "
        "bootstrap intervals over users. The no-profile row reads only the K recent items (its label is "
        "`<K>H (no profile)`); oracle facts adds the facts of the H older items as the profile; shuffled oracle "
        "facts gives each user another user's facts; tabular is gradient-boosted trees over the recent window "
        "and item statistics, tabular + oracle facts the same with the older history's facts as numbers; majority "
        "class predicts the training users' most common label. How each run's text f_Rec was trained is listed "
        "with its folder below.\n\n"
        + markdown_table([*key, *(_column_title(c) for c in COLUMNS)], accuracy)
        + f"\n## Paired differences (method minus reference, same users, points, {level} interval, p-value)\n\n"
        "An effect is claimed only where its paired interval excludes zero.\n\n"
        + markdown_table([*key, *verdict_header], paired)
        + "\nRun folders:\n\n"
        + "".join(f"- K = {r.recent}, H = {r.history}: `{shown_path(r.folder)}` ({r.origin()}{r.training_line()})\n"
                  for r in runs)
    )
    paths = {"markdown": out / f"{NAME}.md", "csv": out / f"{NAME}.csv"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    rows = [csv_row(r) for r in runs]
    with atomic_path(paths["csv"]) as tmp, tmp.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths |= plot_ablations(runs, out, level)
    print(markdown)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return paths


def plot_ablations(runs: Sequence[BaselineRun], out: Path, level: str) -> dict[str, Path]:
    """Per dataset, the paired difference oracle facts − no-profile row against H (one line per K) and against K
    (one line per H), with its interval and the zero line: `<out>/reference_table_<dataset>_against_<h|k>.png`."""
    key = "oracle_facts_minus_no_profile"
    paths = {}
    for dataset in sorted({r.dataset for r in runs}):
        found = [(r, r.difference(key)) for r in runs if r.dataset == dataset and r.history is not None]
        found = [(r, diff) for r, diff in found if diff is not None]
        if not found:
            continue
        users = sorted({len(r.comparison.users) for r, _ in found})
        for axis, line, name in (("history", "recent", "h"), ("recent", "history", "k")):
            series: dict[str, dict[float, PairedDifference]] = {}
            for run, diff in sorted(found, key=lambda pair: getattr(pair[0], line)):
                series.setdefault(f"{'K' if line == 'recent' else 'H'} = {getattr(run, line)}", {})[
                    float(getattr(run, axis))] = diff
            paths[f"plot_against_{name}"] = plot_against(
                series, out / f"{NAME}_{dataset}_against_{name}.png",
                xlabel="older history H (items)" if axis == "history" else "recent window K (items)",
                ylabel=f"accuracy, oracle facts {MINUS} no profile (points)",
                title=f"{dataset}: oracle facts {MINUS} no-profile row, paired on the same users "
                      f"(n = {'/'.join(map(str, users))} per point, {level} intervals)",
                zero_line=True)
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, or folders above them (a sweep folder)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder of the table (default: {DEFAULT_OUT})")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="copy what the table reads of each run into DIR/<dataset>_k<K>_h<H>/ and tabulate those")
    parser.add_argument("--include-debug", action="store_true", help="read debug runs (debug=...) too")
    args = parser.parse_args(argv)
    return build(args.runs, args.out, args.keep, args.include_debug)


if __name__ == "__main__":
    main()
