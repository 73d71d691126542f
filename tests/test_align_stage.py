"""Stages align and test end to end on tiny models through the real config and the stage runner:
adapters written in PEFT format, reuse and resume, the TRL engine, `align.methods`, and the held-out
comparison in the `results` artifact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lettingo.align import dpo as dpo_module
from lettingo.align.data import prompt_token_ids
from lettingo.align.trl_engine import trl_prompt
from lettingo.artifacts import PAIRS, PREDICTIONS, RESULTS, ArtifactStore, adapter_artifact
from lettingo.evaluation.comparison import read_comparison
from lettingo.evaluation.methods import DPO, NO_DPO, NO_PROFILE, ORACLE_FACTS, SFT, SHUFFLED
from lettingo.llm.models import load_causal_lm
from lettingo.pipeline import run
from lettingo.schemas import ConfigError, validate_config
from lettingo.stages import BY_NAME, declarations
from lettingo.stages.align import NO_SIGNAL
from lettingo.stages.base import StageContext
from lettingo.tracking import NullTracker

#: On top of `debug=tiny`: 8 hand-made pairs of 4 users, 2 micro-batches of 2 per step, a high DPO rate.
ALIGN = ["align.data.max_pairs=8", "align.data.val_fraction=0.25", "align.batch.global_size=4",
         "align.batch.micro_size=2", "align.val_checks_per_epoch=2", "align.method.dpo.module.optimizer.lr=0.05"]


@pytest.fixture
def tiny(compose_cfg, tiny_model_cache, tmp_path):
    """Compose the tiny setup with the align settings above, in one run folder (``run_dir`` to pick another)."""

    def _compose(*overrides: str, run_dir: Path | None = None):
        return compose_cfg(["debug=tiny", f"paths.model_cache={tiny_model_cache}", *ALIGN, *overrides],
                           run_dir or tmp_path / "run")

    return _compose


def hand_made_pairs(cache: Path) -> pd.DataFrame:
    """4 users x 3 pairs, prompts rendered by tiny_random's chat template."""
    _, tokenizer = load_causal_lm("tiny_random", cache)
    rows = []
    for user, title in enumerate(["Toy Story (1995)", "Alien (1979)", "Fargo (1996)", "Titanic (1997)"]):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"{title} rated 4 of 5. Profile?"}],
                                               tokenize=False, add_generation_prompt=True)
        good, bad = [f"Likes {title} and dramas.", "Rates crime movies high."], [f"Dislikes {title}.", "Star Wars"]
        rows += [{"user_id": str(user), "prompt_name": "lettingo", "history_len": 30, "prompt": prompt, "chosen": c,
                  "rejected": r} for c in good for r in bad][:3]
    return pd.DataFrame(rows)


def write_pairs(cfg, pairs: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` as the finished `pairs` artifact the evaluate stage would make under ``cfg``."""
    run_dir = Path(cfg.paths.run_dir)
    store = ArtifactStore(run_dir)
    ctx = StageContext(cfg=cfg, run_dir=run_dir, store=store, tracker=NullTracker(), stage=BY_NAME["evaluate"],
                       declared=declarations(cfg))
    store.write_table(PAIRS, pairs, ctx.fingerprint(PAIRS))
    return pairs


@pytest.fixture
def aligned(tiny, tiny_model_cache):
    cfg = tiny("stage=align")
    write_pairs(cfg, hand_made_pairs(tiny_model_cache))
    return cfg, Path(cfg.paths.run_dir), run(cfg)


def test_align_writes_dpo_and_sft_adapters(aligned) -> None:
    cfg, run_dir, results = aligned
    assert list(results) == ["dpo", "sft"]
    for method in ("dpo", "sft"):
        folder = run_dir / adapter_artifact(method)
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
        assert json.loads((folder / "_meta.json").read_text())["method"] == method
        assert results[method]["adapter"] == str(folder)
    dpo = results["dpo"]
    assert dpo["pairs_train"] == 6 and dpo["pairs_val"] == 2 and dpo["users_val"] == 1
    assert dpo["accumulate_grad_batches"] == 2 and dpo["steps"] == 2
    history = dpo["val_history"]
    assert len(history) >= 2 and all("align/val/rewards/margins" in row for row in history)
    assert "align/val/sft_loss" in results["sft"]["val_history"][-1]
    # Checkpoints hold the adapter only.
    state = torch.load(run_dir / "align" / "dpo" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)


def test_align_is_reused_for_the_same_inputs(aligned) -> None:
    cfg, run_dir, _ = aligned
    mtime = (run_dir / adapter_artifact("dpo") / "_meta.json").stat().st_mtime_ns
    again = run(cfg)
    assert (run_dir / adapter_artifact("dpo") / "_meta.json").stat().st_mtime_ns == mtime
    assert again["dpo"]["steps"] == 2


def test_align_methods_dpo_trains_only_the_dpo_adapter(tiny, tiny_model_cache) -> None:
    cfg = tiny("stage=align", "align.methods=[dpo]")
    write_pairs(cfg, hand_made_pairs(tiny_model_cache))
    results = run(cfg)
    run_dir = Path(cfg.paths.run_dir)
    assert list(results) == ["dpo"] and results["dpo"]["method"] == "dpo"
    assert (run_dir / adapter_artifact("dpo") / "adapter_model.safetensors").is_file()
    assert not (run_dir / adapter_artifact("sft")).exists() and not (run_dir / "align" / "sft").exists()


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny, tiny_model_cache, monkeypatch) -> None:
    cfg = tiny("stage=align", "align.methods=[dpo]", "align.epochs=2")
    write_pairs(cfg, hand_made_pairs(tiny_model_cache))
    run_dir = Path(cfg.paths.run_dir)
    original = dpo_module.DpoModule.training_step

    def crash_after_two_steps(self, batch, batch_idx):
        if self.global_step >= 2:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(dpo_module.DpoModule, "training_step", crash_after_two_steps)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg)
    assert (run_dir / "align" / "dpo" / "last.ckpt").exists() and not (run_dir / "adapter_dpo" / "_meta.json").exists()
    monkeypatch.setattr(dpo_module.DpoModule, "training_step", original)
    summary = run(cfg)["dpo"]
    assert summary["resumed"] and summary["steps"] == 4


#: What `align.engine=trl` needs besides (the Lightning-only settings TRL would ignore, refused otherwise).
TRL = ["align.share_prompt=false", "align.val_checks_per_epoch=1"]


def test_trl_engine_trains_dpo_on_the_same_pairs(tiny, tiny_model_cache) -> None:
    cfg = tiny("stage=align", "align.engine=trl", "align.methods=[dpo]", *TRL)
    write_pairs(cfg, hand_made_pairs(tiny_model_cache))
    summary = run(cfg)["dpo"]
    assert summary["engine"] == "trl" and summary["steps"] == 2
    assert (Path(cfg.paths.run_dir) / adapter_artifact("dpo") / "adapter_model.safetensors").is_file()


def test_trl_engine_trains_any_trl_loss_and_cuts_long_prompts_as_lightning_does(tiny, tiny_model_cache, tmp_path,
                                                                              caplog) -> None:
    pairs = hand_made_pairs(tiny_model_cache)
    _, tokenizer = load_causal_lm("tiny_random", tiny_model_cache)
    longest = max(len(prompt_token_ids(tokenizer, p)) for p in pairs["prompt"])
    cap = longest - 4  # every prompt is over it: TRL alone would cut completions off and fail
    for method, loss in (("dpo", "align.method.dpo.loss_type=[ipo]"), ("dpo_sft", None)):
        overrides = [o for o in ("stage=align", "align.engine=trl", f"align.methods=[{method}]", loss,
                                 f"align.data.max_prompt_tokens={cap}", *TRL) if o]
        cfg = tiny(*overrides, run_dir=tmp_path / method)
        write_pairs(cfg, pairs)
        with caplog.at_level("WARNING"):
            summary = run(cfg)[method]
        assert summary["engine"] == "trl" and summary["steps"] == 2
        assert f"prompts cut to their last {cap} tokens" in caplog.text
        assert all(math.isfinite(row["loss"]) for row in summary["trl_history"]["train"])
        weights = load_file(tmp_path / method / adapter_artifact(method) / "adapter_model.safetensors")
        lora_b = [w for name, w in weights.items() if "lora_B" in name]
        assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # LoRA's B starts at zero: trained
    # A loss the Lightning module does not compute is refused there, not trained as sigmoid DPO.
    with pytest.raises(ConfigError, match="engine=lightning trains sigmoid DPO"):
        validate_config(tiny("align.method.dpo.loss_type=[ipo]"))


def test_trl_prompt_keeps_the_end_of_a_long_prompt(tiny_model_cache) -> None:
    prompt = hand_made_pairs(tiny_model_cache)["prompt"].iloc[0]
    _, tokenizer = load_causal_lm("tiny_random", tiny_model_cache)
    ids = prompt_token_ids(tokenizer, prompt)
    assert trl_prompt(tokenizer, prompt) == prompt or tokenizer(trl_prompt(tokenizer, prompt))["input_ids"] == ids
    cut = trl_prompt(tokenizer, prompt, max_tokens=len(ids) - 5)
    assert len(tokenizer(cut)["input_ids"]) <= len(ids) - 5
    assert prompt.endswith(cut) and len(cut) < len(prompt)  # the generation prompt the completion follows is kept


#: The held-out users of the test stage: 10 of them (the tiny setup has 4). The run folders here hold
#: hand-made pairs, no evaluate stage, so no tabular f_Rec either (its rows: tests/test_paper_experiments.py).
NO_TABULAR = "evaluate.tabular.enabled=false"
TEST_USERS = ["dataset.splits.test=10", "test.max_users=10", NO_TABULAR]


def test_test_stage_compares_every_method_on_the_same_users(tiny, aligned, capsys) -> None:
    _, run_dir, _ = aligned
    run(tiny("stage=data", *TEST_USERS, run_dir=run_dir))
    results = run(tiny("stage=test", *TEST_USERS, run_dir=run_dir))
    out = capsys.readouterr().out
    methods = set(results["methods"])
    assert {NO_PROFILE, SHUFFLED, ORACLE_FACTS, NO_DPO, SFT, DPO, "palr (tiny_random)", "rlmrec (tiny_random)",
            "kar (tiny_random)"} == methods
    assert len(results["users"]) == 10
    assert all(row["accuracy"]["n"] == 10 and row["macro_f1"]["low"] <= row["macro_f1"]["value"] <= row["macro_f1"]
               ["high"] for row in results["methods"].values())
    assert set(results["paired"][DPO]) == methods - {DPO}
    saved = read_comparison(run_dir / RESULTS / "comparison.json")
    assert len(saved.users) == 10 and saved.details[DPO]["confusion_matrix"] and saved.details[DPO]["n"] == 10
    held_out = results.pop("held_out_reward")
    assert saved.to_json() == results
    # Every LettinGo-prompt generator's profiles are also scored shuffled: the guard beside its held-out reward.
    assert set(held_out) == {NO_DPO, SFT, DPO} and all(row["users"] == 10 for row in held_out.values())
    predictions = ArtifactStore(run_dir).read_table(PREDICTIONS)
    assert set(predictions["method"]) == methods | {"SFT shuffled", "DPO shuffled"}
    assert len(predictions) == 10 * (len(methods) + 2) and predictions.groupby("method").size().eq(10).all()
    assert "## Table 3" in out and "| DPO" in out and "| SFT" in out and "| no DPO" in out
    assert not (run_dir / RESULTS / "comparison_targets.json").exists() and "targets per user" not in out  # M = 1


def test_one_user_trains_without_validation(tiny, tiny_model_cache) -> None:
    cfg = tiny("stage=align", "align.methods=[dpo]")
    pairs = hand_made_pairs(tiny_model_cache)
    write_pairs(cfg, pairs[pairs["user_id"] == "0"])
    summary = run(cfg)["dpo"]
    assert summary["pairs_val"] == 0 and summary["val_history"] == [] and summary["steps"] == 1


def test_no_pairs_skips_alignment_and_the_test_stage_compares_the_base_methods(tiny, aligned) -> None:
    cfg, run_dir, _ = aligned
    pairs = ArtifactStore(run_dir).read_table(PAIRS)
    write_pairs(cfg, pairs.iloc[:0])
    assert run(cfg) == {method: {"skipped": NO_SIGNAL} for method in ("dpo", "sft")}
    assert not (run_dir / adapter_artifact("dpo")).exists() and not (run_dir / adapter_artifact("sft")).exists()
    assert len(list(run_dir.glob(f"{adapter_artifact('dpo')}.stale-*"))) == 1  # moved aside, not deleted
    test_users = ["dataset.splits.test=6", "test.max_users=6", "test.max_new_tokens=4", "bootstrap.n_resamples=20",
                  NO_TABULAR]
    run(tiny("stage=data", *test_users, run_dir=run_dir))
    results = run(tiny("stage=test", *test_users, run_dir=run_dir))
    assert {NO_PROFILE, ORACLE_FACTS, NO_DPO} <= set(results["methods"]) and not {SFT, DPO} & set(results["methods"])
    assert DPO not in results["paired"] and len(results["users"]) == 6
