"""LLM recommenders scored by label words: frozen zero-shot, and TALLRec-style LoRA fine-tuning."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lettingo.llm.models import load_causal_lm, resolve_device, resolve_dtype
from lettingo.llm.padding import pad_sequences
from lettingo.llm.peft_compat import peft_calls
from lettingo.recommender.base import Batch, RecClassifierModule, label_tensor
from lettingo.recommender.cases import RecCase
from lettingo.recommender.llm_scoring import LabelWordScorer, answer_logits


class ZeroShotLLM:
    """The paper's f_Rec: a frozen LLM reads the prompt and answers with one of the label words."""

    def __init__(
        self,
        name: str,
        model: str,
        cache_dir: str | Path,
        prompt: Mapping[str, Any],
        label_words: Mapping[str, str],
        item_text: Mapping[str, Any],
        batch_size: int = 8,
        reuse_prefix: bool = True,
        dtype: str = "auto",
        device: str = "auto",
    ) -> None:
        """Load ``model`` (see :func:`lettingo.llm.models.load_causal_lm`) with the f_Rec prompt.

        ``dtype="auto"`` scores in bfloat16 where the hardware computes it natively (2.6x faster on this
        project's CPU; still deterministic), else in float32 (see :func:`lettingo.llm.models.resolve_dtype`).
        """
        self.name = name
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.model, self.tokenizer = load_causal_lm(model, cache_dir, dtype=dtype, device=device)
        self.scorer = LabelWordScorer.from_config(self.tokenizer, prompt, item_text, label_words)

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        """Label probabilities (n, 3) in LABELS order."""
        return self.scorer.probabilities(self.model, cases, self.batch_size, self.reuse_prefix)


def lora_base_dtype(dtype: str | torch.dtype = "auto") -> torch.dtype:
    """The dtype of a trainable f_Rec's frozen base: ``dtype`` resolved for the device it trains on.

    That is CUDA when one is visible (Lightning's ``gpu`` and ``auto`` accelerators pick it), else the
    CPU; ``auto`` follows :func:`lettingo.llm.models.resolve_dtype` there (bfloat16 on CUDA and on CPUs
    with native bfloat16, else float32).
    """
    return resolve_dtype(dtype, resolve_device("auto"))


class LoraLLMModule(RecClassifierModule):
    """TALLRec-style f_Rec: the zero-shot prompt, a LoRA adapter trained on the label word's logit."""

    def __init__(
        self,
        name: str,
        model: str,
        cache_dir: str | Path,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
        lora: Mapping[str, Any],
        prompt: Mapping[str, Any],
        label_words: Mapping[str, str],
        item_text: Mapping[str, Any],
        batch_size: int = 8,
        reuse_prefix: bool = True,
        dtype: str = "auto",
    ) -> None:
        """Load ``model`` on the CPU (Lightning moves it) and wrap it in a PEFT LoRA adapter.

        The frozen base is loaded in :func:`lora_base_dtype` (``auto``: bfloat16 when it will train on
        CUDA, as an 8B base in float32 would not fit one GPU); PEFT keeps the adapter in float32.
        """
        from peft import LoraConfig, get_peft_model

        super().__init__(name, optimizer, predict_batch_size=batch_size)
        base, tokenizer = load_causal_lm(model, cache_dir, dtype=lora_base_dtype(dtype), device="cpu")
        lora = dict(lora)
        lora["target_modules"] = list(lora["target_modules"])
        with peft_calls():
            self.lm = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **lora))
        self.scorer = LabelWordScorer.from_config(tokenizer, prompt, item_text, label_words)
        self.reuse_prefix = reuse_prefix

    def collate(self, cases: Sequence[RecCase]) -> Batch:
        """Whole prompts, left-padded, with the true labels."""
        ids, mask = pad_sequences([e.ids for e in self.scorer.encode(cases)], self.scorer.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": label_tensor(cases)}

    def logits(self, batch: Batch) -> torch.Tensor:
        """Label-word logits at the answer position."""
        return answer_logits(self.lm, batch["input_ids"], batch["attention_mask"], self.scorer.label_ids)

    @torch.no_grad()
    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        """Label probabilities (n, 3), reusing each user's prefix cache like the zero-shot f_Rec."""
        was_training = self.training
        self.eval()
        out = self.scorer.probabilities(self.lm, cases, self.predict_batch_size, self.reuse_prefix)
        self.train(was_training)
        return out
