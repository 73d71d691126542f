"""ML-1M sized for a CPU (`lettingo experiment=ml1m_cpu`): ONE finished run folder -> the results file.

Writes `<out>/ml1m_cpu_k<K>.md` (K = the run's recent window, so the K = 3 and K = 10 runs sit side by
side): the command and the commit that ran, the wall time per stage, every
method's accuracy, macro-F1 and weighted-F1 with 95% intervals, the paired differences the claims
rest on (DPO - no DPO, DPO - SFT, oracle facts - no-profile row, DPO - no-profile row; an effect is
claimed only where the paired interval excludes zero), f_Rec's profile sensitivity per split, the
preference pairs and the users they came from, DPO's held-out reward margin over training,
exploration efficiency (pairs per thousand generated tokens, per backbone and for N = 2 .. n
profiles per user) and the paper's numbers beside ours, labelled as the paper's. Also
`<out>/ml1m_cpu_k<K>.csv` (every number of the markdown, one per row: section, row, metric, value, low,
high, p_value, n) and `<out>/ml1m_cpu_k<K>.png` (accuracy per method with its interval).

Run: python experiments/ml1m_cpu.py outputs/ml1m_cpu_k3/latest [--out results]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lettingo.artifacts import (
    BASELINES,
    META_FILE,
    PAIRS,
    PROFILES,
    REC_MODEL,
    REWARDS,
    SENSITIVITY,
    TABULAR_MODELS,
    ArtifactStore,
    adapter_artifact,
    atomic_path,
)
from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, PairedDifference
from lettingo.evaluation.comparison import FILE_STEM, Comparison, read_comparison
from lettingo.evaluation.methods import (
    DEFAULT_RECENT,
    DPO,
    NO_DPO,
    NO_PROFILE,
    ORACLE_FACTS,
    SFT,
    SHUFFLED,
    SHUFFLED_ORACLE,
)
from lettingo.evaluation.metrics import PROBABILITY_METRICS
from lettingo.evaluation.tables import results_table, to_markdown
from lettingo.feedback.pairs import GROUP, build_pairs
from lettingo.reports import (
    PAPER_TABLE2,
    PAPER_TABLE3,
    RESULTS_FILE,
    RUN_CONFIG_FILE,
    Numbers,
    RunRecord,
    config_value,
    effect_verdict,
    forest_plot,
    format_number,
    invocation_lines,
    markdown_table,
    paired_difference,
    read_json,
    read_run,
    rec_model_line,
    refuse_debug_run,
    remarks_paragraph,
    require_files,
    run_lines,
    single_run_parser,
    stage_times_table,
)

NAME = "ml1m_cpu"
EXPERIMENT = "ml1m_cpu"
DEFAULT_OUT = "results"
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1"}
DATASET_NAMES = {"ml1m": "MovieLens-1M", "ml10m": "MovieLens-10M", "ml100k": "MovieLens-100K", "yelp": "Yelp",
                 "amazon_books": "Amazon Books"}
MINUS = "\u2212"  # the minus sign of the difference names ("DPO − no DPO")
#: DPO's held-out metrics logged by the align stage (val_history), in table order.
VAL_KEYS = {"align/val/rewards/margins": "reward margin", "align/val/rewards/accuracies": "reward accuracy",
            "align/val/loss": "loss", "align/val/rewards/chosen": "reward chosen",
            "align/val/rewards/rejected": "reward rejected"}


def difference_name(method: str, reference: str) -> str:
    """``"DPO − no DPO"``: the row name of ``method`` minus ``reference``."""
    return f"{method} {MINUS} {reference}"


def claims(no_profile: str) -> tuple[tuple[str, str], ...]:
    """The paired differences (method, reference) the results file reports, method minus reference."""
    return ((DPO, NO_DPO), (DPO, SFT), (ORACLE_FACTS, no_profile), (DPO, no_profile))


# ----------------------------------------------------------------------------------------------- formatting
def _pct(fraction: float) -> str:
    return "" if fraction is None or math.isnan(fraction) else f"{100 * fraction:.1f}"


def _interval(interval: Interval) -> str:
    return f"{100 * interval.value:.1f} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def _difference(diff: PairedDifference) -> str:
    return f"{100 * diff.value:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}], p={diff.p_value:.3f}"


# ----------------------------------------------------------------------------------------------- efficiency
def _users(frame: pd.DataFrame) -> int:
    return int(frame.groupby(list(GROUP)).ngroups) if len(frame) else 0


def efficiency_row(scope: str, profiles: pd.DataFrame, rewards: pd.DataFrame, pairs_cfg: Mapping[str, Any],
                   seed: int) -> dict[str, Any]:
    """Pairs the run's rule makes from ``rewards`` and what generating ``profiles`` cost, per thousand tokens."""
    cap = pairs_cfg.get("max_pairs_per_user")
    pairs = build_pairs(rewards, rule=str(pairs_cfg.get("rule", "all")),
                        max_pairs_per_user=None if cap is None else int(cap),
                        min_margin=float(pairs_cfg.get("min_margin", 0.0) or 0.0), seed=seed)
    tokens = int(pd.to_numeric(profiles["completion_tokens"], errors="coerce").fillna(0).sum())
    users_with_pairs = _users(pairs)
    per_k = (lambda count: 1000 * count / tokens) if tokens else (lambda count: math.nan)
    return {"scope": scope, "profiles": len(profiles), "tokens": tokens, "users": _users(rewards),
            "pairs": len(pairs), "users_with_pairs": users_with_pairs, "pairs_per_1k_tokens": per_k(len(pairs)),
            "users_with_pairs_per_1k_tokens": per_k(users_with_pairs)}


def exploration_efficiency(profiles: pd.DataFrame, rewards: pd.DataFrame, pairs_cfg: Mapping[str, Any],
                           seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per backbone, per N) rows of :func:`efficiency_row`.

    Per backbone: that backbone's profiles alone, all N of them per user. Per N: each user's first N
    profiles (``sample_idx < N``) of every backbone, pairs rebuilt from their rewards with the run's
    rule, cap and seed (N = the run's n is the pairs artifact itself).
    """
    backbones = sorted(profiles["backbone"].astype(str).unique())
    by_backbone = [efficiency_row(b, profiles[profiles["backbone"].astype(str) == b],
                                  rewards[rewards["backbone"].astype(str) == b], pairs_cfg, seed) for b in backbones]
    n_max = int(profiles["sample_idx"].max()) + 1 if len(profiles) else 0
    by_n = [efficiency_row(f"N = {n}", profiles[profiles["sample_idx"] < n], rewards[rewards["sample_idx"] < n],
                           pairs_cfg, seed) | {"n": n} for n in range(2, n_max + 1)]
    return by_backbone, by_n


# ----------------------------------------------------------------------------------------------- sections
def reconstructed_command(config: Mapping[str, Any]) -> list[str]:
    """The overrides of the command that made a run of this experiment with ``config`` (K = 3 is its default)."""
    recent = config_value(config, "history.recent")
    return [f"experiment={EXPERIMENT}", *([] if recent in (None, 3) else [f"history.recent={recent}"])]


def section_run(folder: Path, record: Mapping[str, Any], run: RunRecord) -> str:
    config = record.get("config", {})
    slots = config_value(config, "sampling.backbones") or {}
    backbones = sorted({str(b.get("name", slot)) for slot, b in slots.items() if isinstance(b, Mapping)})
    lines = [
        *run_lines(folder, record, reconstructed_command(config)),
        f"- dataset: {run.get('dataset.name')}; K = {run.get('history.recent')} recent items, "
        f"H = {run.get('history.length')} older items; f_Rec: {run.get('recommender.name')}; "
        f"generator(s): {', '.join(backbones) or config_value(config, 'backbone.name')}, "
        f"N = {config_value(config, 'sampling.n')} profiles per user; seed {config_value(config, 'seed')}",
    ]
    return "\n".join(lines + invocation_lines(folder)) + "\n"


def section_claims(comparison: Comparison, no_profile: str, numbers: Numbers) -> str:
    # The label metrics, in points; p_true and log-loss are in the comparison tables, in their own units.
    metrics = [m for m in DEFAULT_METRICS if m in comparison.metrics and m not in PROBABILITY_METRICS]
    rows, verdicts = [], []
    for method, reference in claims(no_profile):
        name = difference_name(method, reference)
        missing = [m for m in (method, reference) if m not in comparison.predictions]
        if missing:
            verdicts.append(f"- {name}: not measured ({', '.join(missing)} not in this run's results)")
            continue
        found = {metric: paired_difference(comparison, method, reference, metric) for metric in metrics}
        for metric, diff in found.items():
            numbers.difference("paired", name, metric, diff)
        rows.append([name, *(_difference(found[m]) for m in metrics)])
        verdicts.append(f"- {name}: " + "; ".join(
            f"{METRIC_NAMES.get(m, m)} {100 * found[m].value:+.1f} points "
            f"[{100 * found[m].low:+.1f}, {100 * found[m].high:+.1f}]: {effect_verdict(found[m])}" for m in metrics))
    table = markdown_table(["difference (method minus reference, same users)", *(f"Δ {METRIC_NAMES.get(m, m)}"
                                                                       for m in metrics)], rows) if rows else ""
    return table + "\n" + "\n".join(verdicts) + "\n"


def section_paper(run: RunRecord, comparison: Comparison, no_profile: str, numbers: Numbers) -> str:
    header = ["row", "no profile (T2)", "no DPO (T3)", "SFT (T3)", "DPO (T3)", f"DPO {MINUS} no profile (T2)",
              f"DPO {MINUS} no DPO (T3)", f"DPO {MINUS} SFT (T3)"]
    rows = []
    for dataset in dict.fromkeys([*PAPER_TABLE2, *PAPER_TABLE3]):
        t2, t3 = PAPER_TABLE2.get(dataset, {}), PAPER_TABLE3.get(dataset, {})
        cells = [t2.get(NO_PROFILE), t3.get(NO_DPO), t3.get(SFT), t3.get(DPO)]
        diffs = [t2[DPO] - t2[NO_PROFILE] if DPO in t2 and NO_PROFILE in t2 else None,
                 t3[DPO] - t3[NO_DPO] if DPO in t3 and NO_DPO in t3 else None,
                 t3[DPO] - t3[SFT] if DPO in t3 and SFT in t3 else None]
        label = f"PAPER: {DATASET_NAMES.get(dataset, dataset)} (reported)"
        rows.append([label, *(_pct(c) if c is not None else "" for c in cells),
                     *(f"{100 * d:+.1f}" if d is not None else "" for d in diffs)])
        for method, value in (("no profile", t2.get(NO_PROFILE)), (NO_DPO, t3.get(NO_DPO)), (SFT, t3.get(SFT)),
                              (DPO, t3.get(DPO))):
            if value is not None:
                numbers.add("paper", f"{dataset} | {method}", "accuracy", value)
    dataset = str(run.get("dataset.name"))
    found = comparison.intervals
    ours = [_interval(found[m]["accuracy"]) if m in found else "not run" for m in (no_profile, NO_DPO, SFT, DPO)]
    diffs = []
    for reference in (no_profile, NO_DPO, SFT):
        if DPO in found and reference in found:
            diffs.append(_difference(paired_difference(comparison, DPO, reference, "accuracy")).split(", p=")[0])
        else:
            diffs.append("not run")
    in_paper = dataset in PAPER_TABLE2 or dataset in PAPER_TABLE3
    rows.append([f"OURS: {DATASET_NAMES.get(dataset, dataset)}, K = {run.get('history.recent')}"
                 + ("" if in_paper else " (not in the paper)"), *ours, *diffs])
    note = ("ML-1M is not in the paper: the paper reports ML-10M, Yelp and Amazon Books only, so no paper row "
            "is the same experiment as ours; they show the size of the effects the paper reports."
            if dataset == "ml1m" else
            (f"{DATASET_NAMES.get(dataset, dataset)} is not in the paper (it reports ML-10M, Yelp and Amazon Books)."
             if not in_paper else f"The paper reports {DATASET_NAMES.get(dataset, dataset)}; compare with its row."))
    return (f"Accuracy in %. Rows marked PAPER are the paper's numbers (Tables 2 and 3 of arXiv 2506.18309: "
            f"LLaMA3-8B-Instruct zero-shot f_Rec, no-profile row = 10H, point values only, no intervals "
            f"reported; T2 / T3: the column's table, whose DPO rows differ slightly), NOT ours. The row marked "
            f"OURS is this run ({no_profile} as the no-profile row, 95% intervals, paired differences on the same "
            f"users). {note}\n\n" + markdown_table(header, rows))


def section_methods(comparison: Comparison, numbers: Numbers) -> str:
    metrics = [m for m in DEFAULT_METRICS if m in comparison.metrics]
    for method, row in comparison.intervals.items():
        for metric in metrics:
            if metric in row:  # a label-only method has no p_true or log-loss
                numbers.interval("method", method, metric, row[metric])
    return to_markdown(results_table(comparison.intervals, metrics))


def section_sensitivity(folder: Path, comparison: Comparison, numbers: Numbers) -> str:
    found = read_json(folder / SENSITIVITY / "data.json") or {}
    rows = []
    for split, s in found.items():
        diff = PairedDifference(float(s["value"]), float(s["low"]), float(s["high"]), float(s["p_value"]),
                                int(s.get("users", 0)))
        numbers.difference("sensitivity", split, "accuracy_true_minus_shuffled", diff)
        for key in ("accuracy_true", "accuracy_shuffled", "flip_rate"):
            numbers.add("sensitivity", split, key, float(s[key]), n=int(s.get("users", 0)))
        rows.append([f"generated, `{split}` users (every explored profile)", _difference(diff),
                     _pct(s["accuracy_true"]), _pct(s["accuracy_shuffled"]), _pct(s["flip_rate"]), s.get("users", ""),
                     s.get("cases", ""), effect_verdict(diff)])
    held_out = [("generated (no DPO), test users", comparison, NO_DPO, SHUFFLED)]
    baselines = folder / BASELINES / f"{FILE_STEM}.json"
    if baselines.is_file():
        held_out.append(("oracle facts, evaluate's held-out users", read_comparison(baselines), ORACLE_FACTS,
                         SHUFFLED_ORACLE))
    for name, source, method, floor in held_out:
        if method not in source.predictions or floor not in source.predictions:
            continue
        diff = paired_difference(source, method, floor)
        numbers.difference("sensitivity", name, "accuracy_true_minus_shuffled", diff)
        accuracy = source.intervals
        rows.append([name, _difference(diff), _pct(accuracy[method]["accuracy"].value),
                     _pct(accuracy[floor]["accuracy"].value), _pct(_flip_rate(source, method, floor)),
                     len(source.users), len(source.users), effect_verdict(diff)])
    trained = f"\n{rec_model_line(read_json(folder / REC_MODEL / META_FILE) or {})}.\n"
    if not rows:
        return f"_No {SENSITIVITY}/data.json in the run folder and no shuffled rows._\n" + trained
    return ("f_Rec's accuracy with each user's own profiles minus with another user's (shuffled), paired over "
            "users: for the generated profiles it judges (the rewards) and, on held-out users, for the base "
            "generator's profiles and for the oracle facts. Flip rate: share of predictions the shuffle changes. "
            "Near zero: f_Rec does not read that kind of profile.\n\n"
            + markdown_table(["profiles", "Δ accuracy (true − shuffled)", "accuracy, true", "accuracy, shuffled",
                              "flip rate", "users", "cases", "verdict"], rows) + trained)


def _flip_rate(comparison: Comparison, method: str, other: str) -> float:
    """Share of users whose predicted label differs between two methods of ``comparison``."""
    a, b = comparison.predictions[method], comparison.predictions[other]
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


def section_pairs(folder: Path, config: Mapping[str, Any], numbers: Numbers) -> str:
    summary = (read_json(folder / PAIRS / "_meta.json") or {}).get("summary")
    lines = []
    pcfg = config_value(config, "pairs") or {}
    if summary:
        for key, value in summary.items():
            numbers.add("pairs", "pairs artifact", key, value)
        lines.append(
            f"- pairs artifact (rule `{pcfg.get('rule')}`, at most {pcfg.get('max_pairs_per_user')} per user): "
            f"**{summary['pairs']} pairs from {summary['users_with_pairs']} users** (of {summary['users']} users "
            f"explored, {summary['profiles']} profiles); {summary['pairs_per_user_mean']:.1f} pairs per user with "
            f"pairs (max {summary['pairs_per_user_max']}); profiles judged right {_pct(summary['profile_accuracy'])}%; "
            f"users whose profiles were all right {_pct(summary['share_all_right'])}%, all wrong "
            f"{_pct(summary['share_all_wrong'])}% (no pairs from them)")
    else:
        lines.append(f"- _No {PAIRS}/_meta.json summary in the run folder._")
    for method in ("dpo", "sft"):
        meta = read_json(folder / adapter_artifact(method) / "_meta.json")
        if not meta:
            continue
        for key in ("pairs_train", "users_train", "pairs_val", "users_val", "steps", "seconds", "seconds_per_pair"):
            if key in meta:
                numbers.add("align", method, key, meta[key])
        lines.append(f"- {method.upper()} trained on {meta.get('pairs_train')} pairs from {meta.get('users_train')} "
                     f"users (held out: {meta.get('pairs_val')} pairs from {meta.get('users_val')} users), "
                     f"{meta.get('steps')} optimizer steps, {format_number(meta.get('seconds_per_pair'), 2)} s "
                     "per pair")
    return "\n".join(lines) + "\n"


def section_margin(folder: Path, numbers: Numbers) -> str:
    meta = read_json(folder / adapter_artifact("dpo") / "_meta.json")
    history = (meta or {}).get("val_history") or []
    if not history:
        return "_No DPO val_history in adapter_dpo/_meta.json._\n"
    keys = [k for k in VAL_KEYS if any(k in h for h in history)]
    rows = []
    for entry in history:
        step = entry.get("step")
        for key in keys:
            if key in entry:
                numbers.add("dpo_val", format_number(step, 0), VAL_KEYS[key], float(entry[key]))
        rows.append([format_number(step, 0), *(format_number(entry.get(k), 4) for k in keys)])
    margin = [h for h in history if "align/val/rewards/margins" in h]
    summary = ""
    if margin:
        first, last = margin[0], margin[-1]
        summary = (f"Held-out reward margin (chosen minus rejected implicit reward, on pairs of held-out users) "
                   f"{first['align/val/rewards/margins']:+.4f} at step {format_number(first.get('step'), 0)} -> "
                   f"{last['align/val/rewards/margins']:+.4f} at step {format_number(last.get('step'), 0)}.\n\n")
    return summary + markdown_table(["step", *(VAL_KEYS[k] for k in keys)], rows)


def section_efficiency(folder: Path, config: Mapping[str, Any], numbers: Numbers) -> str:
    store = ArtifactStore(folder, read_only=True)
    try:
        profiles, rewards = store.read_table(PROFILES), store.read_table(REWARDS)
    except FileNotFoundError as error:
        return f"_Exploration efficiency needs the profiles and rewards artifacts: {error}._\n"
    pcfg = dict(config_value(config, "pairs") or {})
    by_backbone, by_n = exploration_efficiency(profiles, rewards, pcfg, int(config_value(config, "seed", 0)))
    header = ["scope", "profiles", "generated tokens", "users", "pairs", "users with pairs", "pairs / 1k tokens",
              "users with pairs / 1k tokens"]

    def rows_of(found: list[dict[str, Any]], section: str) -> list[list[str]]:
        for row in found:
            for key in ("profiles", "tokens", "users", "pairs", "users_with_pairs", "pairs_per_1k_tokens",
                        "users_with_pairs_per_1k_tokens"):
                numbers.add(section, row["scope"], key, row[key])
        return [[r["scope"], r["profiles"], r["tokens"], r["users"], r["pairs"], r["users_with_pairs"],
                 format_number(r["pairs_per_1k_tokens"], 2), format_number(r["users_with_pairs_per_1k_tokens"], 2)]
                for r in found]

    summary = (read_json(folder / PAIRS / "_meta.json") or {}).get("summary") or {}
    check = ""
    if by_n and summary:
        full = by_n[-1]
        same = full["pairs"] == summary.get("pairs") and full["users_with_pairs"] == summary.get("users_with_pairs")
        check = (f" Rebuilt at N = {full['n']}: {full['pairs']} pairs from {full['users_with_pairs']} users; the pairs "
                 f"artifact holds {summary.get('pairs')} from {summary.get('users_with_pairs')}"
                 + (" (the same)." if same else " (they DIFFER: the rewards or the rule changed after the pairs "
                    "were made)."))
    return (f"Generated tokens: `completion_tokens` of the profiles artifact. Pairs rebuilt from the rewards with "
            f"the run's rule (`{pcfg.get('rule')}`, at most {pcfg.get('max_pairs_per_user')} per user, seed "
            f"{config_value(config, 'seed', 0)}).{check}\n\nPer backbone (all its profiles):\n\n"
            + markdown_table(header, rows_of(by_backbone, "efficiency_backbone"))
            + "\nPer N (each user's first N profiles, sample_idx < N, of every backbone):\n\n"
            + markdown_table(header, rows_of(by_n, "efficiency_n")))


def section_baselines(folder: Path, numbers: Numbers) -> str:
    path = folder / BASELINES / f"{FILE_STEM}.json"
    if not path.is_file():
        return f"_No {BASELINES}/{FILE_STEM}.json in the run folder._\n"
    comparison = read_comparison(path)
    metrics = [m for m in DEFAULT_METRICS if m in comparison.metrics]
    for method, row in comparison.intervals.items():
        for metric in metrics:
            if metric in row:  # the rule rows (majority class, user mean) have no probabilities
                numbers.interval("baselines", method, metric, row[metric])
    tabular = (read_json(folder / TABULAR_MODELS / "_meta.json") or {}).get("models") or {}
    cv = "".join(f"\n- {label}: cross-validated accuracy {_pct(info.get('cv_accuracy'))}% on the training users, "
                 f"parameters {info.get('best_params')}" for label, info in tabular.items())
    return (f"The evaluate stage's reference rows on the `{comparison.meta.get('split')}` users "
            f"(n = {len(comparison.users)}), no generation:\n\n"
            + to_markdown(results_table(comparison.intervals, metrics)) + (f"\nTabular f_Rec:{cv}\n" if cv else ""))


# ----------------------------------------------------------------------------------------------- build
def build(folder: str | Path, out: str | Path = DEFAULT_OUT, remarks: Sequence[str] = (),
          include_debug: bool = False) -> dict[str, Path]:
    """Write ``ml1m_cpu.md``, ``.csv`` and ``.png`` into ``out`` from the finished run folder ``folder``.

    ``remarks`` (e.g. a pause that counts in a stage's time) are printed under the stage times as given;
    a debug run (``debug=...``) is refused unless ``include_debug``.
    """
    folder, out = Path(folder), Path(out)
    require_files(folder, (RUN_CONFIG_FILE, RESULTS_FILE), EXPERIMENT)
    record = json.loads((folder / RUN_CONFIG_FILE).read_text())
    run = read_run(folder)
    comparison, config = run.comparison, run.config
    refuse_debug_run(folder, config, include_debug)
    no_profile = run.no_profile()
    numbers = Numbers()
    meta = comparison.meta
    n_users = len(comparison.users)
    confidence = float(meta.get("confidence", 0.95))
    dataset = str(run.get("dataset.name"))
    title = f"LettinGo on {DATASET_NAMES.get(dataset, dataset)} sized for a CPU (experiment {EXPERIMENT})"
    numbers.add("run", "test", "n_users", n_users)
    parts = [
        f"# {title}\n", section_run(folder, record, run),
        "## Wall time per stage\n", stage_times_table(folder, numbers) + remarks_paragraph(remarks),
        "## Every method on the same test users\n",
        f"n = {n_users} test users, every method on the same users; {100 * confidence:g}% percentile bootstrap "
        f"intervals over users ({meta.get('n_resamples')} resamples, seed {meta.get('seed')}); values in %. "
        f"An effect is claimed only where its paired interval excludes zero.\n",
        section_methods(comparison, numbers),
        "## Paired differences (the claims)\n",
        f"Method minus reference on the same {n_users} users, in points, {100 * confidence:g}% paired bootstrap "
        f"interval and two-sided p-value.\n",
        section_claims(comparison, no_profile, numbers),
        "## The paper's numbers beside ours\n", section_paper(run, comparison, no_profile, numbers),
        "## f_Rec's profile sensitivity (shuffle check)\n", section_sensitivity(folder, comparison, numbers),
        "## Preference pairs\n", section_pairs(folder, config, numbers),
        "## DPO's held-out reward margin over training\n", section_margin(folder, numbers),
        "## Exploration efficiency\n", section_efficiency(folder, config, numbers),
        "## Evaluate-stage reference rows\n", section_baselines(folder, numbers),
    ]
    markdown = "\n".join(parts)
    stem = f"{NAME}_k{int(run.get('history.recent', DEFAULT_RECENT))}"
    paths = {"markdown": out / f"{stem}.md", "csv": out / f"{stem}.csv", "plot": out / f"{stem}.png"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    numbers.write(paths["csv"])
    forest_plot(paths["csv"], "paired", "accuracy", paths["plot"],
                f"{dataset}, K = {run.get('history.recent')}, H = {run.get('history.length')}, n = {n_users}: "
                "accuracy, method − reference")
    print(markdown)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command line: one finished run folder in, the results file out."""
    parser = single_run_parser(__doc__ or "", EXPERIMENT, DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        return build(args.run, args.out, args.remark, args.include_debug)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
