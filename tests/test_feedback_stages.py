"""Stages train_rec and evaluate end to end on ML-100K with tiny models, through the real config."""

from __future__ import annotations

from pathlib import Path

import pytest

from lettingo.artifacts import ArtifactStore
from lettingo.feedback.evaluate import run_evaluate
from lettingo.feedback.train import REC_MODEL, load_recommender, run_train_rec
from lettingo.profiles.stage import run_explore
from lettingo.runtime import RunContext, seed_everything
from lettingo.tracking import CsvTracker

TINY = [
    "backbone=tiny_random", "sampling.max_users=3", "sampling.n=3", "sampling.max_new_tokens=6",
    "recommender.model.model=tiny_random", "recommender.evaluation.bootstrap.n_resamples=50",
    "dataset.splits.test=12", "num_threads=1",
]
TRAINING = [
    "recommender.training.max_users=8", "recommender.training.n_targets=2", "recommender.training.batch_size=4",
    "recommender.training.trainer.max_epochs=1", "trainer.enable_progress_bar=false",
]


def context(cfg, run_dir: Path) -> RunContext:
    seed_everything(int(cfg.seed), 1)
    return RunContext(cfg, run_dir, ArtifactStore(run_dir), CsvTracker(run_dir / "logs"))


@pytest.fixture
def explored(compose_cfg, tmp_path):
    """A run folder whose profiles were written by tiny_random."""
    run_dir = tmp_path / "run"
    run_explore(context(compose_cfg(["stage=explore", *TINY], run_dir), run_dir))
    return run_dir


def test_zero_shot_train_rec_is_a_no_op_and_evaluate_writes_everything(compose_cfg, explored, capsys) -> None:
    cfg = compose_cfg(["recommender=llm_zero_shot", *TINY], explored)
    ctx = context(cfg, explored)
    assert run_train_rec(ctx) == {"recommender": "llm_zero_shot", "trained": False}
    summary = run_evaluate(ctx)
    out = capsys.readouterr().out
    rewards = ctx.store.read_table("rewards")
    assert len(rewards) == len(ctx.store.read_table("profiles")) == 9
    pairs = ctx.store.read_table("pairs")
    assert ctx.store.meta("pairs")["summary"] == summary["pairs"] and summary["pairs"]["users"] == 3
    assert len(pairs) == summary["pairs"]["pairs"]
    assert set(pairs["prompt"]) <= set(rewards["prompt"])
    methods = set(summary["baselines"])
    assert {"majority class", "user mean rating", "llm_zero_shot 10H", "llm_zero_shot 10H + raw 30H"} <= methods
    assert all(row["accuracy"]["n"] == 12 for row in summary["baselines"].values())
    markdown = (explored / "baselines" / "baselines.md").read_text()
    assert "| llm_zero_shot 10H + raw 30H" in markdown and markdown in out
    assert (explored / "baselines" / "macro_f1.png").exists()
    metrics = (explored / "logs" / "metrics.csv").read_text()
    assert "evaluate/test/majority class/macro_f1" in metrics
    assert "evaluate/profile_train_h30/profile_accuracy" in metrics
    assert "profile_sensitivity" in summary and "profile_train_h30" in summary["profile_sensitivity"]

    mtime = (explored / "rewards" / "_meta.json").stat().st_mtime_ns
    run_evaluate(ctx)
    assert (explored / "rewards" / "_meta.json").stat().st_mtime_ns == mtime  # rewards reused


def test_lora_train_rec_then_evaluate_uses_the_checkpoint(compose_cfg, explored) -> None:
    cfg = compose_cfg(["recommender=llm_lora", *TINY, *TRAINING], explored)
    ctx = context(cfg, explored)
    summary = run_train_rec(ctx)
    assert summary["trained"] and summary["train_users"] + summary["val_users"] == 8
    assert (explored / REC_MODEL / summary["checkpoint"]).exists()
    assert len(ctx.store.read_table("rec_train_profiles")) == 8  # one profile per rec_train user
    assert run_train_rec(ctx) == ctx.store.meta(REC_MODEL)  # reused
    trained = load_recommender(cfg, ctx.store)
    assert any("lora_" in n for n, _ in trained.named_parameters())
    result = run_evaluate(ctx)
    assert "llm_lora 10H" in result["baselines"]

    changed = compose_cfg(["recommender=llm_lora", *TINY, *TRAINING, "recommender.training.n_targets=3"], explored)
    with pytest.raises(RuntimeError, match="rerun stage=train_rec"):
        load_recommender(changed, ctx.store)


def test_evaluate_without_profiles_says_what_to_run(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(["recommender=llm_zero_shot", *TINY])
    with pytest.raises(RuntimeError, match="stage=explore"):
        run_evaluate(context(cfg, tmp_path / "run"))
