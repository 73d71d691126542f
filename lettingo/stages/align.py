"""Stage align: train the generator's LoRA adapter with every method of `align.methods` on the `pairs`.

Each method writes the artifact ``adapter_<method>`` (PEFT format), reused when its inputs (pairs,
generator, align settings, seed) are the same. Training goes through the Lightning Trainer of the
`trainer` config; epoch-end checkpoints (adapter only) live under ``align/<method>/`` so a killed
run resumes to the adapter an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from lettingo.align.adapters import attach_lora, save_adapter
from lettingo.align.data import select_pairs, split_by_user
from lettingo.align.training import device_count, fit_lightning, fit_trl, generator_pairs
from lettingo.artifacts import PAIRS, PROFILES, adapter_artifact
from lettingo.llm.models import load_causal_lm, resolve_dtype, training_device
from lettingo.runtime import lightning_trainer, seed_everything
from lettingo.schemas import LettingoConfig
from lettingo.stages.base import TRAINER_DISPLAY, Output, Stage, StageContext

log = logging.getLogger(__name__)


def checkpoints(method: str) -> str:
    """The store name of the folder holding ``method``'s epoch-end checkpoints while it trains."""
    return f"align/{method}"


def align_method(ctx: StageContext, conf: LettingoConfig, method: str, pairs: pd.DataFrame) -> dict[str, Any]:
    """The artifact ``adapter_<method>``: reused when finished for this config, else trained (:func:`train_adapter`).

    Under a multi-process trainer every rank reaches the same fits (rank 0's reuse and resume decisions);
    only rank 0 writes the checkpoints and the adapter.
    """
    name = adapter_artifact(method)
    meta = ctx.make(name, lambda folder: train_adapter(ctx, conf, method, pairs, folder))
    return meta if ctx.is_main else {"method": method, "rank": ctx.rank}


def train_adapter(ctx: StageContext, conf: LettingoConfig, method: str, pairs: pd.DataFrame,
                  folder: Path) -> dict[str, Any]:
    """Train ``method``'s LoRA adapter on ``pairs`` into ``folder``, resuming its epoch-end checkpoints
    (``align/<method>``) when a killed run left them for this config; return what its meta records."""
    acfg, method_cfg, seed, trainer = conf.align, conf.align.method[method], conf.seed, conf.trainer
    seed_everything(seed)
    selected = select_pairs(pairs, acfg.data.max_pairs, seed)
    train, val = split_by_user(selected, acfg.data.val_fraction, seed)
    device = training_device(trainer.get("accelerator", "cpu"))
    model, tokenizer = load_causal_lm(conf.backbone["model"], conf.backbone["cache_dir"],
                                      dtype=resolve_dtype(acfg.dtype, device), device="cpu")
    began = time.perf_counter()
    engine = acfg.engine
    work = checkpoints(method)
    resume = ctx.resume(work, of=adapter_artifact(method))
    weights = None  # the adapter's gathered weights when the fit sharded the model
    if engine == "trl" and method_cfg.examples == "preference":
        if ctx.world > 1:
            raise ValueError("align.engine=trl trains in one process; use align.engine=lightning with a "
                             "multi-process trainer")
        trained, summary = fit_trl(acfg, method_cfg, model, tokenizer, train, val, ctx.store.path(work), seed,
                                   trainer.get("gradient_clip_val") or 0.0)
    else:
        overrides = {} if acfg.precision is None else {"precision": acfg.precision}

        def make_trainer(**kwargs: Any) -> Any:
            return lightning_trainer(trainer, **overrides, **kwargs, logger=ctx.tracker.lightning_logger())

        trained, summary, weights = fit_lightning(acfg, method_cfg, attach_lora(model, asdict(acfg.lora)), tokenizer,
                                                  train, val, make_trainer, ctx.store.path(work), resume, seed,
                                                  device_count(trainer))
    if not ctx.is_main:
        return {}
    seconds = time.perf_counter() - began
    save_adapter(trained, folder, weights)
    return summary | {"method": method, "engine": engine, "pairs_train": len(train), "pairs_val": len(val),
                      "users_train": int(train["user_id"].nunique()), "users_val": int(val["user_id"].nunique()),
                      "seconds": seconds, "seconds_per_pair": seconds / max(1, len(train) * acfg.epochs)}


def report(method: str, summary: dict[str, Any]) -> dict[str, float]:
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
    return metrics | {f"align/val/{method}/{k.replace('/', '_')}_final": float(v) for k, v in last.items()}


def run(ctx: StageContext) -> dict[str, Any]:
    """Train every method of `align.methods` on the `pairs` artifact; write ``adapter_<method>``."""
    conf, store = ctx.conf, ctx.store
    generator = conf.backbone["name"]
    pairs = ctx.read_table(PAIRS)
    profiles = store.read_table(PROFILES) if store.meta(PROFILES) is not None else None
    pairs = generator_pairs(pairs, profiles, generator)
    if pairs.empty:
        # Adapters left from earlier inputs would be tested as if trained on these pairs.
        for method in conf.align.methods:
            store.move_aside(adapter_artifact(method))
        log.warning("align SKIPPED: no preference pairs for %s (every user's profiles were all right or all "
                    "wrong); the test stage compares the base methods only. Explore more users or profiles "
                    "(sampling.max_users, sampling.n) or try pairs=margin.", generator)
        return {"skipped": "no preference pairs"}
    results = {}
    for method in conf.align.methods:
        summary = align_method(ctx, conf, method, pairs)
        if not ctx.is_main:
            continue
        ctx.tracker.log_metrics(report(method, summary))
        if summary.get("val_history"):
            ctx.tracker.log_table(f"align/val/{method}_history", pd.DataFrame(summary["val_history"]))
        results[method] = {**summary, "adapter": str(store.path(adapter_artifact(method)))}
    return results


def outputs(cfg: DictConfig) -> list[Output]:
    """One adapter per method of `align.methods`: the align settings in full, with its own method's node only."""
    def others(method: str) -> tuple[str, ...]:
        return tuple(f"align.method.{other}" for other in cfg.align.method if other != method)

    return [Output(adapter_artifact(str(m)), config=("align", "backbone.model", "trainer", "seed"),
                   inputs=(PAIRS, PROFILES), not_identity=("align.methods", *others(str(m)), *TRAINER_DISPLAY))
            for m in cfg.align.methods]


STAGE = Stage(name="align", run=run, needs=(PAIRS,), outputs=outputs, distributed=True)
