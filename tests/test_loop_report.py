"""The loop experiments' results scripts (`lettingo.loop_report`) on real tiny runs of their experiments.

`experiments/positive_control.py` runs on ``python -m lettingo experiment=positive_control debug=tiny
evaluate.reward=stated_mean`` (the experiment's own config and rule, every round, about 45 s on a CPU) and
`experiments/reader_control.py` on a tiny `experiment=reader_control` (the reader f_Rec fitted, M = 2 targets), as
a user runs them; every number they write is checked against the artifacts it was read from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_experiment_scripts import ROOT, line_starting, load_script, row_named, run_script, run_tiny, section
from test_recommender_reader import TINY_READER, p_true

from lettingo.artifacts import ArtifactStore, adapter_artifact, round_artifact
from lettingo.evaluation.methods import NO_DPO
from lettingo.loop_report import build, held_out_table, verdict_line
from lettingo.profiles.oracle import oracle_profile
from lettingo.recommender.cases import target_cases
from lettingo.recommender.reader import ReaderRecommender

SCRIPT = "positive_control"


@pytest.fixture(scope="module")
def control_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path) -> Path:
    """A finished tiny run folder of the E0 experiment (rule reward, dpo / dpo_sft / grpo, two rounds)."""
    # debug=tiny sets the dense p_true reward for the pipeline's tiny runs: the experiment's rule is restored.
    run_dir = run_tiny(tmp_path_factory.mktemp(SCRIPT), tiny_model_cache, f"experiment={SCRIPT}", "debug=tiny",
                       "evaluate.reward=stated_mean")
    assert (run_dir / "results" / "rewards.json").is_file()
    return run_dir


def loop_row(markdown: str, method: str, round_: int) -> list[str]:
    """The cells of the loop table's row of ``method``'s round."""
    table = section(markdown, "The loop, per method and round")
    found = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("|")]
    rows = [cells for cells in found if cells[:2] == [method, str(round_)]]
    assert len(rows) == 1, (method, round_, rows)
    return rows[0]


def csv_number(numbers: pd.DataFrame, part: str, row: str, metric: str) -> float:
    """The one value of the results CSV at (section, row, metric)."""
    found = numbers[(numbers.section == part) & (numbers.row == row) & (numbers.metric == metric)]
    assert len(found) == 1, (part, row, metric)
    return float(found["value"].iloc[0])


def bracket(part: dict) -> str:
    return f"{part['value']:+.3f} [{part['low']:+.3f}, {part['high']:+.3f}]"


def test_positive_control_results_file_from_a_real_run(control_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = run_script(SCRIPT, str(control_run), "--out", str(out), "--include-debug")
    assert sorted(p.name for p in out.iterdir()) == ["positive_control.csv", "positive_control.md",
                                                     "positive_control.png"]  # the forest plot of the claims
    markdown = (out / "positive_control.md").read_text(encoding="utf-8")
    assert markdown in done.stdout
    record = json.loads((control_run / "run_config.json").read_text())
    config = record["config"]
    assert "- command: `lettingo experiment=positive_control debug=tiny evaluate.reward=stated_mean run_dir=" \
        in markdown
    assert f"- git commit: `{record['git_commit']}`" in markdown
    assert f": stage pipeline at commit `{record['git_commit'][:12]}" in line_starting(markdown, "  - ")
    times = json.loads((control_run / "stage_times.json").read_text())
    for stage, seconds in times.items():
        assert row_named(section(markdown, "Wall time"), stage).split("|")[2].strip() == f"{seconds:.1f}"
    assert "`evaluate.reward=stated_mean`" in section(markdown, "The reward")
    assert "> The stated-mean rule reward" in section(markdown, "The reward")
    table = pd.read_csv(out / "positive_control.csv")
    assert list(table.columns) == ["section", "row", "metric", "value", "low", "high", "p_value", "n"]

    def csv_value(part: str, row: str, metric: str) -> float:
        found = table[(table.section == part) & (table.row == row) & (table.metric == metric)]
        assert len(found) == 1, (part, row, metric)
        return float(found["value"].iloc[0])

    # The loop: every method and round, its numbers equal to the artifacts'.
    store = ArtifactStore(control_run, read_only=True)
    generator = config["backbone"]["name"]
    assert config["align"]["rounds"] == 2 and config["evaluate"]["reward"] == "stated_mean"
    for method in config["align"]["methods"]:
        for round_ in (1, 2):
            cells, key = loop_row(markdown, method, round_), f"{method} round {round_}"
            if round_ == 1:
                rewards = store.read_table("rewards")
                rewards = rewards[rewards["backbone"] == generator]
            else:
                rewards = store.read_table(round_artifact("rewards", method, round_))
            assert cells[2] == str(len(rewards)) and cells[3] == str(rewards["user_id"].nunique())
            assert cells[4] == f"{rewards['reward'].mean():+.3f}"
            assert cells[5] == f"{100 * (rewards['reward'] >= 1 - 1e-9).mean():.1f}%"
            assert cells[6] == f"{100 * (rewards['reward'] > 0).mean():.1f}%"
            if method == "grpo":  # the users whose sampled profiles' rewards differ
                groups = int((rewards.groupby("user_id")["reward"].nunique() > 1).sum())
                assert cells[7] == f"{groups} informative groups"
                assert csv_value("rounds", key, "informative_groups") == groups
            else:
                pairs = store.read_table("pairs" if round_ == 1 else round_artifact("pairs", method, round_))
                assert cells[7:9] == [f"{len(pairs)} pairs", str(pairs["user_id"].nunique())]
                assert csv_value("rounds", key, "pairs") == len(pairs)
            meta = store.meta(adapter_artifact(method, round_))
            if meta is None:
                assert cells[9] == "not trained (no pairs or informative groups)"
            else:
                assert cells[9].startswith(f"{meta['pairs_train']} / {meta['users_train']} train")
                assert cells[10].startswith(f"{meta['steps']} steps")
    assert loop_row(markdown, "dpo", 1)[9] != "not trained (no pairs or informative groups)"
    # The held-out table and the verdicts: equal to results/rewards.json.
    held_out = json.loads((control_run / "results" / "rewards.json").read_text())["methods"]
    reward_table = section(markdown, "Held-out reward").split("By the stated-mean rule")[0]
    aligned = [m for m in held_out if m != NO_DPO]
    assert aligned
    for method, row in held_out.items():
        assert bracket(row["vs_reference"]) in row_named(reward_table, method)
        assert csv_value("held_out", method, "vs_reference") == pytest.approx(row["vs_reference"]["value"])
        assert csv_value("held_out", method, "degenerate_share") == pytest.approx(row["degenerate_share"])
    for method in aligned:
        line = line_starting(markdown, f"- {method}: ")
        diff = held_out[method]["vs_reference"]
        expected = ("raised the held-out stated_mean" if diff["low"] > 0 else
                    "lowered the held-out stated_mean" if diff["high"] < 0 else "not shown: interval includes zero")
        assert line.startswith(f"- {method}: {expected}") and f"Δ {bracket(diff)}" in line
        assert f"true − shuffled {bracket(held_out[method]['true_minus_shuffled'])}" in line
    # Examples: three held-out users, the base and every method's last trained round.
    examples = section(markdown, "Example held-out profiles")
    assert examples.count("User ") == 3 and examples.count(f"[{NO_DPO}] reward ") == 3
    predictions = store.read_table("predictions")
    first = predictions[predictions["method"] == NO_DPO].iloc[0]
    assert f"[{NO_DPO}] reward {first['reward']:+.2f}:\n{str(first['text']).strip()}" in examples


def test_verdict_needs_the_paired_interval_above_zero() -> None:
    def row(low: float, value: float, high: float) -> dict:
        diff = {"value": value, "low": low, "high": high, "p_value": 0.01, "n": 200}
        return {"vs_reference": diff, "true_minus_shuffled": diff, "degenerate_share": 0.05}

    assert verdict_line("DPO", row(0.2, 0.5, 0.8), "stated_mean").startswith(
        "- DPO: raised the held-out stated_mean: Δ +0.500 [+0.200, +0.800], interval above zero; p=0.010, n = 200")
    assert "lowered the held-out stated_mean: Δ -0.500 [-0.800, -0.200], interval below zero" in verdict_line(
        "GRPO", row(-0.8, -0.5, -0.2), "stated_mean")
    assert "not shown: interval includes zero; Δ +0.100 [+0.000, +0.200]" in verdict_line(
        "DPO_SFT", row(0.0, 0.1, 0.2), "stated_mean")  # a bound at zero does not exclude it


def test_positive_control_refuses_what_is_not_a_finished_run(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    script = load_script(SCRIPT)
    with pytest.raises(FileNotFoundError, match="run_config.json is missing"):
        build(script.E0, folder, tmp_path / "out")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{SCRIPT}.py"), str(folder)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {folder / 'run_config.json'} is missing: give a finished run folder of "
                                  f"`lettingo experiment={SCRIPT}`")


def test_positive_control_refuses_another_reward(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "rewards.json").write_text(json.dumps({"reward": "p_true", "methods": {}}))
    with pytest.raises(ValueError, match="holds the held-out `p_true` reward, not `stated_mean`"):
        held_out_table(tmp_path, load_script(SCRIPT).E0)


@pytest.fixture(scope="module")
def reader_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path) -> Path:
    """A finished tiny run folder of the E1 experiment (the reader f_Rec fitted, p_true over M = 2, every method)."""
    tiny = [o for o in TINY_READER if not o.startswith("align.methods=")]
    run_dir = run_tiny(tmp_path_factory.mktemp("reader_control"), tiny_model_cache, "experiment=reader_control", *tiny)
    assert (run_dir / "results" / "comparison_targets.json").is_file()
    return run_dir


def test_reader_control_results_file_from_a_real_run(reader_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = run_script("reader_control", str(reader_run), "--out", str(out), "--remark", "a line of ours",
                      "--include-debug")
    markdown = (out / "reader_control.md").read_text(encoding="utf-8")
    assert markdown in done.stdout and markdown.startswith("# E1, the reader control")
    assert "a line of ours" in section(markdown, "Wall time")
    reward = section(markdown, "The reward")
    assert "`evaluate.reward=p_true` over M = 2 targets" in reward and "> The reader control f_Rec (E1)" in reward
    config = json.loads((reader_run / "run_config.json").read_text())["config"]
    store = ArtifactStore(reader_run, read_only=True)
    rewards = store.read_table("rewards")
    rewards = rewards[rewards["backbone"] == config["backbone"]["name"]]
    for method in config["align"]["methods"]:
        cells = loop_row(markdown, method, 1)
        assert cells[4] == f"{rewards['reward'].mean():+.3f}"  # the reader's p_true, not the rule
        assert cells[5] == f"{100 * (rewards['rule_reward'] >= 1 - 1e-9).mean():.1f}%"  # the rule beside it
    held_out = json.loads((reader_run / "results" / "rewards.json").read_text())
    assert held_out["reward"] == "p_true"
    table = section(markdown, "Held-out reward").split("By the stated-mean rule")[0]
    assert "states the mean (rule)" in table
    for method, row in held_out["methods"].items():
        assert bracket(row["reward"]) in row_named(table, method)
        assert f"{100 * row['rule_full_share']:.1f}%" in row_named(table, method)
    numbers = pd.read_csv(out / "reader_control.csv")
    comparisons = section(markdown, "The f_Rec's comparisons on the held-out users")
    assert "held-out users (real target)" in comparisons and "held-out users (all targets)" in comparisons
    assert "### The f_Rec's verdicts on the " in comparisons and "\n#### " in comparisons  # nested one level down
    assert "Endpoints: aligned − base" in markdown  # checked on E2's tiny run, where the random profiles make pairs
    assert set(numbers["section"]) >= {"stage_seconds", "rounds", "held_out"}
    with pytest.raises(ValueError, match="holds the held-out `p_true` reward, not `stated_mean`"):
        held_out_table(reader_run, load_script(SCRIPT).E0)


def test_reader_ceiling_scores_held_out_users_with_oracle_facts_and_without(reader_run: Path) -> None:
    config = json.loads((reader_run / "run_config.json").read_text())["config"]
    store = ArtifactStore(reader_run, read_only=True)
    samples = store.read_table("samples")
    users = samples[samples["split"] == "test"].to_dict("records")
    reader = ReaderRecommender.load(reader_run / "rec_model" / "model.pkl")
    targets, history = config["evaluate"]["targets_per_user"], config["history"]["length"]
    expected = {}
    for name, profile in (("empty", lambda u: ""),
                          ("oracle", lambda u: oracle_profile(u, history, config["prompt"]["facts"]))):
        cases = [c for u in users for c in target_cases(u, profile(u), targets)]
        expected[name] = p_true(reader, cases).reshape(len(users), targets).mean(axis=1)
    line = load_script("reader_ceiling").ceiling_line(reader_run)
    gain = 100 * (expected["oracle"].mean() - expected["empty"].mean())
    assert f"M = {targets}, {len(users)} held-out users;" in line
    assert (f"p_true no profile {expected['empty'].mean():.4f}, oracle facts {expected['oracle'].mean():.4f}; "
            f"oracle - no profile {gain:+.2f} pp [") in line


def test_reader_ceiling_refuses_a_folder_without_a_fitted_f_rec_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "run_config.json").write_text("{}")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "reader_ceiling.py"), str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and not done.stdout
    assert done.stderr.startswith(f"error: {tmp_path / 'samples' / '_meta.json'} is missing: give a finished run "
                                  "folder of `lettingo experiment=<name> stage=train_rec`")


def test_ml1m_loop_results_file_from_a_real_tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path,
                                                     tiny_bert: Path, tmp_path: Path) -> None:
    # E2's own f_Rec, the cross-encoder, on a tiny BERT trained for one epoch (debug=tiny swaps in a zero-shot one).
    # The tiny setup's 4 users per split give no reliable reward: the gate reports instead of stopping the run.
    cross_encoder = ["recommender=cross_encoder", f"recommender.model.model={tiny_bert}",
                     "recommender.model.max_length=64", "recommender.training.max_users=8",
                     "recommender.training.n_targets=2", "recommender.training.batch_size=4",
                     "recommender.training.trainer.max_epochs=1"]
    run_dir = run_tiny(tmp_path_factory.mktemp("ml1m_loop"), tiny_model_cache, "experiment=ml1m_loop", "debug=tiny",
                       *cross_encoder, "evaluate.reward=log_p_gain", "pairs.gate=report")
    done = run_script("ml1m_loop", str(run_dir), "--out", str(tmp_path), "--include-debug")
    markdown = (tmp_path / "ml1m_loop.md").read_text(encoding="utf-8")
    assert markdown in done.stdout and markdown.startswith("# E2, the real loop")
    assert "`evaluate.reward=log_p_gain` over M = 5 targets" in section(markdown, "The reward")
    config = json.loads((run_dir / "run_config.json").read_text())["config"]
    assert config["align"]["rounds"] == 3 and config["align"]["method"]["sft"]["rounds"] == 1
    for round_ in (1, 2, 3):
        assert loop_row(markdown, "dpo", round_)[0] == "dpo"
    held_out = json.loads((run_dir / "results" / "rewards.json").read_text())["methods"]
    assert {"DPO (round 1)", "DPO (round 2)", "DPO"} <= set(held_out)
    endpoints = section(markdown, "Endpoints: aligned − base in the f_Rec's verdicts")
    targets = json.loads((run_dir / "results" / "comparison_targets.json").read_text())
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in endpoints.splitlines() if line.startswith("| ")]
    aligned = [m for m in held_out if m != NO_DPO]
    assert [r[:2] for r in rows[1:]] == [[m, scope] for scope in ("all targets", "real target") for m in aligned]
    gain = targets["paired"][NO_DPO]["DPO"]["p_true"]  # aligned − base, over every user's M targets
    assert next(r for r in rows if r[:2] == ["DPO", "all targets"])[2].startswith(bracket(gain))
    numbers = pd.read_csv(tmp_path / "ml1m_loop.csv")
    assert csv_number(numbers, "endpoints (all targets)", "DPO", "p_true") == pytest.approx(gain["value"])
    comparisons = section(markdown, "The f_Rec's comparisons on the held-out users")
    assert "tabular + oracle facts" in comparisons and "oracle facts" in comparisons
