"""The alternative DPO path (``align.engine=trl``): TRL's DPOTrainer on the same pairs, adapter and settings.

TRL tokenizes a plain-text prompt with the tokenizer's special tokens; our prompts are already
rendered with the chat template, which writes BOS itself, so for a tokenizer that adds BOS TRL would
see it twice. :func:`trl_prompt` hands TRL the prompt text that tokenizes to exactly our prompt ids.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import PreTrainedModel

from lettingo.align.data import prompt_token_ids

log = logging.getLogger(__name__)


def prompt_tail(tokenizer: Any, ids: list[int], max_tokens: int) -> str:
    """The text of the END of a prompt (token ids ``ids``) that TRL tokenizes to at most ``max_tokens`` tokens.

    The Lightning path keeps the last ``max_tokens`` ids; as text, TRL adds its special tokens and a cut may
    split a character, so a token or two fewer are kept where needed.
    """
    for keep in range(max_tokens, 0, -1):
        text = tokenizer.decode(ids[-keep:])
        if len(tokenizer(text)["input_ids"]) <= max_tokens:
            return text
    raise ValueError(f"no end of this prompt tokenizes to at most {max_tokens} tokens")


def trl_prompt(tokenizer: Any, prompt: str, max_tokens: int | None = None) -> str:
    """The prompt text whose TRL tokenization (special tokens added) equals :func:`prompt_token_ids` of ``prompt``;
    a prompt longer than ``max_tokens`` loses its start instead (:func:`prompt_tail`), as in the Lightning path."""
    ours = prompt_token_ids(tokenizer, prompt)
    if max_tokens is not None and len(ours) > max_tokens:
        return prompt_tail(tokenizer, ours, max_tokens)
    if tokenizer(prompt)["input_ids"] == ours:
        return prompt
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and tokenizer(prompt[len(bos):])["input_ids"] == ours:
        return prompt[len(bos):]
    raise ValueError("cannot express this prompt so that TRL tokenizes it as the generator saw it: "
                     f"{prompt[:80]!r}...")


def trl_dataset(pairs: pd.DataFrame, tokenizer: Any, max_prompt_tokens: int | None = None) -> Dataset:
    """Pairs as TRL's standard (non-conversational) preference format: prompt, chosen, rejected; prompts longer
    than ``max_prompt_tokens`` keep their end (TRL itself would cut the completions off and fail)."""
    prompts = [trl_prompt(tokenizer, p, max_prompt_tokens) for p in pairs["prompt"]]
    cut = 0 if max_prompt_tokens is None else \
        sum(len(prompt_token_ids(tokenizer, p)) > max_prompt_tokens for p in pairs["prompt"])
    if cut:
        log.warning("TRL DPO: %d of %d prompts cut to their last %d tokens (start dropped)", cut, len(prompts),
                    max_prompt_tokens)
    return Dataset.from_dict({"prompt": prompts, "chosen": list(pairs["chosen"]), "rejected": list(pairs["rejected"])})


def dpo_trainer(model: PreTrainedModel | PeftModel, tokenizer: Any, train: pd.DataFrame, val: pd.DataFrame | None,
                output_dir: Path, *, peft_config: LoraConfig | None = None, beta: float, lr: float,
                weight_decay: float, micro_batch_size: int, accumulate: int, epochs: int, max_steps: int,
                max_prompt_tokens: int | None, max_completion_tokens: int | None, precompute_reference: bool,
                max_grad_norm: float, seed: int, loss_type: list[str] | None = None,
                loss_weights: list[float] | None = None, **extra: Any) -> Any:
    """A TRL DPOTrainer configured like the Lightning module, with TRL's ``loss_type`` (default sigmoid) and
    ``loss_weights``; prompts are cut to ``max_prompt_tokens`` (start dropped), whole sequences to the two caps.

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
    max_length = None if max_prompt_tokens is None or max_completion_tokens is None \
        else max_prompt_tokens + max_completion_tokens
    settings = dict(
        output_dir=str(output_dir), beta=beta, loss_type=list(loss_type or ["sigmoid"]), loss_weights=loss_weights,
        learning_rate=lr, weight_decay=weight_decay,
        lr_scheduler_type="constant", warmup_steps=0, per_device_train_batch_size=micro_batch_size,
        per_device_eval_batch_size=micro_batch_size, gradient_accumulation_steps=accumulate,
        num_train_epochs=epochs, max_steps=max_steps, max_length=max_length,
        precompute_ref_log_probs=precompute_reference, gradient_checkpointing=on_gpu, max_grad_norm=max_grad_norm,
        use_cpu=not on_gpu, bf16=on_gpu, report_to="none", save_strategy="no", logging_steps=1,
        eval_strategy="epoch" if has_val else "no", seed=seed, dataloader_num_workers=0,
    )
    args = DPOConfig(**(settings | extra))  # `extra`: any other DPOConfig field, or one of the above overridden
    return DPOTrainer(model=model, args=args, processing_class=tokenizer,
                      train_dataset=trl_dataset(train, tokenizer, max_prompt_tokens),
                      eval_dataset=trl_dataset(val, tokenizer, max_prompt_tokens) if has_val else None,
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


def trl_metrics(history: Mapping[str, Sequence[Mapping[str, Any]]], prefix: str) -> list[dict[str, float]]:
    """TRL's log rows as the Lightning path logs them: ``<prefix>/train/<name>`` and ``<prefix>/val/<name>``
    (TRL's ``eval_`` dropped), with the optimizer step as ``trainer/global_step`` (Lightning's W&B x axis)."""
    rows = []
    for split, drop in (("train", ""), ("val", "eval_")):
        for row in history.get(split, ()):
            values = {f"{prefix}/{split}/{k.removeprefix(drop)}": float(v) for k, v in row.items()
                      if k not in ("step", "epoch") and isinstance(v, int | float)}
            rows.append(values | {"trainer/global_step": float(row.get("step", 0))})
    return rows
