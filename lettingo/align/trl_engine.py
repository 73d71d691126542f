"""The alternative DPO path (``align.engine=trl``): TRL's DPOTrainer on the same pairs, adapter and settings.

TRL tokenizes a plain-text prompt with the tokenizer's special tokens; our prompts are already
rendered with the chat template, which writes BOS itself, so for a tokenizer that adds BOS TRL would
see it twice. :func:`trl_prompt` hands TRL the prompt text that tokenizes to exactly our prompt ids.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel

from lettingo.align.data import prompt_token_ids

log = logging.getLogger(__name__)


def trl_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt text whose TRL tokenization (special tokens added) equals :func:`prompt_token_ids` of ``prompt``."""
    ours = prompt_token_ids(tokenizer, prompt)
    if tokenizer(prompt)["input_ids"] == ours:
        return prompt
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and tokenizer(prompt[len(bos):])["input_ids"] == ours:
        return prompt[len(bos):]
    raise ValueError("cannot express this prompt so that TRL tokenizes it as the generator saw it: "
                     f"{prompt[:80]!r}...")


def trl_dataset(pairs: pd.DataFrame, tokenizer: Any) -> Dataset:
    """Pairs as TRL's standard (non-conversational) preference format: prompt, chosen, rejected."""
    return Dataset.from_dict({"prompt": [trl_prompt(tokenizer, p) for p in pairs["prompt"]],
                              "chosen": list(pairs["chosen"]), "rejected": list(pairs["rejected"])})


def dpo_trainer(model: PreTrainedModel | PeftModel, tokenizer: Any, train: pd.DataFrame, val: pd.DataFrame | None,
                output_dir: Path, *, peft_config: LoraConfig | None = None, beta: float, lr: float,
                weight_decay: float, micro_batch_size: int, accumulate: int, epochs: int, max_steps: int,
                max_length: int | None, precompute_reference: bool, max_grad_norm: float, seed: int,
                **extra: Any) -> Any:
    """A TRL DPOTrainer (sigmoid loss) configured like the Lightning module.

    Pass the base model with ``peft_config`` (TRL adds a fresh adapter; its reference is the base
    with the adapter disabled, as ours). Handed a PeftModel instead, TRL copies the adapter into a
    frozen "ref" adapter and uses that as the reference: the same thing only while the adapter is
    still the identity it starts as.

    Constant learning rate with AdamW, no gradient checkpointing on CPU, dropout disabled (TRL's
    default; with ``lora.dropout > 0`` the Lightning module keeps the adapter's dropout).
    """
    from trl import DPOConfig, DPOTrainer

    on_gpu = torch.cuda.is_available()
    has_val = val is not None and len(val) > 0
    settings = dict(
        output_dir=str(output_dir), beta=beta, loss_type=["sigmoid"], learning_rate=lr, weight_decay=weight_decay,
        lr_scheduler_type="constant", warmup_steps=0, per_device_train_batch_size=micro_batch_size,
        per_device_eval_batch_size=micro_batch_size, gradient_accumulation_steps=accumulate,
        num_train_epochs=epochs, max_steps=max_steps, max_length=max_length,
        precompute_ref_log_probs=precompute_reference, gradient_checkpointing=on_gpu, max_grad_norm=max_grad_norm,
        use_cpu=not on_gpu, bf16=on_gpu, report_to="none", save_strategy="no", logging_steps=1,
        eval_strategy="epoch" if has_val else "no", seed=seed, dataloader_num_workers=0,
    )
    args = DPOConfig(**(settings | extra))  # `extra`: any other DPOConfig field, or one of the above overridden
    return DPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=trl_dataset(train, tokenizer),
                      eval_dataset=trl_dataset(val, tokenizer) if has_val else None,
                      peft_config=peft_config)


def train_with_trl(model: PreTrainedModel, peft_config: LoraConfig, tokenizer: Any, train: pd.DataFrame,
                   val: pd.DataFrame, output_dir: Path, **settings: Any) -> tuple[PeftModel, dict[str, list[dict]]]:
    """Run TRL's DPOTrainer on ``model`` with a fresh adapter; return the trained PeftModel and TRL's log history."""
    trainer = dpo_trainer(model, tokenizer, train, val, output_dir, peft_config=peft_config, **settings)
    trainer.train()
    history = trainer.state.log_history
    log.info("TRL DPO finished: %d log rows", len(history))
    rows = {"train": [r for r in history if "loss" in r], "val": [r for r in history if "eval_loss" in r]}
    return trainer.model, rows
