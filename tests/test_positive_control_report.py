"""experiments/positive_control.py on a real tiny run of `lettingo experiment=positive_control`.

The run folder is made once per module by ``python -m lettingo experiment=positive_control debug=tiny
evaluate.reward=stated_mean`` (the experiment's own config and rule, every round, about 45 s on a CPU); the
script runs on it as a user would, and every number it writes is checked against the artifacts it was read from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_experiment_scripts import ROOT, line_starting, load_script, row_named, run_script, run_tiny, section

from lettingo.artifacts import ArtifactStore, adapter_artifact, round_artifact
from lettingo.evaluation.methods import NO_DPO

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


def bracket(part: dict) -> str:
    return f"{part['value']:+.3f} [{part['low']:+.3f}, {part['high']:+.3f}]"


def test_positive_control_results_file_from_a_real_run(control_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = run_script(SCRIPT, str(control_run), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["positive_control.csv", "positive_control.md"]
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
    assert "`evaluate.reward=stated_mean`" in section(markdown, "The rule")
    assert "> The stated-mean rule reward" in section(markdown, "The rule")
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
    reward_table = section(markdown, "Held-out rule reward").split("Share of held-out profiles")[0]
    aligned = [m for m in held_out if m != NO_DPO]
    assert aligned
    for method, row in held_out.items():
        assert bracket(row["vs_reference"]) in row_named(reward_table, method)
        assert csv_value("held_out", method, "vs_reference") == pytest.approx(row["vs_reference"]["value"])
        assert csv_value("held_out", method, "degenerate_share") == pytest.approx(row["degenerate_share"])
    for method in aligned:
        line = line_starting(markdown, f"- {method}: ")
        diff = held_out[method]["vs_reference"]
        expected = ("raised the held-out rule reward" if diff["low"] > 0 else
                    "lowered the held-out rule reward" if diff["high"] < 0 else "not shown: interval includes zero")
        assert line.startswith(f"- {method}: {expected}") and f"Δ {bracket(diff)}" in line
        assert f"true − shuffled {bracket(held_out[method]['true_minus_shuffled'])}" in line
    # Examples: three held-out users, the base and every method's last trained round.
    examples = section(markdown, "Example held-out profiles")
    assert examples.count("User ") == 3 and examples.count(f"[{NO_DPO}] reward ") == 3
    predictions = store.read_table("predictions")
    first = predictions[predictions["method"] == NO_DPO].iloc[0]
    assert f"[{NO_DPO}] reward {first['reward']:+.2f}:\n{str(first['text']).strip()}" in examples


def test_verdict_needs_the_paired_interval_above_zero() -> None:
    verdict_line = load_script(SCRIPT).verdict_line

    def row(low: float, value: float, high: float) -> dict:
        diff = {"value": value, "low": low, "high": high, "p_value": 0.01, "n": 200}
        return {"vs_reference": diff, "true_minus_shuffled": diff, "degenerate_share": 0.05}

    assert verdict_line("DPO", row(0.2, 0.5, 0.8), "stated_mean").startswith(
        "- DPO: raised the held-out rule reward: Δ +0.500 [+0.200, +0.800], interval above zero; p=0.010, n = 200")
    assert "lowered the held-out rule reward: Δ -0.500 [-0.800, -0.200], interval below zero" in verdict_line(
        "GRPO", row(-0.8, -0.5, -0.2), "stated_mean")
    assert "not shown: interval includes zero; Δ +0.100 [+0.000, +0.200]" in verdict_line(
        "DPO_SFT", row(0.0, 0.1, 0.2), "stated_mean")  # a bound at zero does not exclude it


def test_positive_control_refuses_what_is_not_a_finished_run(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="run_config.json is missing"):
        load_script(SCRIPT).build(folder, tmp_path / "out")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{SCRIPT}.py"), str(folder)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {folder / 'run_config.json'} is missing: give a finished run folder of "
                                  f"`lettingo experiment={SCRIPT}`")


def test_positive_control_refuses_another_reward(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "rewards.json").write_text(json.dumps({"reward": "p_true", "methods": {}}))
    with pytest.raises(ValueError, match="holds the held-out `p_true` reward, not the rule `stated_mean`"):
        load_script(SCRIPT).held_out_table(tmp_path)
