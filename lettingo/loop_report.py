"""The results file of one loop experiment (E0, E1, E2 of issue 21): ONE finished run folder -> markdown + CSV.

Every loop experiment explores, rewards, pairs (or groups), aligns for R on-policy rounds and tests the aligned
generators on held-out users; what differs is the reward. A thin script in `experiments/` names the experiment
and describes its reward (:class:`LoopExperiment`); :func:`build` writes `<out>/<name>.md`: the command, commit
and invocations that made the run, the wall time per stage, the reward, then per method and round the profiles
explored and their reward (with the stated-mean rule's rate beside any reward: does the profile state the user's
mean?), the pairs (GRPO: informative groups) and the users they came from, the training steps and seconds and
the held-out DPO reward margin; round 1's pairs summary and reliability gate; the held-out reward table of every
generator (interval, paired difference against the base, the shuffled guard, true − shuffled, degenerate share),
one verdict per aligned method; the f_Rec's comparisons where an f_Rec judged (real target, and all M targets);
and example held-out profiles. Also `<out>/<name>.csv`: every number of the markdown, one per row (section,
row, metric, value, low, high, p_value, n). Every number is read from the run folder; nothing imports torch.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import lettingo
from lettingo.artifacts import (
    META_FILE,
    PAIRS,
    PREDICTIONS,
    PROFILES,
    RESULTS,
    REWARDS,
    ArtifactStore,
    adapter_artifact,
    round_artifact,
    write_text_atomic,
)
from lettingo.evaluation.bootstrap import Interval, PairedDifference
from lettingo.evaluation.comparison import FILE_STEM as COMPARISON
from lettingo.evaluation.comparison import Comparison, read_comparison
from lettingo.evaluation.methods import NO_DPO
from lettingo.evaluation.reward_table import RULE_COLUMN, RULE_FULL_REWARD, reward_markdown
from lettingo.reports import (
    RUN_CONFIG_FILE,
    Numbers,
    config_value,
    excludes_zero,
    forest_plot,
    format_number,
    invocation_lines,
    markdown_table,
    read_json,
    refuse_debug_run,
    remarks_paragraph,
    require_files,
    run_lines,
    single_run_parser,
    stage_times_table,
)

DEFAULT_OUT = "results"
#: The results section of the held-out reward per generator (and each aligned one minus the base).
HELD_OUT = "held_out"
#: The held-out reward table the test stage writes (results artifact).
REWARD_TABLE_FILE = f"{RESULTS}/rewards.json"
#: The f_Rec's comparison over every test user's M targets, next to the real-target one (`stages.test`).
TARGETS_COMPARISON = f"{COMPARISON}_targets"
#: The stated-mean rule reward (`evaluate.reward`), whose rewards are their own rule column.
RULE = "stated_mean"
MARGIN_KEY = "align/val/rewards/margins"
#: What a comparison scores: every user's M targets, or the real (last) target only.
ALL_TARGETS, REAL_TARGET = "all targets", "real target"
#: The f_Rec metrics whose aligned − base difference the endpoints table shows (primary first).
ENDPOINT_METRICS = ("p_true", "log_loss", "accuracy", "macro_f1")
#: How many held-out users the examples show.
EXAMPLE_USERS = 3
#: `align.method.<m>.examples` of a method that learns from groups of a user's profiles (GRPO), not from pairs.
GROUP_EXAMPLES = "group"
#: The suffix of a results label of a method's earlier round ("DPO (round 1)"); the last round's has none.
EARLIER_ROUND = re.compile(r"\(round \d+\)$")
#: The suffix of a results label of a replica of a method's last round with another training seed ("DPO (seed 2)").
REPLICA = re.compile(r"\(seed \d+\)$")


@dataclass(frozen=True)
class LoopExperiment:
    """What one loop experiment's results file says beyond what every loop run shares.

    ``name`` is the experiment (`lettingo experiment=<name>`) and the results file's stem; ``reward`` the
    `evaluate.reward` its run must hold (another is refused); ``describe_reward`` writes the markdown of the
    "reward" section from the run folder and its config.
    """

    name: str
    title: str
    reward: str
    describe_reward: Callable[[Path, Mapping[str, Any]], str]


# ----------------------------------------------------------------------------------------------- formatting
def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _bracket(interval: Interval | PairedDifference) -> str:
    return f"{_signed(interval.value)} [{_signed(interval.low)}, {_signed(interval.high)}]"


def _share(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.1f}%"


def module_docstring(module: str) -> str:
    """The docstring of ``module`` (a path under the lettingo package, e.g. ``feedback/rule_reward.py``) of this
    checkout's code, quoted as markdown, read without importing it."""
    source = Path(lettingo.__file__).parent / module
    doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    return "\n".join(f"> {line}".rstrip() for line in doc.splitlines())


# ----------------------------------------------------------------------------------------------- run folder
def rule_series(rows: pd.DataFrame, reward: str) -> pd.Series | None:
    """The stated-mean rule's reward of each row: its own column, or the reward itself under the rule; None when
    the rows were scored without it."""
    if RULE_COLUMN in rows:
        return pd.to_numeric(rows[RULE_COLUMN], errors="coerce")
    return pd.to_numeric(rows["reward"], errors="coerce") if reward == RULE else None


def reward_stats(rows: pd.DataFrame, reward: str) -> dict[str, float]:
    """Mean reward of ``rows``, and by the stated-mean rule the share earning its full reward (the user's mean
    stated, no other number) and the share with a positive one (NaN without the rule's column)."""
    rule = rule_series(rows, reward)
    shares = ({"stated_share": float((rule >= RULE_FULL_REWARD - 1e-9).mean()),
               "positive_share": float((rule > 0).mean())} if rule is not None else
              {"stated_share": math.nan, "positive_share": math.nan})
    return {"mean_reward": float(pd.to_numeric(rows["reward"], errors="coerce").mean())} | shares


def informative_groups(rewards: pd.DataFrame) -> int:
    """Users (GRPO groups) whose sampled profiles' rewards are not all equal: the only groups GRPO learns from."""
    return int(rewards.groupby(["user_id", "prompt"])["reward"].nunique().gt(1).sum())


def explored_rewards(store: ArtifactStore, method: str, round_: int, generator: str) -> pd.DataFrame | None:
    """The rewards of the profiles ``method`` explored in ``round_`` (round 1: the generator's rows of the
    evaluate stage's rewards); None when that round did not explore (the previous round trained nothing)."""
    if round_ == 1:
        rewards = store.read_table(REWARDS)
        return rewards[rewards["backbone"].astype(str) == generator]
    name = round_artifact(REWARDS, method, round_)
    return store.read_table(name) if store.meta(name) is not None else None


def round_pairs(store: ArtifactStore, method: str, round_: int) -> pd.DataFrame | None:
    """The preference pairs of ``method``'s round (round 1: the evaluate stage's); None when there are none."""
    name = PAIRS if round_ == 1 else round_artifact(PAIRS, method, round_)
    return store.read_table(name) if store.meta(name) is not None else None


def round_row(store: ArtifactStore, method: str, round_: int, settings: Mapping[str, Any],
              numbers: Numbers) -> list[str]:
    """One row of the loop table: what ``method``'s round explored, paired (a group method: its informative
    groups) and trained on (into ``numbers``). ``settings``: generator, reward and the methods learning by group."""
    key = f"{method} round {round_}"
    rewards = explored_rewards(store, method, round_, settings["generator"])
    if rewards is None:
        return [method, str(round_), "not explored (the previous round trained no adapter)", *[""] * 9]
    stats = reward_stats(rewards, settings["reward"])
    explored = {"profiles": len(rewards), "users": int(rewards["user_id"].nunique())} | stats
    if method in settings["group_methods"]:
        examples = {"informative_groups": informative_groups(rewards)}
        example_cells = [f"{examples['informative_groups']} informative groups", str(examples["informative_groups"])]
    else:
        pairs = round_pairs(store, method, round_)
        examples = {"pairs": 0 if pairs is None else len(pairs),
                    "users_with_pairs": 0 if pairs is None else int(pairs["user_id"].nunique())}
        example_cells = [f"{examples['pairs']} pairs", str(examples["users_with_pairs"])]
    meta = store.meta(adapter_artifact(method, round_))
    training = training_numbers(meta)
    for metric, value in (explored | examples | training).items():
        if not (isinstance(value, float) and math.isnan(value)):
            numbers.add("rounds", key, metric, value)
    return [method, str(round_), str(explored["profiles"]), str(explored["users"]), _signed(stats["mean_reward"]),
            _share(stats["stated_share"]), _share(stats["positive_share"]), *example_cells,
            *training_cells(meta, training)]


def replica_row(store: ArtifactStore, method: str, round_: int, seed: int, numbers: Numbers) -> list[str]:
    """The loop-table row of a replica of ``method``'s last round with training seed ``seed``: the same examples
    as the round's first seed, its own training (into ``numbers``)."""
    meta = store.meta(adapter_artifact(method, round_, seed))
    training = training_numbers(meta)
    for metric, value in training.items():
        numbers.add("rounds", f"{method} round {round_} seed {seed}", metric, value)
    return [f"{method} (seed {seed})", str(round_), "the round's examples, another training seed", *[""] * 6,
            *training_cells(meta, training)]


def training_numbers(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """What an adapter's record says about its training: examples and users per side, steps, seconds and the
    last held-out reward margin (DPO methods); {} when the round trained no adapter."""
    if meta is None:
        return {}
    found = {k: meta[k] for k in ("pairs_train", "users_train", "pairs_val", "users_val", "steps", "seconds")
             if k in meta}
    margins = [row[MARGIN_KEY] for row in meta.get("val_history") or [] if MARGIN_KEY in row]
    return found | ({"val_reward_margin": float(margins[-1])} if margins else {})


def training_cells(meta: Mapping[str, Any] | None, training: Mapping[str, Any]) -> list[str]:
    """The training columns of a loop-table row."""
    if meta is None:
        return ["not trained (no pairs or informative groups)", "", ""]
    examples = (f"{training.get('pairs_train')} / {training.get('users_train')} train, "
                f"{training.get('pairs_val')} / {training.get('users_val')} held out")
    margin = training.get("val_reward_margin")
    return [examples, f"{training.get('steps')} steps, {format_number(training.get('seconds'))} s",
            "" if margin is None else f"{margin:+.4f}"]


def section_rounds(store: ArtifactStore, config: Mapping[str, Any], numbers: Numbers) -> str:
    """The loop per method and round: explored profiles and their reward, examples, training."""
    methods = [str(m) for m in config_value(config, "align.methods") or []]
    settings = {"generator": str(config_value(config, "backbone.name")),
                "reward": str(config_value(config, "evaluate.reward")),
                "group_methods": {m for m in methods
                                  if config_value(config, f"align.method.{m}.examples") == GROUP_EXAMPLES}}
    rows = []
    for method in methods:
        rounds = int(config_value(config, f"align.method.{method}.rounds") or config_value(config, "align.rounds", 1))
        rows += [round_row(store, method, round_, settings, numbers) for round_ in range(1, rounds + 1)]
        seeds = int(config_value(config, f"align.method.{method}.seeds") or 1)
        rows += [replica_row(store, method, rounds, seed, numbers) for seed in range(2, seeds + 1)]
    header = ["method", "round", "profiles explored", "users", f"mean {settings['reward']}", "stated exactly (rule)",
              "rule > 0", "examples", "from users", "trained on (examples / users)", "training",
              "held-out reward margin"]
    return (f"Round 1 of every method trains on the generator's ({settings['generator']}) profiles the explore stage "
            f"wrote (the same for every method); round r >= 2 explores the same users with round r−1's adapter. "
            f"\"Stated exactly (rule)\": the profile earns the stated-mean rule's full reward (it states the user's "
            f"mean and no other number); \"rule > 0\": it states the mean, extra numbers or not (blank where the "
            f"rewards were scored without the rule). Examples: preference pairs, or for a group method (GRPO) the "
            f"groups (users) whose sampled profiles' rewards differ. Held-out reward margin: DPO's chosen minus "
            f"rejected implicit reward on the held-out users' pairs at the end of training.\n\n"
            + markdown_table(header, rows))


def section_gate(store: ArtifactStore, numbers: Numbers) -> str:
    """The evaluate stage's pairs summary and reliability gate (round 1), as recorded in the pairs' meta."""
    meta = store.meta(PAIRS) or {}
    summary = dict(meta.get("summary") or {})
    gate = meta.get("gate") or summary.pop("gate", None)
    measured = {k: v for k, v in summary.items() if isinstance(v, int | float) and not math.isnan(v)}
    for key, value in measured.items():
        numbers.add("pairs_round1", "summary", key, value)
    lines = [f"- {key}: {format_number(value, 3)}" for key, value in measured.items()]
    lines.append(f"- gate: {gate}" if gate else "- gate: not recorded")
    return "Round 1's pairs artifact, as the evaluate stage recorded it:\n\n" + "\n".join(lines) + "\n"


def held_out_table(folder: Path, experiment: LoopExperiment) -> dict[str, dict[str, Any]]:
    """Method -> its held-out reward row from ``results/rewards.json``; raises ValueError when it holds another
    reward than ``experiment``'s."""
    found = read_json(folder / REWARD_TABLE_FILE)
    if found.get("reward") != experiment.reward:
        raise ValueError(f"{folder / REWARD_TABLE_FILE} holds the held-out `{found.get('reward')}` reward, not "
                         f"`{experiment.reward}`: give a finished run folder of `lettingo experiment="
                         f"{experiment.name}`")
    return found["methods"]


def verdict_line(method: str, row: Mapping[str, Any], reward: str) -> str:
    """One aligned method's verdict: a rise is claimed only where the paired interval against the base is above 0."""
    diff = PairedDifference(**row["vs_reference"])
    guard = PairedDifference(**row["true_minus_shuffled"])
    if diff.low > 0:
        claim = f"raised the held-out {reward}: Δ {_bracket(diff)}, interval above zero"
    elif excludes_zero(diff):
        claim = f"lowered the held-out {reward}: Δ {_bracket(diff)}, interval below zero"
    else:
        claim = f"not shown: interval includes zero; Δ {_bracket(diff)}"
    return (f"- {method}: {claim}; p={diff.p_value:.3f}, n = {diff.n}; true − shuffled {_bracket(guard)}; "
            f"degenerate {100 * row['degenerate_share']:.1f}%")


def section_held_out(table: Mapping[str, Mapping[str, Any]], predictions: pd.DataFrame,
                     config: Mapping[str, Any], numbers: Numbers) -> str:
    """The held-out reward of every generator, the rule's shares, and one verdict per aligned method."""
    reward = str(config_value(config, "evaluate.reward"))
    shares = []
    for method, row in table.items():
        stats = reward_stats(predictions.loc[predictions["method"] == method], reward)
        for part in ("reward", "shuffled"):
            numbers.interval(HELD_OUT, method, part, Interval(**row[part]))
        for part in ("vs_reference", "true_minus_shuffled"):
            numbers.difference(HELD_OUT, method, part, PairedDifference(**row[part]))
        numbers.add(HELD_OUT, method, "degenerate_share", row["degenerate_share"], n=row["users"])
        tokens = float(pd.to_numeric(predictions.loc[predictions["method"] == method, "completion_tokens"]).mean())
        for metric, value in (("stated_share", stats["stated_share"]), ("positive_share", stats["positive_share"]),
                              ("mean_tokens", tokens)):
            if not math.isnan(value):
                numbers.add(HELD_OUT, method, metric, value)
        shares.append([method, _share(stats["stated_share"]), _share(stats["positive_share"]), f"{tokens:.1f}"])
    verdicts = [verdict_line(m, row, reward) for m, row in table.items() if m != NO_DPO]
    users = next(iter(table.values()))["users"]
    confidence = float(config_value(config, "bootstrap.confidence", 0.95))
    targets = int(config_value(config, "evaluate.targets_per_user", 1))
    over = f" (each the mean over the user's M = {targets} targets)" if targets > 1 else ""
    return (f"Every generator writes one greedy profile per held-out user (n = {users}); its reward `{reward}`{over} "
            f"is scored for the user it was written for and, as the shuffled guard, for another user. Mean reward "
            f"with {100 * confidence:g}% percentile bootstrap intervals over users "
            f"({config_value(config, 'bootstrap.n_resamples')} resamples); Δ: paired difference against {NO_DPO} "
            f"(the base generator). A rise is claimed only where its paired interval is above zero; a rise that "
            f"survives shuffling (true − shuffled near zero) would be hacking, not the user's fact.\n\n"
            + reward_markdown(table, reward, NO_DPO)
            + "\nBy the stated-mean rule (E0's), the share of held-out profiles stating the user's mean exactly "
              "(full reward) and stating it at all (rule > 0), and the profiles' mean length:\n\n"
            + markdown_table(["method", "stated exactly", "rule > 0", "mean tokens"], shares)
            + "\nVerdicts:\n\n" + "\n".join(verdicts) + "\n")


def comparisons(folder: Path) -> dict[str, Comparison]:
    """The f_Rec's comparisons the test stage wrote, by what they score ("all targets" first where written, then
    "real target"); empty when no f_Rec judged (a rule reward)."""
    found = {}
    for stem, scope in ((TARGETS_COMPARISON, ALL_TARGETS), (COMPARISON, REAL_TARGET)):
        path = folder / RESULTS / f"{stem}.json"
        if path.is_file():
            found[scope] = read_comparison(path)
    return found


def section_endpoints(found: Mapping[str, Comparison], aligned: Sequence[str], numbers: Numbers) -> str:
    """Each aligned method's paired difference from the base generator (no DPO) in the f_Rec's verdicts: mean
    p_true and log-loss (the primary endpoints), accuracy and macro-F1, over all M targets and on the real target."""
    rows = []
    for scope, comparison in found.items():
        against_base = comparison.paired.get(NO_DPO, {})
        for method in (m for m in aligned if m in against_base):
            cells = [method, scope]
            for metric in ENDPOINT_METRICS:
                diff = against_base[method].get(metric)
                if diff is not None:
                    numbers.difference(f"endpoints ({scope})", method, metric, diff)
                cells.append("" if diff is None else _bracket(diff) + (" *" if excludes_zero(diff) else ""))
            rows.append(cells)
    if not rows:
        return "_The test stage wrote no paired differences against no DPO._\n"
    return ("Paired difference, aligned − base generator (no DPO), with its interval; * where the interval excludes "
            "zero (the only effects claimed). Log-loss falls when the f_Rec gets more from the profile; the others "
            "rise. p_true and log-loss in fractions and nats, accuracy and macro-F1 in fractions.\n\n"
            + markdown_table(["method", "scored on", *(f"Δ {m}" for m in ENDPOINT_METRICS)], rows))


def demoted(markdown: str) -> str:
    """``markdown`` with every heading one level lower (a comparison's ``##`` title nests under a report section)."""
    return "\n".join(f"#{line}" if line.startswith("#") else line for line in markdown.splitlines()) + "\n"


def section_comparisons(found: Mapping[str, Comparison]) -> str:
    """The f_Rec's comparisons of the test stage, as it printed them (headings nested under this section)."""
    return "\n".join(demoted(comparison.markdown(f"The f_Rec's verdicts on the {len(set(comparison.users))} "
                                                  f"held-out users ({scope})")) for scope, comparison in found.items())


def example_users(predictions: pd.DataFrame, methods: Sequence[str]) -> list[Any]:
    """The first :data:`EXAMPLE_USERS` held-out users (in the predictions' order) every one of ``methods`` wrote for."""
    present = predictions[predictions["method"].isin(methods)]
    counts = present.groupby("user_id", sort=False)["method"].nunique()
    return list(counts[counts == len(methods)].index[:EXAMPLE_USERS])


def section_examples(predictions: pd.DataFrame, table: Mapping[str, Any]) -> str:
    """Held-out profiles of a few users: the base's and each method's last trained round's, with their rewards."""
    last_round = {EARLIER_ROUND.sub("", m).strip(): m for m in table  # table order: rounds ascend
                  if m != NO_DPO and not REPLICA.search(m)}
    methods = [NO_DPO, *last_round.values()]
    blocks = []
    for user in example_users(predictions, methods):
        rows = predictions[predictions["user_id"] == user].set_index("method")
        entries = [f"[{m}] reward {float(rows.loc[m, 'reward']):+.2f}:\n{str(rows.loc[m, 'text']).strip()}"
                   for m in methods]
        blocks.append(f"User {user}:\n\n```text\n" + "\n\n".join(entries) + "\n```\n")
    return "\n".join(blocks) if blocks else "_No held-out user has a profile from every method._\n"


def section_run(folder: Path, record: Mapping[str, Any], experiment: LoopExperiment) -> str:
    """Where the results come from: folder, command, commit, the run's settings and its invocations."""
    config = record.get("config", {})

    def get(dotted: str) -> Any:
        return config_value(config, dotted)

    settings = (f"- {get('dataset.name')}, H = {get('history.length')} older items; generator {get('backbone.name')}, "
                f"N = {get('sampling.n')} profiles per user at T = {get('sampling.temperature')}, up to "
                f"{get('sampling.max_users')} users; reward `{get('evaluate.reward')}` over M = "
                f"{get('evaluate.targets_per_user')} target(s); pairs `{get('pairs.rule')}` (min margin "
                f"{get('pairs.min_margin')}, top-k {get('pairs.top_k')}, gate {get('pairs.gate')}); methods "
                f"{', '.join(map(str, get('align.methods') or []))}, {get('align.rounds')} round(s) of "
                f"{get('align.epochs')} epoch(s); held-out users up to {get('test.max_users')}; seed {get('seed')}")
    lines = [*run_lines(folder, record, [f"experiment={experiment.name}"]), settings, *invocation_lines(folder)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- build
def build(experiment: LoopExperiment, folder: str | Path, out: str | Path = DEFAULT_OUT,
          remarks: Sequence[str] = (), include_debug: bool = False) -> dict[str, Path]:
    """Write ``<experiment.name>.md`` and ``.csv`` into ``out`` from the finished run folder ``folder``.

    ``remarks`` (e.g. a pause or another job that counts in a stage's time) are printed under the stage times;
    a debug run (``debug=...``) is refused unless ``include_debug``.
    """
    folder, out = Path(folder), Path(out)
    require_files(folder, (RUN_CONFIG_FILE,), experiment.name)
    record = read_json(folder / RUN_CONFIG_FILE)
    config = record.get("config", {})
    refuse_debug_run(folder, config, include_debug)
    require_files(folder, (REWARD_TABLE_FILE, f"{REWARDS}/{META_FILE}", f"{PREDICTIONS}/{META_FILE}",
                           f"{PROFILES}/{META_FILE}"), experiment.name)
    table = held_out_table(folder, experiment)
    store = ArtifactStore(folder, read_only=True)
    predictions = store.read_table(PREDICTIONS)
    numbers = Numbers()
    found = comparisons(folder)
    aligned = [m for m in table if m != NO_DPO]
    parts = [
        f"# {experiment.title} (experiment {experiment.name})\n",
        section_run(folder, record, experiment),
        "## Wall time per stage\n", stage_times_table(folder, numbers) + remarks_paragraph(remarks),
        "## The reward\n", experiment.describe_reward(folder, config),
        "## The loop, per method and round\n", section_rounds(store, config, numbers),
        "## Round 1's pairs and gate\n", section_gate(store, numbers),
        "## Held-out reward\n", section_held_out(table, predictions, config, numbers),
        *(["## Endpoints: aligned − base in the f_Rec's verdicts\n", section_endpoints(found, aligned, numbers),
           "## The f_Rec's comparisons on the held-out users\n", section_comparisons(found)] if found else []),
        "## Example held-out profiles\n", section_examples(predictions, table),
    ]
    markdown = "\n".join(parts)
    paths = {"markdown": out / f"{experiment.name}.md", "csv": out / f"{experiment.name}.csv"}
    write_text_atomic(paths["markdown"], markdown)
    numbers.write(paths["csv"])
    if aligned:  # the claims: each aligned generator's held-out reward minus the base generator's
        paths["plot"] = forest_plot(
            paths["csv"], HELD_OUT, "vs_reference", out / f"{experiment.name}.png",
            f"{experiment.title}: held-out {config_value(config, 'evaluate.reward')}, aligned − base generator "
            f"({config_value(config, 'dataset.name')}, H = {config_value(config, 'history.length')}, K = "
            f"{config_value(config, 'history.recent')}, n = {predictions['user_id'].nunique()} users)",
            reference=NO_DPO, unit="reward", scale=1.0)
    print(markdown)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return paths


def main(experiment: LoopExperiment, description: str, argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command line of a loop experiment's results script: one finished run folder in, the results file out."""
    parser = single_run_parser(description, experiment.name, DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        return build(experiment, args.run, args.out, args.remark, args.include_debug)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
