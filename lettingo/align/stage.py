"""Stage align: train the generator's LoRA adapter on the `pairs` artifact (DPO, and the SFT baseline).

Each method writes the artifact ``adapter_<method>`` (PEFT format) in the run folder, reused when
its inputs (pairs, generator, align settings, seed) are the same. Training goes through the
Lightning Trainer of the `trainer` config; checkpoints (adapter only) live under
``align/<method>/`` so a killed run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, ListConfig, OmegaConf

from lettingo.align.adapters import attach_lora, lora_config, save_adapter
from lettingo.align.data import (
    AlignDataModule,
    check_pairs,
    positive_examples,
    preference_examples,
    select_pairs,
    split_by_user,
)
from lettingo.align.dpo import DpoModule
from lettingo.align.module import AdapterModule
from lettingo.align.sft import SftModule
from lettingo.artifacts import ArtifactStore, fingerprint
from lettingo.llm.models import inference_dtype, load_causal_lm
from lettingo.runtime import RunContext, seed_everything

log = logging.getLogger(__name__)

PAIRS = "pairs"
PROFILES = "profiles"
METHODS = ("dpo", "sft")


def adapter_artifact(method: str) -> str:
    """Name of the adapter artifact of ``method``."""
    return f"adapter_{method}"


def methods_to_train(acfg: DictConfig) -> list[str]:
    """The main method, then the SFT baseline when DPO is the main method and the baseline is on."""
    method = str(acfg.method)
    if method not in METHODS:
        raise ValueError(f"align.method must be one of {METHODS}, got {method!r}")
    return [method, "sft"] if method == "dpo" and acfg.sft_baseline else [method]


def device_count(trainer_cfg: DictConfig) -> int:
    """Processes that each run a micro-batch per step: devices x nodes (``-1``/``auto`` on GPU: all visible)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, ListConfig | list):
        count = len(devices)
    elif str(devices) in ("-1", "auto"):
        on_gpu = str(trainer_cfg.get("accelerator", "cpu")) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if on_gpu else 1
    else:
        count = int(devices)
    return count * int(trainer_cfg.get("num_nodes", 1))


def accumulation_steps(global_size: int, micro_size: int, devices: int) -> int:
    """Micro-batches accumulated per optimizer step so that a step sees ``global_size`` pairs."""
    per_pass = micro_size * devices
    if micro_size < 1 or global_size < per_pass or global_size % per_pass:
        raise ValueError(f"align.batch.global_size ({global_size}) must be a positive multiple of micro_size x devices "
                         f"({micro_size} x {devices} = {per_pass})")
    return global_size // per_pass


def generator_pairs(pairs: pd.DataFrame, profiles: pd.DataFrame | None, backbone: str) -> pd.DataFrame:
    """The pairs with ``prompt`` set to the prompt the aligned generator itself was given for that user.

    A pair's ``prompt`` is its chosen profile's prompt, rendered by whichever backbone wrote it;
    with several backbones that may be another model's template. The generator's own rendering
    comes from its rows of the profiles artifact; pairs of users it has no prompt for are dropped.
    """
    check_pairs(pairs)
    if profiles is None:
        return pairs
    own = profiles[profiles["backbone"] == backbone].drop_duplicates(["user_id", "prompt_name", "history_len"])
    key = ["user_id", "prompt_name", "history_len"]
    merged = pairs.drop(columns="prompt").merge(own.loc[:, [*key, "prompt"]], on=key, how="inner")
    if len(merged) < len(pairs):
        log.warning("%d of %d pairs dropped: the generator %s wrote no profile for their user",
                    len(pairs) - len(merged), len(pairs), backbone)
    return merged


def training_dtype(dtype: str, trainer_cfg: DictConfig) -> str:
    """The base weights' dtype: ``auto`` is what generation runs in on the training device (bfloat16 on
    CUDA and on CPUs with native bfloat16, else float32), so the adapter learns on the arithmetic it
    is later used with."""
    if dtype != "auto":
        return dtype
    on_gpu = str(trainer_cfg.get("accelerator", "cpu")) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return inference_dtype(torch.device("cuda" if on_gpu else "cpu"))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def align_fingerprint(cfg: DictConfig, method: str, pairs_fp: str) -> str:
    """What decides an adapter: the pairs, the generator model, the align settings (not `test`), method, seed."""
    settings = {k: v for k, v in _plain(cfg.align).items() if k not in ("test", "name", "sft_baseline")}
    return fingerprint({"pairs": pairs_fp, "model": str(cfg.backbone.model), "align": settings, "method": method,
                        "seed": int(cfg.seed), "precision": str(cfg.trainer.get("precision"))})


def build_module(method: str, model: Any, acfg: DictConfig) -> AdapterModule:
    """The LightningModule of ``method`` around a LoRA-wrapped model."""
    share = bool(acfg.share_prompt)
    if method == "dpo":
        return DpoModule(model, instantiate(acfg.dpo.optimizer), beta=float(acfg.dpo.beta), share_prompt=share,
                         precompute_reference=bool(acfg.dpo.precompute_reference))
    return SftModule(model, instantiate(acfg.sft.optimizer), share_prompt=share)


def _resume_checkpoint(folder: Path, fp: str) -> Path | None:
    """The last checkpoint of an interrupted run with the same inputs; otherwise a clean folder and None."""
    progress = folder / "_progress.json"
    last = folder / "last.ckpt"
    if progress.exists() and json.loads(progress.read_text()).get("fingerprint") == fp and last.exists():
        return last
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    progress.write_text(json.dumps({"fingerprint": fp}))
    return None


def _fit_lightning(ctx: RunContext, method: str, model: Any, tokenizer: Any, train: pd.DataFrame,
                   val: pd.DataFrame, fp: str) -> tuple[Any, dict[str, Any]]:
    """Train with our module through the configured Lightning Trainer; return the model and a summary."""
    acfg = ctx.cfg.align
    lengths = (int(acfg.data.max_prompt_tokens), int(acfg.data.max_completion_tokens))
    make = preference_examples if method == "dpo" else positive_examples
    train_examples, train_cut = make(train, tokenizer, *lengths)
    val_examples, val_cut = make(val, tokenizer, *lengths)
    train_cut.log(f"align {method} train")
    val_cut.log(f"align {method} val")
    micro = int(acfg.batch.micro_size)
    accumulate = accumulation_steps(int(acfg.batch.global_size), micro, device_count(ctx.cfg.trainer))
    data = AlignDataModule(train_examples, val_examples, micro, tokenizer.pad_token_id, int(ctx.cfg.seed))
    module = build_module(method, model, acfg)
    folder = ctx.run_dir / "align" / method
    resume = _resume_checkpoint(folder, fp)
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, every_n_train_steps=1)
    overrides = {} if acfg.get("precision") is None else {"precision": str(acfg.precision)}
    trainer = instantiate(
        ctx.cfg.trainer, **overrides, max_epochs=int(acfg.epochs), max_steps=int(acfg.max_steps),
        accumulate_grad_batches=accumulate, val_check_interval=1.0 / max(1, int(acfg.val_checks_per_epoch)),
        check_val_every_n_epoch=1, num_sanity_val_steps=0, callbacks=[checkpoint], default_root_dir=str(folder),
        logger=ctx.tracker.lightning_logger(), enable_checkpointing=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    summary = {
        "examples_train": len(train_examples), "examples_val": len(val_examples),
        "prompts_cut": train_cut.prompts_cut + val_cut.prompts_cut,
        "completions_cut": train_cut.completions_cut + val_cut.completions_cut,
        "accumulate_grad_batches": accumulate, "steps": int(trainer.global_step), "resumed": resume is not None,
        "val_history": module.history,
    }
    return module.model, summary


def _fit_trl(ctx: RunContext, model: Any, tokenizer: Any, train: pd.DataFrame, val: pd.DataFrame) -> tuple[Any, dict]:
    """Train DPO with TRL's DPOTrainer on the same pairs and settings; return the model and a summary."""
    from lettingo.align.trl_engine import train_with_trl

    acfg = ctx.cfg.align
    micro = int(acfg.batch.micro_size)
    lora = acfg.lora
    peft_config = lora_config(int(lora.r), float(lora.alpha), float(lora.dropout), list(lora.target_modules))
    trained, history = train_with_trl(
        model, peft_config, tokenizer, train, val, ctx.run_dir / "align" / "dpo_trl",
        beta=float(acfg.dpo.beta), lr=float(acfg.dpo.optimizer.lr), weight_decay=float(acfg.dpo.optimizer.weight_decay),
        micro_batch_size=micro, accumulate=accumulation_steps(int(acfg.batch.global_size), micro, 1),
        epochs=int(acfg.epochs), max_steps=int(acfg.max_steps),
        max_length=int(acfg.data.max_prompt_tokens) + int(acfg.data.max_completion_tokens),
        precompute_reference=bool(acfg.dpo.precompute_reference),
        max_grad_norm=float(ctx.cfg.trainer.get("gradient_clip_val") or 0.0), seed=int(ctx.cfg.seed),
    )
    return trained, {"examples_train": len(train), "examples_val": len(val), "trl_history": history,
                     "steps": len(history["train"])}


def align_method(ctx: RunContext, method: str, pairs: pd.DataFrame, pairs_fp: str) -> dict[str, Any]:
    """Train one method's adapter (or reuse it) and write the artifact ``adapter_<method>``."""
    cfg, store = ctx.cfg, ctx.store
    name, fp = adapter_artifact(method), align_fingerprint(cfg, method, pairs_fp)
    if store.is_done(name, fp):
        log.info("%s: reusing %s", name, store.path(name))
        return store.meta(name) or {}
    acfg = cfg.align
    seed_everything(int(cfg.seed))
    selected = select_pairs(pairs, None if acfg.data.max_pairs is None else int(acfg.data.max_pairs), int(cfg.seed))
    train, val = split_by_user(selected, float(acfg.data.val_fraction), int(cfg.seed))
    model, tokenizer = load_causal_lm(str(cfg.backbone.model), cfg.backbone.cache_dir,
                                      dtype=training_dtype(str(acfg.dtype), cfg.trainer), device="cpu")
    began = time.perf_counter()
    engine = str(acfg.engine)
    if engine == "trl" and method == "dpo":
        trained, summary = _fit_trl(ctx, model, tokenizer, train, val)
    elif engine in ("lightning", "trl"):
        trained, summary = _fit_lightning(ctx, method, attach_lora(model, acfg.lora), tokenizer, train, val, fp)
    else:
        raise ValueError(f"align.engine must be lightning or trl, got {engine!r}")
    seconds = time.perf_counter() - began
    save_adapter(trained, store.path(name))
    summary |= {"method": method, "engine": engine if method == "dpo" else "lightning", "pairs_train": len(train),
                "pairs_val": len(val), "users_train": int(train["user_id"].nunique()),
                "users_val": int(val["user_id"].nunique()), "seconds": seconds,
                "seconds_per_pair": seconds / max(1, len(train) * int(acfg.epochs))}
    store.finish(name, fp, **summary)
    return summary


def read_pairs(store: ArtifactStore) -> tuple[pd.DataFrame, str]:
    """The finished `pairs` artifact and its fingerprint."""
    meta = store.meta(PAIRS)
    if meta is None:
        raise RuntimeError(f"no finished pairs in {store.root}: run stage=evaluate first")
    return store.read_table(PAIRS), str(meta["fingerprint"])


def _report(method: str, summary: dict[str, Any]) -> dict[str, float]:
    """Print one line per method; return its tracker metrics (speed and the last validation metrics)."""
    history = summary.get("val_history") or []
    last = {k.removeprefix("align/val/"): v for k, v in (history[-1] if history else {}).items() if k != "step"}
    line = (f"align {method}: {summary.get('pairs_train', 0)} train pairs, {summary.get('steps', 0)} steps in "
            f"{summary.get('seconds', 0.0):.0f} s ({summary.get('seconds_per_pair', 0.0):.2f} s/pair)")
    if "rewards/margins" in last:
        line += (f"; held-out reward margin {last['rewards/margins']:+.3f}, "
                 f"accuracy {last['rewards/accuracies']:.2f}")
    print(line)
    metrics = {f"align/train/{method}/seconds_per_pair": float(summary.get("seconds_per_pair", 0.0))}
    return metrics | {f"align/val/{method}/{k}_final": float(v) for k, v in last.items()}


def run_align(ctx: RunContext) -> dict[str, Any]:
    """Stage align: train every configured method on the `pairs` artifact; write ``adapter_<method>``."""
    store = ctx.store
    pairs, pairs_fp = read_pairs(store)
    profiles = store.read_table(PROFILES) if store.meta(PROFILES) is not None else None
    pairs = generator_pairs(pairs, profiles, str(ctx.cfg.backbone.name))
    if pairs.empty:
        # Adapters left from earlier inputs would be tested as if trained on these pairs.
        for method in METHODS:
            shutil.rmtree(store.path(adapter_artifact(method)), ignore_errors=True)
        log.warning("align SKIPPED: no preference pairs for %s (every user's profiles were all right or all "
                    "wrong); the test stage compares the base methods only. Explore more users or profiles "
                    "(sampling.max_users, sampling.n) or try pairs=margin.", ctx.cfg.backbone.name)
        return {"skipped": "no preference pairs"}
    results = {}
    for method in methods_to_train(ctx.cfg.align):
        summary = align_method(ctx, method, pairs, pairs_fp)
        ctx.tracker.log_metrics(_report(method, summary))
        if summary.get("val_history"):
            ctx.tracker.log_table(f"align/val/{method}_history", pd.DataFrame(summary["val_history"]))
        results[method] = {**summary, "adapter": str(store.path(adapter_artifact(method)))}
    return results
