"""E0, the positive control of the loop (`lettingo experiment=positive_control`): ONE finished run folder -> results.

The reward is a strict rule (`evaluate.reward=stated_mean`: does the profile state the user's mean rating?),
so the loop's answer is known: every aligned method must raise it on held-out users. Writes
`<out>/positive_control.md`: the command, commit and invocations that made the run, the wall time per
stage, the rule, then per method and on-policy round the profiles explored and their rule reward (mean,
share stating the mean exactly, share with a positive reward), the pairs (GRPO: informative groups) and the
users they came from, the training steps and seconds and the held-out DPO reward margin; then the held-out
reward table of every generator (interval, paired difference against the base with its p-value, the rule
scored against another user's mean as the shuffled guard, true − shuffled, degenerate share), one verdict
line per aligned method, and example held-out profiles of the base and of each method's last round. Also
`<out>/positive_control.csv`: every number of the markdown, one per row (section, row, metric, value,
low, high, p_value, n). Every number is read from the run folder.

Run: python experiments/positive_control.py outputs/positive_control/latest [--out results]
"""

from __future__ import annotations

import argparse
import ast
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import lettingo
from lettingo.artifacts import (
    META_FILE,
    PAIRS,
    PREDICTIONS,
    PROFILES,
    REWARDS,
    ArtifactStore,
    adapter_artifact,
    round_artifact,
    write_text_atomic,
)
from lettingo.evaluation.bootstrap import Interval, PairedDifference
from lettingo.evaluation.methods import NO_DPO
from lettingo.evaluation.reward_table import reward_markdown
from lettingo.reports import (
    RUN_CONFIG_FILE,
    Numbers,
    config_value,
    excludes_zero,
    format_number,
    invocation_lines,
    markdown_table,
    read_json,
    remarks_paragraph,
    require_files,
    run_lines,
    stage_times_table,
)

NAME = "positive_control"
EXPERIMENT = "positive_control"
DEFAULT_OUT = "results"
#: The held-out reward table the test stage writes (results artifact).
REWARD_TABLE_FILE = "results/rewards.json"
#: The rule reward this control is built on, and the module whose docstring states it.
RULE = "stated_mean"
RULE_SOURCE = Path(lettingo.__file__).parent / "feedback" / "rule_reward.py"
#: A profile states the mean exactly (and no extra number) when its rule reward is the full reward.
FULL_REWARD = 1.0 - 1e-9
MARGIN_KEY = "align/val/rewards/margins"
#: How many held-out users the examples show.
EXAMPLE_USERS = 3
#: `align.method.<m>.examples` of a method that learns from groups of a user's profiles (GRPO), not from pairs.
GROUP_EXAMPLES = "group"
#: The suffix of a results label of a method's earlier round ("DPO (round 1)"); the last round's has none.
EARLIER_ROUND = re.compile(r"\(round \d+\)$")


# ----------------------------------------------------------------------------------------------- formatting
def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _bracket(interval: Interval | PairedDifference) -> str:
    return f"{_signed(interval.value)} [{_signed(interval.low)}, {_signed(interval.high)}]"


def _share(value: float) -> str:
    return f"{100 * value:.1f}%"


# ----------------------------------------------------------------------------------------------- run folder
def rule_description() -> str:
    """The rule in the words of its module's docstring (this checkout's code), quoted."""
    doc = ast.get_docstring(ast.parse(RULE_SOURCE.read_text(encoding="utf-8"))) or ""
    return "\n".join(f"> {line}".rstrip() for line in doc.splitlines())


def rule_stats(rewards: pd.Series) -> dict[str, float]:
    """Mean rule reward of ``rewards``, the share at the full reward (the mean stated exactly, no extra number)
    and the share with a positive reward."""
    values = pd.to_numeric(rewards, errors="coerce")
    return {"mean_reward": float(values.mean()), "stated_share": float((values >= FULL_REWARD).mean()),
            "positive_share": float((values > 0).mean())}


def informative_groups(rewards: pd.DataFrame) -> int:
    """Users (GRPO groups) whose sampled profiles' rewards are not all equal: the only groups GRPO learns from."""
    return int(rewards.groupby(["user_id", "prompt"])["reward"].nunique().gt(1).sum())


def explored_rewards(store: ArtifactStore, method: str, round_: int, generator: str) -> pd.DataFrame | None:
    """The rule rewards of the profiles ``method`` explored in ``round_`` (round 1: the generator's rows of the
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


def round_row(store: ArtifactStore, method: str, round_: int, generator: str, group: bool,
              numbers: Numbers) -> list[str]:
    """One row of the loop table: what ``method``'s round explored, paired (``group``: its informative groups)
    and trained on (into ``numbers``)."""
    key = f"{method} round {round_}"
    rewards = explored_rewards(store, method, round_, generator)
    if rewards is None:
        return [method, str(round_), "not explored (the previous round trained no adapter)", *[""] * 9]
    stats = rule_stats(rewards["reward"])
    explored = {"profiles": len(rewards), "users": int(rewards["user_id"].nunique())} | stats
    if group:
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
        numbers.add("rounds", key, metric, value)
    return [method, str(round_), str(explored["profiles"]), str(explored["users"]), _signed(stats["mean_reward"]),
            _share(stats["stated_share"]), _share(stats["positive_share"]), *example_cells,
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
    """The loop per method and round: explored profiles and their rule reward, examples, training."""
    generator = str(config_value(config, "backbone.name"))
    rounds = int(config_value(config, "align.rounds", 1))
    rows = [round_row(store, str(method), round_, generator,
                      config_value(config, f"align.method.{method}.examples") == GROUP_EXAMPLES, numbers)
            for method in config_value(config, "align.methods") or [] for round_ in range(1, rounds + 1)]
    header = ["method", "round", "profiles explored", "users", "mean rule reward", "stated exactly",
              "reward > 0", "examples", "from users", "trained on (examples / users)", "training",
              "held-out reward margin"]
    return (f"Round 1 of every method trains on the generator's ({generator}) profiles the explore stage wrote "
            f"(the same for every method); round r >= 2 explores the same users with round r−1's adapter. "
            f"\"Stated exactly\": the profile earns the full rule reward (it states the user's mean and no other "
            f"number); \"reward > 0\": it states the mean, extra numbers or not. Examples: preference pairs, or "
            f"for GRPO the groups (users) whose sampled profiles' rewards differ. Held-out reward margin: "
            f"DPO's chosen minus rejected implicit reward on the held-out users' pairs at the end of training.\n\n"
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


def held_out_table(folder: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """(the reward name, method -> its held-out reward row) from ``results/rewards.json``; raises ValueError when
    it holds another reward than the rule."""
    found = read_json(folder / REWARD_TABLE_FILE)
    if found.get("reward") != RULE:
        raise ValueError(f"{folder / REWARD_TABLE_FILE} holds the held-out `{found.get('reward')}` reward, not the "
                         f"rule `{RULE}`: give a finished run folder of `lettingo experiment={EXPERIMENT}`")
    return found["reward"], found["methods"]


def verdict_line(method: str, row: Mapping[str, Any], reward: str) -> str:
    """One aligned method's verdict: a rise is claimed only where the paired interval against the base is above 0."""
    diff = PairedDifference(**row["vs_reference"])
    guard = PairedDifference(**row["true_minus_shuffled"])
    if diff.low > 0:
        claim = f"raised the held-out rule reward: Δ {_bracket(diff)}, interval above zero"
    elif excludes_zero(diff):
        claim = f"lowered the held-out rule reward: Δ {_bracket(diff)}, interval below zero"
    else:
        claim = f"not shown: interval includes zero; Δ {_bracket(diff)}"
    return (f"- {method}: {claim}; p={diff.p_value:.3f}, n = {diff.n}; true − shuffled {_bracket(guard)}; "
            f"degenerate {_share(row['degenerate_share'])}")


def section_held_out(reward: str, table: Mapping[str, Mapping[str, Any]], predictions: pd.DataFrame,
                     config: Mapping[str, Any], numbers: Numbers) -> str:
    """The held-out rule reward of every generator, its rule shares, and one verdict per aligned method."""
    shares = []
    for method, row in table.items():
        stats = rule_stats(predictions.loc[predictions["method"] == method, "reward"])
        for part in ("reward", "shuffled"):
            numbers.interval("held_out", method, part, Interval(**row[part]))
        for part in ("vs_reference", "true_minus_shuffled"):
            numbers.difference("held_out", method, part, PairedDifference(**row[part]))
        numbers.add("held_out", method, "degenerate_share", row["degenerate_share"], n=row["users"])
        for metric in ("stated_share", "positive_share"):
            numbers.add("held_out", method, metric, stats[metric])
        shares.append([method, _share(stats["stated_share"]), _share(stats["positive_share"])])
    verdicts = [verdict_line(m, row, reward) for m, row in table.items() if m != NO_DPO]
    users = next(iter(table.values()))["users"]
    confidence = float(config_value(config, "bootstrap.confidence", 0.95))
    return (f"Every generator writes one greedy profile per held-out user (n = {users}); the rule scores it "
            f"against the user's own mean and, as the shuffled guard, against another user's. Mean reward with "
            f"{100 * confidence:g}% percentile bootstrap intervals over users "
            f"({config_value(config, 'bootstrap.n_resamples')} resamples); Δ: paired difference against {NO_DPO} "
            f"(the base generator). A rise is claimed only where its paired interval is above zero; a rise that "
            f"survives shuffling (true − shuffled near zero) would be hacking, not the user's fact.\n\n"
            + reward_markdown(table, reward, NO_DPO)
            + "\nShare of held-out profiles stating the mean exactly (full reward) and with a positive reward:\n\n"
            + markdown_table(["method", "stated exactly", "reward > 0"], shares)
            + "\nVerdicts:\n\n" + "\n".join(verdicts) + "\n")


def example_users(predictions: pd.DataFrame, methods: Sequence[str]) -> list[Any]:
    """The first :data:`EXAMPLE_USERS` held-out users (in the predictions' order) every one of ``methods`` wrote for."""
    present = predictions[predictions["method"].isin(methods)]
    counts = present.groupby("user_id", sort=False)["method"].nunique()
    return list(counts[counts == len(methods)].index[:EXAMPLE_USERS])


def section_examples(predictions: pd.DataFrame, table: Mapping[str, Any]) -> str:
    """Held-out profiles of a few users: the base's and each method's last trained round's, with their rule rewards."""
    last_round = {EARLIER_ROUND.sub("", m).strip(): m for m in table if m != NO_DPO}  # table order: rounds ascend
    methods = [NO_DPO, *last_round.values()]
    blocks = []
    for user in example_users(predictions, methods):
        rows = predictions[predictions["user_id"] == user].set_index("method")
        entries = [f"[{m}] reward {float(rows.loc[m, 'reward']):+.2f}:\n{str(rows.loc[m, 'text']).strip()}"
                   for m in methods]
        blocks.append(f"User {user}:\n\n```text\n" + "\n\n".join(entries) + "\n```\n")
    return "\n".join(blocks) if blocks else "_No held-out user has a profile from every method._\n"


def section_run(folder: Path, record: Mapping[str, Any]) -> str:
    """Where the results come from: folder, command, commit, the run's settings and its invocations."""
    config = record.get("config", {})

    def get(dotted: str) -> Any:
        return config_value(config, dotted)

    settings = (f"- {get('dataset.name')}, H = {get('history.length')} older items; generator {get('backbone.name')}, "
                f"N = {get('sampling.n')} profiles per user at T = {get('sampling.temperature')}, up to "
                f"{get('sampling.max_users')} users; reward `{get('evaluate.reward')}`; pairs `{get('pairs.rule')}` "
                f"(min margin {get('pairs.min_margin')}, top-k {get('pairs.top_k')}); methods "
                f"{', '.join(map(str, get('align.methods') or []))}, {get('align.rounds')} round(s) of "
                f"{get('align.epochs')} epoch(s); held-out users up to {get('test.max_users')}; seed {get('seed')}")
    lines = [*run_lines(folder, record, [f"experiment={EXPERIMENT}"]), settings, *invocation_lines(folder)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- build
def build(folder: str | Path, out: str | Path = DEFAULT_OUT, remarks: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``positive_control.md`` and ``.csv`` into ``out`` from the finished run folder ``folder``.

    ``remarks`` (e.g. a pause or another job that counts in a stage's time) are printed under the stage times.
    """
    folder, out = Path(folder), Path(out)
    require_files(folder, (RUN_CONFIG_FILE, REWARD_TABLE_FILE, f"{REWARDS}/{META_FILE}",
                           f"{PREDICTIONS}/{META_FILE}", f"{PROFILES}/{META_FILE}"), EXPERIMENT)
    record = read_json(folder / RUN_CONFIG_FILE)
    config = record.get("config", {})
    reward, table = held_out_table(folder)
    store = ArtifactStore(folder, read_only=True)
    predictions = store.read_table(PREDICTIONS)
    numbers = Numbers()
    parts = [
        f"# E0, the positive control: the loop on the rule reward (experiment {EXPERIMENT})\n",
        section_run(folder, record),
        "## Wall time per stage\n", stage_times_table(folder, numbers) + remarks_paragraph(remarks),
        "## The rule\n",
        f"`evaluate.reward={RULE}`, as `{RULE_SOURCE.relative_to(RULE_SOURCE.parents[2])}` of this checkout "
        f"states it:\n\n{rule_description()}\n",
        "## The loop, per method and round\n", section_rounds(store, config, numbers),
        "## Round 1's pairs and gate\n", section_gate(store, numbers),
        "## Held-out rule reward\n", section_held_out(reward, table, predictions, config, numbers),
        "## Example held-out profiles\n", section_examples(predictions, table),
    ]
    markdown = "\n".join(parts)
    paths = {"markdown": out / f"{NAME}.md", "csv": out / f"{NAME}.csv"}
    write_text_atomic(paths["markdown"], markdown)
    numbers.write(paths["csv"])
    print(markdown)
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command line: one finished run folder in, the results file out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help=f"one finished run folder of `lettingo experiment={EXPERIMENT}`")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder of the results file (default: {DEFAULT_OUT})")
    parser.add_argument("--remark", action="append", default=[],
                        help="a line printed under the stage times, as yours (repeatable), e.g. a pause in a stage")
    args = parser.parse_args(argv)
    try:
        return build(args.run, args.out, args.remark)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
