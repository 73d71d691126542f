"""The reliability gate and `pairs.min_margin: auto` on planted rewards: split-half reliability by hand,
the margin `auto` picks where the replication share by margin is known, the gate stopping pure noise,
and the stages' `write_pairs` (lettingo/stages/judging.py) under the real config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lettingo.artifacts import PAIRS, ArtifactStore
from lettingo.feedback.pairs import build_pairs
from lettingo.feedback.reliability import (
    NoLearnableSignal,
    check_gate,
    gate_of,
    half_rewards,
    pair_margin,
    reliability_gate,
    split_half_reliability,
)
from lettingo.schemas import ConfigError, config_object, validate_config
from lettingo.stages import BY_NAME, declarations
from lettingo.stages.base import StageContext
from lettingo.stages.judging import write_pairs
from lettingo.tracking import NullTracker


def rewards_of(target_rewards: dict[str, list[list[float]]]) -> pd.DataFrame:
    """One row per (user, profile) with its per-target rewards and their mean as the reward."""
    return pd.DataFrame([
        {"user_id": user, "prompt_name": "lettingo", "history_len": 30, "backbone": "b", "sample_idx": j,
         "prompt": f"prompt of {user}", "text": f"{user}-p{j}", "label": "like", "correct": True, "p_true": 0.5,
         "target_rewards": targets, "reward": float(np.mean(targets))}
        for user, profiles in target_rewards.items() for j, targets in enumerate(profiles)
    ])


def planted(users: int, quality_sd: float, seed: int, n: int = 8, m: int = 8) -> pd.DataFrame:
    """Per-target reward = the profile's true quality q ~ N(0, quality_sd) + target noise ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0.0, quality_sd, (users, n, 1))
    targets = quality + rng.normal(0.0, 1.0, (users, n, m))
    return rewards_of({f"u{u}": targets[u].tolist() for u in range(users)})


def test_split_half_reliability_equals_a_hand_computation() -> None:
    # M = 2: half A is target 1, half B target 2. Centred within users:
    # u1: a (1, 3) -> (-1, 1), b (2, 2) -> (0, 0); u2: a (0, 2, 4) -> (-2, 0, 2), b (1, 4, 4) -> (-2, 1, 1).
    rewards = rewards_of({"u1": [[1, 2], [3, 2]], "u2": [[0, 1], [2, 4], [4, 4]]})
    r, corrected = split_half_reliability(rewards)
    assert r == pytest.approx(6 / math.sqrt(10 * 6))
    assert corrected == pytest.approx(2 * r / (1 + r))


def test_halves_of_an_odd_number_of_targets() -> None:
    a, b = half_rewards(rewards_of({"u": [[1, 2, 6]]}))
    assert (a.tolist(), b.tolist()) == ([1.0], [4.0])


def never_replicating_and_replicating_users(noise: int, signal: int) -> pd.DataFrame:
    """``noise`` users whose two equal profiles get opposite target noise: best on half A by a gap of 0.01 x i,
    worse on half B (never replicates, no gap in the mean); ``signal`` users with a quality gap of ~0.8 on
    every target (always replicates)."""
    users = {f"n{i}": [[0.5 + i / 200, 0.5 - i / 200], [0.5 - i / 200, 0.5 + i / 200]] for i in range(1, noise + 1)}
    users |= {f"s{i}": [[0.9 + i / 1000] * 2, [0.1] * 2] for i in range(signal)}
    return rewards_of(users)


def test_auto_margin_is_the_smallest_on_the_grid_where_enough_pairs_replicate() -> None:
    # 52 of 100 best-vs-worst pairs replicate: above the 10/20/30% quantile of the half-A gaps 52/90, 52/80,
    # 52/70 = 74% of them do, so 70% is first reached at the 30% quantile.
    rewards = never_replicating_and_replicating_users(noise=48, signal=52)
    gate = reliability_gate(rewards)
    gaps = np.array([i / 100 for i in range(1, 49)] + [0.8 + i / 1000 for i in range(52)])
    expected = float(np.quantile(gaps, 0.3))
    assert gate.margins[:4] == pytest.approx([0.0, *np.quantile(gaps, [0.1, 0.2, 0.3])])
    assert gate.replication[:4] == pytest.approx([0.52, 52 / 90, 52 / 80, 52 / 70])
    assert pair_margin("auto", gate, 0.7) == pytest.approx(expected)
    assert pair_margin("auto", gate, 0.6) == pytest.approx(float(np.quantile(gaps, 0.2)))
    assert pair_margin(0.25, gate, 0.7) == 0.25
    pairs = build_pairs(rewards, rule="margin", min_margin=pair_margin("auto", gate, 0.7))
    assert set(pairs["user_id"]) == {f"s{i}" for i in range(52)}


def test_gate_stops_pure_noise_in_one_line_and_passes_planted_signal() -> None:
    noise = gate_of(planted(500, quality_sd=0.0, seed=1))
    assert max(noise.replication) < 0.6 and abs(noise.reliability) < 0.1
    with pytest.raises(NoLearnableSignal) as stopped:
        check_gate(noise, "require", 0.6)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith("the judge gives no learnable signal")
    assert f"{noise.pairs[noise.best]} pairs" in message and f"reliability {noise.reliability:.3f}" in message
    assert check_gate(noise, "report", 0.6) == noise.format()  # reported, not stopped
    assert check_gate(noise, "off", 0.6) == ""

    signal = gate_of(planted(500, quality_sd=0.5, seed=1))
    assert signal.reliability > 0.3 and signal.passes(0.6)
    assert check_gate(signal, "require", 0.6) == signal.format()
    assert "\n" not in signal.format()


def test_one_target_skips_the_gate_and_refuses_auto_and_require() -> None:
    rewards = rewards_of({"u": [[0.9], [0.1]]})
    assert gate_of(rewards) is None and gate_of(rewards.drop(columns="target_rewards")) is None
    assert "needs M >= 2" in check_gate(None, "report", 0.6)
    with pytest.raises(ConfigError, match=r"^pairs\.min_margin=auto: needs evaluate\.targets_per_user >= 2"):
        pair_margin("auto", None, 0.7)
    with pytest.raises(ConfigError, match=r"^pairs\.gate=require: needs evaluate\.targets_per_user >= 2"):
        check_gate(None, "require", 0.6)


@pytest.mark.parametrize("override", ["pairs.min_margin=big", "pairs.min_margin=-0.1", "pairs.gate=maybe",
                                      "pairs.top_k=-1", "pairs.replicate_target=1.5"])
def test_bad_pair_settings_fail_at_compose_time_in_one_line(compose_cfg, override: str) -> None:
    key, value = override.split("=")
    with pytest.raises(ConfigError) as error:
        validate_config(compose_cfg(["debug=tiny", override]))
    assert str(error.value).startswith(f"{key}={value}: ") and "\n" not in str(error.value)


class Recorder(NullTracker):
    """Keeps the logged metrics."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_metrics(self, metrics, step=None) -> None:  # noqa: ANN001 - the Tracker signature
        self.metrics |= dict(metrics)


def evaluate_context(cfg, run_dir: Path) -> StageContext:
    """Stage evaluate's context on an empty run folder, recording what it logs."""
    return StageContext(cfg=cfg, run_dir=run_dir, store=ArtifactStore(run_dir), tracker=Recorder(),
                        stage=BY_NAME["evaluate"], declared=declarations(cfg))


def test_write_pairs_runs_the_gate_and_auto_margin_under_the_real_config(compose_cfg, tmp_path, capsys) -> None:
    cfg = compose_cfg(["debug=tiny", "pairs.min_margin=auto", "pairs.gate=require", "pairs.top_k=1"])
    ctx = evaluate_context(cfg, tmp_path / "run")
    rewards = planted(300, quality_sd=0.5, seed=2)
    summary = write_pairs(ctx, config_object(cfg), rewards, PAIRS, "evaluate/gate")
    gate = gate_of(rewards)
    assert summary["gate"]["best_replication"] == pytest.approx(gate.replication[gate.best])
    assert summary["min_margin"] == pytest.approx(gate.margin_for(0.7))
    assert ctx.tracker.metrics["evaluate/gate/reliability"] == pytest.approx(gate.reliability)
    assert "split-half reliability" in capsys.readouterr().out
    meta = json.loads((ctx.store.path(PAIRS) / "_meta.json").read_text())
    assert meta["summary"]["gate"]["margins"] == pytest.approx(list(gate.margins))
    pairs = ctx.store.read_table(PAIRS)
    assert (pairs["chosen_reward"] - pairs["rejected_reward"] > summary["min_margin"]).all()
    assert pairs.groupby("user_id").size().max() == 2  # best vs worst and 2nd best vs 2nd worst


def test_write_pairs_stops_before_any_pairs_on_pure_noise(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(["debug=tiny", "pairs.gate=require"])
    ctx = evaluate_context(cfg, tmp_path / "run")
    with pytest.raises(NoLearnableSignal, match="no learnable signal"):
        write_pairs(ctx, config_object(cfg), planted(500, quality_sd=0.0, seed=1), PAIRS, "evaluate/gate")
    assert ctx.store.meta(PAIRS) is None and "evaluate/gate/best_replication" in ctx.tracker.metrics


def test_auto_margin_with_one_target_fails_in_one_line(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(["debug=tiny", "pairs.min_margin=auto"])
    rewards = rewards_of({"u": [[0.9], [0.1]]})
    with pytest.raises(ConfigError, match="targets_per_user >= 2"):
        write_pairs(evaluate_context(cfg, tmp_path / "run"), config_object(cfg), rewards, PAIRS, "evaluate/gate")
