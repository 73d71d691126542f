"""Training one alignment method's LoRA adapter: batch arithmetic, the Lightning fit with epoch-end
checkpoints (a killed run resumes to the same adapter), and TRL's DPOTrainer as the other engine."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from lettingo.align.adapters import lora_config
from lettingo.align.data import AlignDataModule, check_pairs, positive_examples, preference_examples
from lettingo.align.grpo import group_examples
from lettingo.align.module import AdapterModule
from lettingo.align.sharding import gather_adapter, is_sharded
from lettingo.llm.memory import enable_gradient_checkpointing
from lettingo.llm.models import training_device
from lettingo.schemas import AlignMethodSchema, AlignSchema, check_global_batch, configured_processes

log = logging.getLogger(__name__)

#: How a method's training examples are built from the pairs (`align.method.<name>.examples`).
EXAMPLE_BUILDERS = {"preference": preference_examples, "positive": positive_examples, "group": group_examples}
LAST_CHECKPOINT = "last.ckpt"


def device_count(trainer_cfg: Mapping[str, Any]) -> int:
    """Processes that each run a micro-batch per step: devices x nodes (``-1``/``auto`` on GPU: all visible)."""
    configured = configured_processes(trainer_cfg)
    if configured is not None:
        return configured
    on_gpu = training_device(str(trainer_cfg.get("accelerator", "cpu"))).type == "cuda"
    return (torch.cuda.device_count() if on_gpu else 1) * int(trainer_cfg.get("num_nodes", 1))


def accumulation_steps(global_size: int, micro_size: int, devices: int) -> int:
    """Micro-batches accumulated per optimizer step so that a step sees ``global_size`` pairs (the rule the config
    check applies where the config names the devices; here also where only the machine knows them)."""
    check_global_batch(global_size, micro_size, devices)
    return global_size // (micro_size * devices)


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


def fit_lightning(acfg: AlignSchema, method_cfg: AlignMethodSchema, model: Any, tokenizer: Any, train: pd.DataFrame,
                  val: pd.DataFrame, make_trainer: Any, folder: Path, resume: bool, seed: int,
                  devices: int, log_prefix: str = "align",
                  ) -> tuple[Any, dict[str, Any], dict[str, torch.Tensor] | None]:
    """Train ``model`` (LoRA attached) with the method's module, logging under ``log_prefix``; checkpoints at
    epoch ends under ``folder``.

    With ``resume`` the fit continues from the last epoch-end checkpoint there: the interrupted epoch
    restarts with the order it had (see `EpochSeededSampler`), so the adapter equals an uninterrupted run's.
    Returns the trained model, a summary, and under a sharding strategy (FSDP) the adapter's gathered
    weights (on rank 0; pass them to `save_adapter`: the model's own are sharded), else None.
    """
    lengths = (acfg.data.max_prompt_tokens, acfg.data.max_completion_tokens)
    make = EXAMPLE_BUILDERS[method_cfg.examples]
    train_examples, train_cut = make(train, tokenizer, *lengths)
    val_examples, val_cut = make(val, tokenizer, *lengths)
    train_cut.log("align train")
    val_cut.log("align val")
    micro = acfg.batch.micro_size
    accumulate = accumulation_steps(acfg.batch.global_size, micro, devices)
    data = AlignDataModule(train_examples, val_examples, micro, tokenizer.pad_token_id, seed)
    module: AdapterModule = instantiate(method_cfg.module)(model)
    module.log_prefix = log_prefix
    if acfg.gradient_checkpointing:
        checkpoint_activations(module)
    # save_top_k=1 without a monitor keeps the newest epoch; Lightning writes last.ckpt only beside a save.
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=1, every_n_epochs=1,
                                 save_on_train_epoch_end=True)
    # No validation users (a round with a handful of pairs): no validation loop, rather than an empty one.
    validation = {"val_check_interval": 1.0 / acfg.val_checks_per_epoch} if val_examples else {"limit_val_batches": 0}
    trainer = make_trainer(
        max_epochs=acfg.epochs, max_steps=acfg.max_steps, accumulate_grad_batches=accumulate,
        check_val_every_n_epoch=1, num_sanity_val_steps=0, callbacks=[checkpoint], default_root_dir=str(folder),
        enable_checkpointing=True, **validation,
    )
    last = folder / LAST_CHECKPOINT
    resume = resume and last.exists()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    if trainer.interrupted:
        raise KeyboardInterrupt("align interrupted; rerun the same command to resume from the last epoch")
    weights = gather_adapter(trainer, module) if is_sharded(trainer.strategy) else None
    summary = {
        "examples_train": len(train_examples), "examples_val": len(val_examples),
        "prompts_cut": train_cut.prompts_cut + val_cut.prompts_cut,
        "completions_cut": train_cut.completions_cut + val_cut.completions_cut,
        "accumulate_grad_batches": accumulate, "steps": int(trainer.global_step),
        "resumed": resume, "val_history": module.history,
    }
    return module.model, summary, weights


def checkpoint_activations(module: AdapterModule) -> None:
    """Switch on gradient checkpointing of the module's policy (`align.gradient_checkpointing`).

    A checkpointed layer keeps no KV cache in training, so a prompt's cache cannot be shared by its
    completions: the module must run each prompt+completion as its own row (``share_prompt`` off).
    """
    if module.share_prompt:
        raise ValueError("align.gradient_checkpointing=true needs align.share_prompt=false: a checkpointed layer "
                         "keeps no KV cache in training, so the prompt's cache cannot be shared")
    enable_gradient_checkpointing(module.model.get_base_model())


def trl_loss_weights(method_cfg: AlignMethodSchema) -> list[float] | None:
    """TRL's ``loss_weights`` for a method: 1 per loss, ``module.sft_weight`` for its 'sft' term (None: all 1)."""
    if "sft" not in method_cfg.loss_type:
        return None
    return [float(method_cfg.module["sft_weight"]) if loss == "sft" else 1.0 for loss in method_cfg.loss_type]


def fit_trl(acfg: AlignSchema, method_cfg: AlignMethodSchema, model: Any, tokenizer: Any, train: pd.DataFrame,
            val: pd.DataFrame, folder: Path, seed: int, max_grad_norm: float) -> tuple[Any, dict[str, Any]]:
    """Train DPO with TRL's DPOTrainer on the same pairs and settings; return the model and a summary."""
    from lettingo.align.trl_engine import train_with_trl

    module, optimizer = method_cfg.module, method_cfg.module["optimizer"]
    micro, lora = acfg.batch.micro_size, acfg.lora
    peft_config = lora_config(lora.r, lora.alpha, lora.dropout, lora.target_modules)
    trained, history = train_with_trl(
        model, peft_config, tokenizer, train, val, folder,
        beta=module["beta"], lr=optimizer["lr"], weight_decay=optimizer["weight_decay"], micro_batch_size=micro,
        accumulate=accumulation_steps(acfg.batch.global_size, micro, 1), epochs=acfg.epochs,
        max_steps=acfg.max_steps, max_prompt_tokens=acfg.data.max_prompt_tokens,
        max_completion_tokens=acfg.data.max_completion_tokens,
        precompute_reference=module["precompute_reference"], max_grad_norm=max_grad_norm, seed=seed,
        loss_type=list(method_cfg.loss_type), loss_weights=trl_loss_weights(method_cfg),
    )
    return trained, {"examples_train": len(train), "examples_val": len(val), "trl_history": history,
                     "steps": len(history["train"])}
