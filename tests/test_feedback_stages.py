"""Stages train_rec and evaluate end to end on ML-100K with tiny models, through the real config."""

from __future__ import annotations

import pytest

import lettingo.recommender.loading
from lettingo.artifacts import PAIRS, PROFILES, REC_MODEL, REC_TRAIN_PROFILES, REWARDS, ArtifactStore, MissingArtifact
from lettingo.evaluation.methods import MAJORITY, NO_PROFILE, USER_MEAN
from lettingo.pipeline import run
from lettingo.recommender.loading import build_recommender

#: On top of `debug=tiny`: 12 held-out users, 8 rec_train users, metrics in CSV files.
TINY = ["debug=tiny", "logger=csv", "dataset.splits.test=12", "dataset.splits.rec_train=8"]
TRAINING = [
    "recommender.training.max_users=8", "recommender.training.n_targets=2", "recommender.training.batch_size=4",
    "recommender.training.trainer.max_epochs=1",
]


@pytest.fixture
def tiny(compose_cfg, tiny_model_cache, tmp_path):
    """Compose the tiny setup in one run folder."""

    def _compose(*overrides: str):
        return compose_cfg([*TINY, f"paths.model_cache={tiny_model_cache}", *overrides], tmp_path / "run")

    return _compose


@pytest.fixture
def explored(tiny, tmp_path):
    """A run folder whose samples were made and whose profiles were written by tiny_random."""
    run(tiny("stage=data"))
    run(tiny("stage=explore"))
    return tmp_path / "run"


def test_zero_shot_train_rec_is_a_no_op_and_evaluate_writes_everything(tiny, explored, capsys,
                                                                       monkeypatch) -> None:
    assert run(tiny("stage=train_rec", "recommender=llm_zero_shot")) == {"recommender": "llm_zero_shot",
                                                                         "trained": False}
    cfg = tiny("stage=evaluate", "recommender=llm_zero_shot")
    summary = run(cfg)
    out = capsys.readouterr().out
    store = ArtifactStore(explored)
    rewards = store.read_table(REWARDS)
    assert len(rewards) == len(store.read_table(PROFILES)) == 9
    pairs = store.read_table(PAIRS)
    assert store.meta(PAIRS)["summary"] == summary["pairs"] and summary["pairs"]["users"] == 3
    assert len(pairs) == summary["pairs"]["pairs"]
    assert set(pairs["prompt"]) <= set(rewards["prompt"])
    assert summary["recommender"] == "llm_zero_shot"
    methods = set(summary["baselines"])
    assert {MAJORITY, USER_MEAN, NO_PROFILE, "10H + raw 30H"} <= methods
    assert all(row["accuracy"]["n"] == 12 for row in summary["baselines"].values())
    markdown = (explored / "baselines" / "comparison.md").read_text()
    assert "| 10H + raw 30H" in markdown and markdown in out
    assert (explored / "baselines" / "comparison.png").exists()
    metrics = (explored / "logs" / "metrics.csv").read_text()
    assert "evaluate/test/majority_class/macro_f1" in metrics
    assert "evaluate/profile_train_h30/profile_accuracy" in metrics
    assert "profile_sensitivity" in summary and "profile_train_h30" in summary["profile_sensitivity"]
    assert (explored / "sensitivity" / "data.json").is_file()

    # A rerun reuses every verdict: no chunk is rescored or rewritten, and f_Rec is not even built.
    chunks = {path: path.stat().st_mtime_ns for path in store.chunk_paths(REWARDS)}
    assert chunks

    def not_built(*args, **kwargs):
        raise AssertionError("f_Rec was built although every verdict was finished")

    monkeypatch.setattr(lettingo.recommender.loading, "build_recommender", not_built)
    assert run(cfg) == summary
    assert {path: path.stat().st_mtime_ns for path in store.chunk_paths(REWARDS)} == chunks  # rewards reused


def test_lora_train_rec_then_evaluate_uses_the_checkpoint(tiny, explored) -> None:
    cfg = tiny("stage=train_rec", "recommender=llm_lora", *TRAINING)
    summary = run(cfg)
    store = ArtifactStore(explored)
    assert summary["trained"] and summary["train_users"] + summary["val_users"] == 8
    checkpoint = explored / REC_MODEL / summary["checkpoint"]
    assert checkpoint.exists()
    assert len(store.read_table(REC_TRAIN_PROFILES)) == 8  # one profile per rec_train user
    assert run(cfg) == store.meta(REC_MODEL)  # reused
    trained = build_recommender(cfg.recommender.model, checkpoint)
    assert any("lora_" in n for n, _ in trained.named_parameters())
    result = run(tiny("stage=evaluate", "recommender=llm_lora", *TRAINING))
    assert result["recommender"] == "llm_lora" and NO_PROFILE in result["baselines"]

    changed = tiny("stage=evaluate", "recommender=llm_lora", *TRAINING, "recommender.training.n_targets=3")
    with pytest.raises(MissingArtifact, match="was made with other inputs than this config"):
        run(changed)


def test_evaluate_without_profiles_says_what_to_run(tiny, tmp_path) -> None:
    run(tiny("stage=data"))
    with pytest.raises(MissingArtifact, match=f"no finished '{PROFILES}' in {tmp_path / 'run'}.*stage=explore"):
        run(tiny("stage=evaluate", "recommender=llm_zero_shot"))
