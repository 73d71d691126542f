"""Stages align and test end to end on tiny models through the real config: adapters written in PEFT
format, reuse and resume, the TRL engine, and the held-out comparison with results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lettingo.align import dpo as dpo_module
from lettingo.align.stage import adapter_artifact, run_align
from lettingo.artifacts import ArtifactStore, fingerprint
from lettingo.held_out import DPO, NO_DPO, NO_PROFILE, SFT, run_test
from lettingo.llm.models import load_causal_lm
from lettingo.runtime import RunContext, seed_everything
from lettingo.tracking import CsvTracker

TINY = ["backbone=tiny_random", "num_threads=1", "logger=none", "trainer.enable_progress_bar=false",
        "align.data.max_pairs=8", "align.data.val_fraction=0.25", "align.batch.global_size=4",
        "align.batch.micro_size=2", "align.epochs=1", "align.val_checks_per_epoch=2",
        "align.dpo.optimizer.lr=0.05"]


def context(cfg, run_dir: Path) -> RunContext:
    seed_everything(int(cfg.seed), 1)
    return RunContext(cfg, run_dir, ArtifactStore(run_dir), CsvTracker(run_dir / "logs"))


def write_pairs(run_dir: Path, cache: Path) -> pd.DataFrame:
    """A finished `pairs` artifact: 4 users x 3 pairs, prompts rendered by tiny_random's chat template."""
    _, tokenizer = load_causal_lm("tiny_random", cache)
    rows = []
    for user, title in enumerate(["Toy Story (1995)", "Alien (1979)", "Fargo (1996)", "Titanic (1997)"]):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"{title} rated 4 of 5. Profile?"}],
                                               tokenize=False, add_generation_prompt=True)
        good, bad = [f"Likes {title} and dramas.", "Rates crime movies high."], [f"Dislikes {title}.", "Star Wars"]
        rows += [{"user_id": str(user), "prompt_name": "lettingo", "history_len": 30, "prompt": prompt, "chosen": c,
                  "rejected": r} for c in good for r in bad][:3]
    pairs = pd.DataFrame(rows)
    ArtifactStore(run_dir).write_table("pairs", pairs, fingerprint({"hand-made": True}))
    return pairs


@pytest.fixture
def aligned(compose_cfg, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "models"
    write_pairs(run_dir, cache)
    cfg = compose_cfg(["stage=align", *TINY, f"paths.model_cache={cache}"], run_dir)
    return cfg, run_dir, run_align(context(cfg, run_dir))


def test_align_writes_dpo_and_sft_adapters(aligned) -> None:
    cfg, run_dir, results = aligned
    assert list(results) == ["dpo", "sft"]
    for method in ("dpo", "sft"):
        folder = run_dir / adapter_artifact(method)
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
        assert json.loads((folder / "_meta.json").read_text())["method"] == method
    dpo = results["dpo"]
    assert dpo["pairs_train"] == 6 and dpo["pairs_val"] == 2 and dpo["users_val"] == 1
    assert dpo["accumulate_grad_batches"] == 2 and dpo["steps"] == 2
    history = dpo["val_history"]
    assert len(history) >= 2 and all("align/val/rewards/margins" in row for row in history)
    assert "align/val/sft_loss" in results["sft"]["val_history"][-1]
    # Checkpoints hold the adapter only.
    import torch

    state = torch.load(run_dir / "align" / "dpo" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)


def test_align_is_reused_for_the_same_inputs(aligned) -> None:
    cfg, run_dir, _ = aligned
    mtime = (run_dir / adapter_artifact("dpo") / "_meta.json").stat().st_mtime_ns
    again = run_align(context(cfg, run_dir))
    assert (run_dir / adapter_artifact("dpo") / "_meta.json").stat().st_mtime_ns == mtime
    assert again["dpo"]["steps"] == 2


def test_a_killed_run_resumes_from_its_last_checkpoint(compose_cfg, tmp_path, monkeypatch) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "models"
    write_pairs(run_dir, cache)
    cfg = compose_cfg(["stage=align", *TINY, "align.sft_baseline=false", "align.epochs=2",
                       f"paths.model_cache={cache}"], run_dir)
    original = dpo_module.DpoModule.training_step

    def crash_after_two_steps(self, batch, batch_idx):
        if self.global_step >= 2:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(dpo_module.DpoModule, "training_step", crash_after_two_steps)
    with pytest.raises(RuntimeError, match="killed"):
        run_align(context(cfg, run_dir))
    assert (run_dir / "align" / "dpo" / "last.ckpt").exists() and not (run_dir / "adapter_dpo" / "_meta.json").exists()
    monkeypatch.setattr(dpo_module.DpoModule, "training_step", original)
    summary = run_align(context(cfg, run_dir))["dpo"]
    assert summary["resumed"] and summary["steps"] == 4


def test_trl_engine_trains_dpo_on_the_same_pairs(compose_cfg, tmp_path) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "models"
    write_pairs(run_dir, cache)
    cfg = compose_cfg(["stage=align", *TINY, "align.engine=trl", "align.sft_baseline=false",
                       f"paths.model_cache={cache}"], run_dir)
    summary = run_align(context(cfg, run_dir))["dpo"]
    assert summary["engine"] == "trl" and summary["steps"] == 2
    assert (run_dir / adapter_artifact("dpo") / "adapter_model.safetensors").is_file()


def test_test_stage_compares_every_method_on_the_same_users(compose_cfg, aligned, capsys) -> None:
    _, run_dir, _ = aligned
    cfg = compose_cfg(["stage=test", *TINY, f"paths.model_cache={Path(run_dir).parent / 'models'}",
                       "recommender.model.model=tiny_random", "dataset.splits.test=10", "align.test.max_new_tokens=6",
                       "align.test.bootstrap.n_resamples=50"], run_dir)
    results = run_test(context(cfg, run_dir))
    out = capsys.readouterr().out
    methods = set(results["methods"])
    assert {NO_PROFILE, NO_DPO, SFT, DPO, "palr (tiny_random)", "rlmrec (tiny_random)", "kar (tiny_random)"} == methods
    assert results["users"] == 10
    assert all(row["accuracy"]["n"] == 10 and row["macro_f1"]["low"] <= row["macro_f1"]["value"] <= row["macro_f1"]
               ["high"] for row in results["methods"].values())
    assert set(results["versus_dpo"]) == methods - {DPO}
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["users"] == 10 and saved["details"][DPO]["confusion_matrix"] and saved["details"][DPO]["n"] == 10
    predictions = ArtifactStore(run_dir).read_table("predictions")
    assert len(predictions) == 10 * len(methods) and predictions.groupby("method").size().eq(10).all()
    assert "## Table 3" in out and "| DPO" in out and "| SFT" in out and "| no DPO" in out


def test_one_user_trains_without_validation(compose_cfg, tmp_path) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "models"
    pairs = write_pairs(run_dir, cache)
    ArtifactStore(run_dir).write_table("pairs", pairs[pairs["user_id"] == "0"], fingerprint({"one user": True}))
    cfg = compose_cfg(["stage=align", *TINY, "align.sft_baseline=false", f"paths.model_cache={cache}"], run_dir)
    summary = run_align(context(cfg, run_dir))["dpo"]
    assert summary["pairs_val"] == 0 and summary["val_history"] == [] and summary["steps"] == 1


def test_no_pairs_skips_alignment_and_the_test_stage_compares_the_base_methods(compose_cfg, aligned) -> None:
    cfg, run_dir, _ = aligned
    pairs = ArtifactStore(run_dir).read_table("pairs")
    ArtifactStore(run_dir).write_table("pairs", pairs.iloc[:0], fingerprint({"no pairs": True}))
    assert run_align(context(cfg, run_dir)) == {"skipped": "no preference pairs"}
    assert not (run_dir / adapter_artifact("dpo")).exists() and not (run_dir / adapter_artifact("sft")).exists()
    test_cfg = compose_cfg(["stage=test", *TINY, f"paths.model_cache={Path(run_dir).parent / 'models'}",
                            "recommender.model.model=tiny_random", "dataset.splits.test=6",
                            "align.test.max_new_tokens=4", "align.test.bootstrap.n_resamples=20"], run_dir)
    results = run_test(context(test_cfg, run_dir))
    assert {NO_PROFILE, NO_DPO} <= set(results["methods"]) and not {SFT, DPO} & set(results["methods"])
    assert results["versus_dpo"] == {}
