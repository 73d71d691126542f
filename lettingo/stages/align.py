"""Stage align: train the generator's LoRA adapter with every method of `align.methods`, for `align.rounds` rounds.

Round 1 trains on the evaluate stage's `pairs` (a group method such as GRPO on its `rewards`); each later
round explores with the previous round's adapter first (see :mod:`lettingo.stages.rounds`). Each method
and round writes the artifact ``adapter_<method>[_r<round>]`` (PEFT format), reused when its inputs
(examples, generator, align settings, seed, previous adapter) are the same; the last round's replicas
(`align.method.<name>.seeds`) write ``..._s<seed>``. Training goes through the Lightning Trainer of the
`trainer` config; epoch-end checkpoints (adapter only) live under ``align/<method>[_r<round>][_s<seed>]/`` so
a killed run resumes to the adapter an uninterrupted run writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from lettingo.align.adapters import attach_lora, load_adapter, save_adapter
from lettingo.align.data import select_pairs, split_by_user
from lettingo.align.grpo import informative_groups
from lettingo.align.training import device_count, fit_lightning, fit_trl, generator_pairs
from lettingo.artifacts import ADAPTER_PREFIX, PAIRS, PROFILES, REWARDS, SAMPLES, adapter_artifact, round_artifact
from lettingo.llm.models import load_causal_lm, resolve_dtype, training_device
from lettingo.llm.pool import BackendPool
from lettingo.profiles.explore import KEY, explore, explore_split_samples
from lettingo.profiles.quality import format_summary, summarize_profiles
from lettingo.runtime import lightning_trainer, seed_everything, show
from lettingo.schemas import LettingoConfig
from lettingo.seeding import derive_seed
from lettingo.stages.base import Output, Stage, StageContext
from lettingo.stages.judging import reward_profiles, write_pairs
from lettingo.stages.rounds import (
    GROUP_EXAMPLES,
    adapter_generator,
    method_rounds,
    round_outputs,
    trained_adapters,
)

log = logging.getLogger(__name__)

NO_SIGNAL = "no preference pairs or informative groups"  # why a method's round trains nothing


def checkpoints(method: str, round_: int = 1, seed: int = 1) -> str:
    """The store name of the folder holding the epoch-end checkpoints of ``method``'s round (and training seed)
    while it trains."""
    return f"align/{adapter_artifact(method, round_, seed).removeprefix(ADAPTER_PREFIX)}"


def training_seed(conf: LettingoConfig, method: str, round_: int, seed: int) -> int:
    """The seed of the training randomness (LoRA init in round 1, data order) of ``method``'s ``round_`` with
    training seed ``seed``: the run's seed for the first, a seed derived from it for a replica."""
    # 31 bits: NumPy's global seed (seed_everything) takes at most 2**32 - 1.
    return conf.seed if seed == 1 else derive_seed(conf.seed, method, round_, "training seed", seed, bits=31)


def align_method(ctx: StageContext, conf: LettingoConfig, method: str, round_: int, examples: pd.DataFrame,
                 seed: int = 1) -> dict[str, Any]:
    """The artifact ``adapter_<method>[_r<round>][_s<seed>]``: reused when finished for this config, else trained.

    Under a multi-process trainer every rank reaches the same fits (rank 0's reuse and resume decisions);
    only rank 0 writes the checkpoints and the adapter.
    """
    name = adapter_artifact(method, round_, seed)
    meta = ctx.make(name, lambda folder: train_adapter(ctx, conf, method, round_, examples, folder, seed))
    return meta if ctx.is_main else {"method": method, "rank": ctx.rank}


def training_rows(conf: LettingoConfig, method: str, examples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and validation rows of ``examples``, no user in both: pairs spread over users up to
    `align.data.max_pairs`; a group method's (user, prompt, completion, reward) samples whole."""
    acfg, seed = conf.align, conf.seed
    if conf.align.method[method].examples != GROUP_EXAMPLES:
        examples = select_pairs(examples, acfg.data.max_pairs, seed)
    return split_by_user(examples, acfg.data.val_fraction, seed)


def train_adapter(ctx: StageContext, conf: LettingoConfig, method: str, round_: int, examples: pd.DataFrame,
                  folder: Path, seed_index: int = 1) -> dict[str, Any]:
    """Train ``method``'s LoRA adapter of ``round_`` on ``examples`` into ``folder``, resuming its epoch-end
    checkpoints when a killed run left them for this config; return what its meta records.

    Round 1 starts from a fresh adapter (the identity); a later round continues from the previous round's
    adapter, and the reference of DPO (the adapter switched off) stays the base model. Every training seed
    (``seed_index``) splits the examples into the same train and validation users.
    """
    acfg, method_cfg, trainer = conf.align, conf.align.method[method], conf.trainer
    seed = training_seed(conf, method, round_, seed_index)
    seed_everything(seed)
    train, val = training_rows(conf, method, examples)
    device = training_device(trainer.get("accelerator", "cpu"))
    model, tokenizer = load_causal_lm(conf.backbone["model"], conf.backbone["cache_dir"],
                                      dtype=resolve_dtype(acfg.dtype, device), device="cpu")
    began = time.perf_counter()
    engine = acfg.engine
    work = checkpoints(method, round_, seed_index)
    resume = ctx.resume(work, of=adapter_artifact(method, round_, seed_index))
    weights = None  # the adapter's gathered weights when the fit sharded the model
    if engine == "trl" and method_cfg.examples == "preference":
        from lettingo.align.trl_engine import trl_metrics

        if ctx.world > 1 or round_ > 1:
            raise ValueError("align.engine=trl trains round 1 in one process; use align.engine=lightning with a "
                             "multi-process trainer or align.rounds > 1")
        trained, summary = fit_trl(acfg, method_cfg, model, tokenizer, train, val, ctx.store.path(work), seed,
                                   trainer.get("gradient_clip_val") or 0.0)
        for row in trl_metrics(summary["trl_history"], metric_prefix(method)):
            ctx.tracker.log_metrics(row)
    else:
        overrides = {} if acfg.precision is None else {"precision": acfg.precision}

        def make_trainer(**kwargs: Any) -> Any:
            return lightning_trainer(trainer, **overrides, **kwargs, logger=ctx.tracker.lightning_logger())

        if round_ == 1:
            policy = attach_lora(model, asdict(acfg.lora))
        else:
            policy = load_adapter(model, ctx.store.path(adapter_artifact(method, round_ - 1)), trainable=True)
        trained, summary, weights = fit_lightning(acfg, method_cfg, policy, tokenizer, train, val, make_trainer,
                                                  ctx.store.path(work), resume, seed, device_count(trainer),
                                                  metric_prefix(method))
    if not ctx.is_main:
        return {}
    seconds = time.perf_counter() - began
    save_adapter(trained, folder, weights)
    return summary | {"method": method, "round": round_, "seed_index": seed_index, "training_seed": seed,
                      "engine": engine, "pairs_train": len(train),
                      "pairs_val": len(val), "users_train": int(train["user_id"].nunique()),
                      "users_val": int(val["user_id"].nunique()), "seconds": seconds,
                      "seconds_per_pair": seconds / max(1, len(train) * acfg.epochs)}


def metric_prefix(method: str) -> str:
    """Where a method's training curves are logged, the same for every round, seed and engine: `align/<method>`."""
    return f"align/{method}"


def report(method: str, summary: dict[str, Any]) -> dict[str, float]:
    """Print one line per method; return its tracker metrics (speed and the last validation metrics)."""
    history = summary.get("val_history") or []
    last = {k.removeprefix("align/val/"): v for k, v in (history[-1] if history else {}).items() if k != "step"}
    line = (f"align {method}: {summary.get('examples_train', 0)} train examples (of {summary.get('pairs_train', 0)} "
            f"rows: pairs, or a group method's samples), {summary.get('steps', 0)} steps in "
            f"{summary.get('seconds', 0.0):.0f} s ({summary.get('seconds_per_pair', 0.0):.2f} s per row)")
    if "rewards/margins" in last:
        line += (f"; held-out reward margin {last['rewards/margins']:+.3f}, "
                 f"accuracy {last['rewards/accuracies']:.2f}")
    show(line)
    metrics = {f"align/{method}/train/seconds_per_pair": float(summary.get("seconds_per_pair", 0.0))}
    return metrics | {f"align/{method}/val/{k.replace('/', '_')}_final": float(v) for k, v in last.items()}


def group_samples(rewards: pd.DataFrame) -> pd.DataFrame:
    """A group method's samples from rewarded profile rows: (user, prompt, completion, reward) per profile."""
    return rewards.rename(columns={"text": "completion"}).loc[:, ["user_id", "prompt", "completion", "reward"]]


def first_round_examples(ctx: StageContext, conf: LettingoConfig, method: str) -> pd.DataFrame:
    """Round 1's examples: the evaluate stage's pairs on the generator's own prompts, or for a group method the
    generator's own explored profiles with their rewards."""
    generator = conf.backbone["name"]
    if conf.align.method[method].examples == GROUP_EXAMPLES:
        rewards = ctx.read_table(REWARDS)
        return group_samples(rewards[rewards["backbone"] == generator])
    profiles = ctx.store.read_table(PROFILES) if ctx.store.meta(PROFILES) is not None else None
    return generator_pairs(ctx.read_table(PAIRS), profiles, generator)


def explore_round(ctx: StageContext, conf: LettingoConfig, method: str, round_: int) -> pd.DataFrame:
    """Round ``round_``'s profiles, written by the generator with the previous round's adapter for the users
    the explore stage explored, each with the frozen f_Rec's reward (artifacts profiles_ and rewards_<method>_r<r>)."""
    samples = ctx.read_table(SAMPLES)
    previous = adapter_artifact(method, round_ - 1)
    ctx.need(previous)
    generator = adapter_generator(conf, method, round_ - 1, str(ctx.store.path(previous)))
    sampling = conf.sampling
    with BackendPool({generator["name"]: generator}) as pool:
        profiles = explore(
            explore_split_samples(samples, sampling.splits), pool, prompt_cfg=asdict(conf.prompt),
            item_text_cfg=asdict(conf.dataset.item_text), history_len=conf.history.length, n=sampling.n,
            temperature=sampling.temperature, max_new_tokens=sampling.max_new_tokens,
            seed=derive_seed(conf.seed, method, round_), rows=ctx.rows(round_artifact(PROFILES, method, round_), KEY),
            max_users=sampling.max_users, users_per_chunk=sampling.users_per_chunk,
        )
    show(format_summary(summarize_profiles(profiles), f"{method} round {round_}"))
    return reward_profiles(ctx, conf, profiles, samples, round_artifact(REWARDS, method, round_))


def later_round_examples(ctx: StageContext, conf: LettingoConfig, method: str, round_: int) -> pd.DataFrame:
    """Round ``round_`` >= 2's examples, from profiles the previous round's adapter writes (see :func:`explore_round`):
    its own pairs under `pairs.*` (artifact pairs_<method>_r<r>), or a group method's samples."""
    rewards = explore_round(ctx, conf, method, round_)
    show(f"{method} round {round_}: mean reward {rewards['reward'].mean():.3f} over {len(rewards)} profiles")
    if conf.align.method[method].examples == GROUP_EXAMPLES:
        return group_samples(rewards)
    name = round_artifact(PAIRS, method, round_)
    write_pairs(ctx, conf, rewards, name, f"align/{method}_r{round_}/gate")
    return ctx.store.read_table(name)


def round_examples(ctx: StageContext, conf: LettingoConfig, method: str, round_: int) -> pd.DataFrame:
    """The examples ``method`` trains on in ``round_``, the same on every rank: a later round's are explored,
    judged and paired by rank 0 alone (its own reuse decisions), then shared; when that fails, every rank
    raises (the others with rank 0's error in one line) instead of waiting for examples that never come."""
    if round_ == 1:
        return first_round_examples(ctx, conf, method)
    outcome: tuple[bool, Any] = (False, None)
    if ctx.is_main:
        try:
            outcome = (True, later_round_examples(replace(ctx, agree=lambda value: value), conf, method, round_))
        except Exception as error:  # shared below, then raised on every rank
            outcome = (False, error)
    made, value = ctx.agree(outcome)
    if made:
        return value
    if ctx.is_main:
        raise value
    raise RuntimeError(f"rank 0 failed making round {round_} of {method}: {type(value).__name__}: {value}")


def has_signal(examples: pd.DataFrame, kind: str) -> bool:
    """Whether ``examples`` can teach anything: a pair, or a group whose rewards differ."""
    if kind != GROUP_EXAMPLES:
        return not examples.empty
    return bool(informative_groups(examples))


def run(ctx: StageContext) -> dict[str, Any]:
    """Train every method of `align.methods` for its rounds, the last one with each of its training seeds; write
    ``adapter_<method>[_r<round>][_s<seed>]``."""
    conf, store = ctx.conf, ctx.store
    results = {}
    for method in conf.align.methods:
        rounds = method_rounds(conf, method)
        for round_ in range(1, rounds + 1):
            examples = round_examples(ctx, conf, method, round_)
            if not has_signal(examples, conf.align.method[method].examples):
                # Adapters left from earlier inputs would be tested as if trained on these examples.
                for later, seed in trained_adapters(conf, method):
                    if later >= round_:
                        store.move_aside(adapter_artifact(method, later, seed))
                log.warning("align %s round %d SKIPPED: %s (every profile of a user got the same reward); the test "
                            "stage compares the earlier generators only. Explore more users or profiles "
                            "(sampling.max_users, sampling.n) or try pairs=margin.", method, round_, NO_SIGNAL)
                results[result_key(method, round_, 1)] = {"skipped": NO_SIGNAL}
                break
            seeds = conf.align.method[method].seeds if round_ == rounds else 1
            for seed in range(1, seeds + 1):
                summary = align_method(ctx, conf, method, round_, examples, seed)
                if ctx.is_main:
                    results[result_key(method, round_, seed)] = record(ctx, method, round_, seed, summary)
    return results


def result_key(method: str, round_: int, seed: int) -> str:
    """The key of an adapter's summary in the stage's results and tracker (`dpo`, `dpo_r2`, `dpo_r2_s2`)."""
    return adapter_artifact(method, round_, seed).removeprefix(ADAPTER_PREFIX)


def record(ctx: StageContext, method: str, round_: int, seed: int, summary: dict[str, Any]) -> dict[str, Any]:
    """Print and log one trained adapter's summary; return it with the adapter's folder."""
    key = result_key(method, round_, seed)
    ctx.tracker.log_metrics(report(key, summary))
    if summary.get("val_history"):
        ctx.tracker.log_table(f"align/{key}/val/history", pd.DataFrame(summary["val_history"]))
    return {**summary, "adapter": str(ctx.store.path(adapter_artifact(method, round_, seed)))}


def outputs(cfg: DictConfig) -> list[Output]:
    """Every round's artifacts of every method of `align.methods` (see :func:`round_outputs`)."""
    return [output for method in cfg.align.methods for output in round_outputs(cfg, str(method))]


STAGE = Stage(name="align", run=run, needs=(PAIRS,), outputs=outputs, distributed=True)
