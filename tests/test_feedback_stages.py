"""Stages train_rec and evaluate end to end on ML-100K with tiny models, through the real config."""

from __future__ import annotations

import pytest
import torch

import lettingo.llm.pool
import lettingo.recommender.loading
import lettingo.stages.train_rec
from lettingo.artifacts import (
    PAIRS,
    PROFILES,
    REC_MODEL,
    REC_TRAIN_PROFILES,
    REWARDS,
    SAMPLES,
    ArtifactStore,
    MissingArtifact,
)
from lettingo.evaluation.methods import (
    MAJORITY,
    NO_PROFILE,
    ORACLE_FACTS,
    SHUFFLED_ORACLE,
    TABULAR,
    TABULAR_ORACLE,
    USER_MEAN,
)
from lettingo.pipeline import run
from lettingo.profiles.oracle import oracle_profile
from lettingo.recommender.loading import build_recommender

#: On top of `debug=tiny`: 12 held-out users, 8 rec_train users, metrics in CSV files.
TINY = ["debug=tiny", "logger=csv", "dataset.splits.test=12", "dataset.splits.rec_train=8"]
TRAINING = [
    "recommender.training.max_users=8", "recommender.training.n_targets=2", "recommender.training.batch_size=4",
    "recommender.training.trainer.max_epochs=1",
]


def trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters, by name."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


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
    assert run(tiny("stage=rec_profiles", "recommender=llm_zero_shot")) == {"rows": 0}
    assert not (explored / REC_TRAIN_PROFILES).exists()
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
    # f_Rec's rows carry its probabilities (p_true, log-loss); the rule rows have labels only.
    assert {"p_true", "log_loss"} <= set(summary["baselines"][NO_PROFILE]) and "p_true" not in summary["baselines"][
        MAJORITY]
    markdown = (explored / "baselines" / "comparison.md").read_text()
    assert "| 10H + raw 30H" in markdown and markdown in out
    assert (explored / "baselines" / "comparison.png").exists()
    metrics = (explored / "logs" / "metrics.csv").read_text()
    assert "evaluate/test/majority_class/macro_f1" in metrics
    assert "evaluate/profile_train/profile_accuracy" in metrics  # the split by its role: no H in a metric name
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
    run(tiny("stage=rec_profiles", "recommender=llm_lora", *TRAINING))
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


def test_cross_encoder_learns_from_generated_oracle_and_empty_profiles(tiny, explored, tiny_bert,
                                                                       monkeypatch) -> None:
    mix = [*TRAINING, "recommender=cross_encoder", f"recommender.model.model={tiny_bert}",
           "recommender.model.max_length=64", "recommender.training.empty_profile_rate=0.3",
           "recommender.training.balance=none", "recommender.model.optimizer.lr=0.01",
           "recommender.training.oracle_profile_rate=0.4", "recommender.training.trainer.max_epochs=2"]
    seen: list = []
    losses: list[float] = []
    real_fit = lettingo.stages.train_rec.fit

    def training_loss(module, batch) -> float:
        module.eval()
        with torch.no_grad():
            return float(module.loss(batch))

    def recording_fit(module, data, *args, **kwargs):
        batch = module.collate(data.train_cases)
        seen.extend(data.train_cases)
        seen.append(trainable(module))
        losses.append(training_loss(module, batch))
        result = real_fit(module, data, *args, **kwargs)
        losses.append(training_loss(module, batch))  # the best checkpoint's, loaded by fit
        return result

    monkeypatch.setattr(lettingo.stages.train_rec, "fit", recording_fit)
    run(tiny("stage=rec_profiles", *mix))
    cfg = tiny("stage=train_rec", *mix)
    summary = run(cfg)
    *cases, before = seen
    samples = ArtifactStore(explored).read_table(SAMPLES).set_index("user_id")
    generated = set(ArtifactStore(explored).read_table(REC_TRAIN_PROFILES)["text"])
    oracle = [c for c in cases if c.profile and c.profile not in generated]
    assert oracle and any(c.profile in generated for c in cases) and any(not c.profile for c in cases)
    for case in oracle:  # each user's own older-history facts, never another user's
        assert case.profile == oracle_profile(samples.loc[case.user_id].to_dict(), 30, cfg.prompt.facts)
    after = trainable(build_recommender(cfg.recommender.model, explored / REC_MODEL / summary["checkpoint"]))
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert losses[1] < losses[0]
    # max_length 64 is shorter than every pair here (10 recent items): the record says all were cut
    assert summary["cut_share"] == 1.0
    assert ArtifactStore(explored).meta(REC_MODEL)["cut_share"] == summary["cut_share"]

    changed = tiny("stage=train_rec", *mix[:-2], "recommender.training.oracle_profile_rate=0.2", mix[-1])
    assert not list(explored.glob(f"{REC_MODEL}.stale-*"))
    run(changed)  # another mix is another model: retrained, the first one kept aside
    assert len(list(explored.glob(f"{REC_MODEL}.stale-*"))) == 1


def test_reference_pipeline_generates_nothing_and_stops_after_evaluate(tiny, tiny_bert, monkeypatch,
                                                                       tmp_path) -> None:
    def no_generation(*args, **kwargs):
        raise AssertionError("a generator was loaded although nobody is explored")

    monkeypatch.setattr(lettingo.llm.pool.BackendPool, "__getitem__", no_generation)
    cfg = tiny("stage=pipeline", "stop_after=evaluate", "sampling.splits=[test]", "sampling.max_users=0",
               *TRAINING, "recommender=cross_encoder", f"recommender.model.model={tiny_bert}",
               "recommender.model.max_length=64", "recommender.training.profiles_per_user=0",
               "recommender.training.empty_profile_rate=0.5", "recommender.training.oracle_profile_rate=0.5")
    results = run(cfg)
    run_dir = tmp_path / "run"
    assert list(results) == ["data", "explore", "rec_profiles", "train_rec", "evaluate"]
    store = ArtifactStore(run_dir)
    assert store.read_table(PROFILES).empty and store.meta(PROFILES) is not None  # empty, and finished
    assert not (run_dir / REWARDS).exists() and not (run_dir / PAIRS).exists()
    methods = set(results["evaluate"]["baselines"])
    assert {NO_PROFILE, ORACLE_FACTS, SHUFFLED_ORACLE, TABULAR, TABULAR_ORACLE} <= methods
    assert all(row["accuracy"]["n"] == 12 for row in results["evaluate"]["baselines"].values())
    with pytest.raises(ValueError, match="stop_after=nowhere"):
        run(tiny("stage=pipeline", "stop_after=nowhere"))
