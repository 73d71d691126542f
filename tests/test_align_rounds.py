"""On-policy rounds (`align.rounds`) and GRPO in the align stage, end to end on the tiny setup through the real
config and the runner: round 2 explores with round 1's adapter, is judged, paired and trained; every round's
artifacts are kept and reused; the test stage has a row per round with the held-out reward beside it."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from safetensors.torch import load_file

from lettingo import CONFIG_DIR
from lettingo.artifacts import PAIRS, PROFILES, RESULTS, REWARDS, ArtifactStore, adapter_artifact, round_artifact
from lettingo.evaluation.methods import NO_DPO
from lettingo.llm.pool import BackendPool
from lettingo.pipeline import run
from lettingo.profiles.explore import KEY, explore
from lettingo.schemas import config_object
from lettingo.seeding import derive_seed
from lettingo.stages import BY_NAME, declarations
from lettingo.stages import align as align_stage
from lettingo.stages.base import StageContext
from lettingo.stages.rounds import adapter_generator, every_adapter
from lettingo.tracking import NullTracker

#: On top of `debug=tiny`: two rounds of DPO and GRPO, a p_true reward (dense: every profile differs), rates high
#: enough that one step moves the random model's sampling.
ROUNDS = ["stage=pipeline", "align.rounds=2", "align.methods=[dpo,grpo]", "evaluate.reward=p_true",
          "align.data.val_fraction=0.0", "align.method.dpo.module.optimizer.lr=0.5",
          "align.method.grpo.module.optimizer.lr=0.5", "sampling.n=4", "sampling.max_new_tokens=8"]


def _compose(cache: Path, run_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[f"paths.run_dir={run_dir}", "debug=tiny",
                                                        f"paths.model_cache={cache}", *ROUNDS, *overrides])


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_model_cache):
    cfg = _compose(tiny_model_cache, tmp_path_factory.mktemp("rounds") / "run")
    return cfg, Path(cfg.paths.run_dir), run(cfg)


def _lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_every_round_keeps_its_artifacts(two_rounds) -> None:
    cfg, run_dir, results = two_rounds
    store = ArtifactStore(run_dir)
    for method in ("dpo", "grpo"):
        for name in (adapter_artifact(method), adapter_artifact(method, 2), round_artifact(PROFILES, method, 2),
                     round_artifact(REWARDS, method, 2)):
            assert store.meta(name) is not None, name
    assert store.meta(round_artifact(PAIRS, "dpo", 2)) is not None
    assert not (run_dir / round_artifact(PAIRS, "grpo", 2)).exists()  # GRPO trains on the rewards themselves
    assert results["align"]["dpo_r2"]["round"] == 2 and results["align"]["grpo"]["round"] == 1
    # Round 2 continued from round 1's adapter and trained it further.
    first, second = _lora(run_dir / adapter_artifact("dpo")), _lora(run_dir / adapter_artifact("dpo", 2))
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)


def test_round_two_generates_with_round_one_adapter(two_rounds) -> None:
    cfg, run_dir, _ = two_rounds
    conf = config_object(cfg)
    store = ArtifactStore(run_dir)
    written = store.read_table(round_artifact(PROFILES, "dpo", 2))
    users = store.read_table("samples")
    users = users[users["user_id"].isin(set(written["user_id"]))]
    adapter = adapter_generator(conf, "dpo", 1, str(run_dir / adapter_artifact("dpo")))
    sampling = conf.sampling

    def regenerate(config: dict, folder: Path) -> list[str]:
        with BackendPool({config["name"]: config}) as pool:
            frame = explore(users, pool, prompt_cfg=asdict(conf.prompt), item_text_cfg=asdict(conf.dataset.item_text),
                            history_len=conf.history.length, n=sampling.n, temperature=sampling.temperature,
                            max_new_tokens=sampling.max_new_tokens, seed=derive_seed(conf.seed, "dpo", 2),
                            rows=ArtifactStore(folder).rows("again", "fp", KEY),
                            users_per_chunk=sampling.users_per_chunk)
        return frame.sort_values(["user_id", "sample_idx"])["text"].tolist()

    expected = written.sort_values(["user_id", "sample_idx"])["text"].tolist()
    assert regenerate(adapter, run_dir / "with_adapter") == expected
    assert regenerate({**conf.backbone}, run_dir / "base") != expected  # same seed, no adapter: other profiles
    assert set(written["backbone"]) == {adapter["name"]}


def test_rewards_of_a_round_are_judged_by_the_frozen_recommender(two_rounds) -> None:
    _, run_dir, _ = two_rounds
    rewards = ArtifactStore(run_dir).read_table(round_artifact(REWARDS, "grpo", 2))
    assert rewards["reward"].tolist() == pytest.approx(rewards["p_true"].tolist())


def test_the_test_stage_has_a_row_per_round_with_its_held_out_reward(two_rounds) -> None:
    _, run_dir, results = two_rounds
    table = json.loads((run_dir / RESULTS / "rewards.json").read_text())
    assert table["reward"] == "p_true"
    assert set(table["methods"]) == {NO_DPO, "DPO (round 1)", "DPO", "GRPO (round 1)", "GRPO"}
    for row in table["methods"].values():
        assert set(row) >= {"reward", "vs_reference", "shuffled", "true_minus_shuffled", "degenerate_share"}
    assert {"DPO (round 1)", "DPO", "GRPO"} <= set(results["test"]["predictions"])


def test_a_rerun_reuses_every_round_and_fewer_rounds_keep_round_one(two_rounds, tiny_model_cache) -> None:
    cfg, run_dir, _ = two_rounds
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.glob("adapter_*/_meta.json")}
    run(cfg)
    run(_compose(tiny_model_cache, run_dir, "align.rounds=1", "stage=align"))
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("adapter_*/_meta.json")} == stamps


def test_a_method_can_train_its_own_number_of_rounds(tmp_path, tiny_model_cache) -> None:
    cfg = _compose(tiny_model_cache, tmp_path / "run", "align.methods=[dpo,sft,grpo]", "align.rounds=3",
                   "align.method.sft.rounds=1")
    adapters = every_adapter(cfg)
    assert adapters == (*(adapter_artifact("dpo", r) for r in (1, 2, 3)), adapter_artifact("sft"),
                        *(adapter_artifact("grpo", r) for r in (1, 2, 3)))
    made = {name for name, declared in declarations(cfg).items() if declared.stage == "align"}
    assert round_artifact(PAIRS, "dpo", 3) in made and round_artifact(PROFILES, "sft", 2) not in made
    # The number of rounds is no part of an adapter's identity: asking for more keeps the earlier ones.
    fewer = _compose(tiny_model_cache, tmp_path / "run", "align.methods=[dpo,sft,grpo]")
    store = ArtifactStore(tmp_path / "run")
    prints = {StageContext(cfg=c, run_dir=tmp_path / "run", store=store, tracker=NullTracker(), stage=BY_NAME["align"],
                           declared=declarations(c)).fingerprint(adapter_artifact("dpo")) for c in (cfg, fewer)}
    assert len(prints) == 1
    with pytest.raises(ValueError, match=r"align.method.dpo.rounds=0: must be >= 1"):
        config_object(_compose(tiny_model_cache, tmp_path / "run", "align.method.dpo.rounds=0"))


def test_a_failed_later_round_raises_on_every_rank(two_rounds, monkeypatch) -> None:
    cfg, run_dir, _ = two_rounds

    def broken(*args, **kwargs):
        raise ValueError("disk full")

    monkeypatch.setattr(align_stage, "later_round_examples", broken)
    main = StageContext(cfg=cfg, run_dir=run_dir, store=ArtifactStore(run_dir), tracker=NullTracker(),
                        stage=BY_NAME["align"], declared=declarations(cfg))
    with pytest.raises(ValueError, match="disk full"):  # rank 0 raises its own error
        align_stage.round_examples(main, config_object(cfg), "dpo", 2)
    # Another rank receives rank 0's outcome through `agree` and fails in one line naming it.
    other = replace(main, rank=1, world=2, agree=lambda _: (False, ValueError("disk full")))
    with pytest.raises(RuntimeError, match="rank 0 failed making round 2 of dpo: ValueError: disk full"):
        align_stage.round_examples(other, config_object(cfg), "dpo", 2)


def test_the_last_round_trains_replicas_with_other_seeds(two_rounds, tiny_model_cache, tmp_path) -> None:
    _, run_dir, _ = two_rounds
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in copy.glob("adapter_*/_meta.json")}
    cfg = _compose(tiny_model_cache, copy, "align.method.dpo.seeds=2", "stage=align")
    adapters = every_adapter(cfg)
    assert adapter_artifact("dpo", 2, 2) in adapters and adapter_artifact("dpo", 1, 2) not in adapters
    results = run(cfg)
    # The replica is one more adapter: every adapter made before is reused, not retrained.
    assert {n: t for n, t in ((p.parent.name, p.stat().st_mtime_ns) for p in copy.glob("adapter_*/_meta.json"))
            if n in stamps} == stamps
    store = ArtifactStore(copy)
    first, replica = store.meta(adapter_artifact("dpo", 2)), store.meta(adapter_artifact("dpo", 2, 2))
    assert replica["seed_index"] == 2 and replica["training_seed"] != first["training_seed"]
    assert (replica["pairs_train"], replica["users_train"]) == (first["pairs_train"], first["users_train"])
    assert results["dpo_r2_s2"]["round"] == 2  # a single stage's run returns that stage's results
    a, b = _lora(copy / adapter_artifact("dpo", 2)), _lora(copy / adapter_artifact("dpo", 2, 2))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another data order, another adapter
    tested = run(_compose(tiny_model_cache, copy, "align.method.dpo.seeds=2", "stage=test"))
    assert {"DPO (seed 2)", "DPO", "DPO (round 1)"} <= set(tested["held_out_reward"])
