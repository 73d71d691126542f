"""Generation with a local transformers model: length-bucketed batches, shared prefill, seeded samples."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from lettingo.llm.base import Generation, GenerationBackend, Progress, sample_seed, validate_request
from lettingo.llm.decoding import PromptBatch, sample
from lettingo.llm.fast_decode import MASKED_SDPA
from lettingo.llm.models import load_causal_lm
from lettingo.llm.padding import pad_sequences
from lettingo.llm.peft_compat import peft_calls
from lettingo.llm.prompting import TokenizerPrompts
from lettingo.runtime import free_accelerator_cache

log = logging.getLogger(__name__)


class LocalBackend(TokenizerPrompts, GenerationBackend):
    """A transformers causal LM on this machine (CPU or one GPU).

    Prompts are sorted by token length and cut into batches of about ``batch_size`` sequences
    (``batch_size // n`` prompts, each sampled ``n`` times from one shared prefill), so little
    compute goes to padding; results come back in input order.
    """

    def __init__(
        self,
        name: str,
        model: str,
        cache_dir: str | Path,
        lead_in: str = "",
        batch_size: int = 32,
        dtype: str = "auto",
        device: str = "auto",
        adapter: str | Path | None = None,
    ) -> None:
        """Load ``model`` (see :func:`lettingo.llm.models.load_causal_lm`), optionally with a PEFT adapter merged in.

        ``dtype="auto"`` generates in bfloat16 on CUDA and on CPUs with native bfloat16, else in
        float32 (see :func:`lettingo.llm.models.resolve_dtype`). torch's CPU thread count is the process's
        (the entry point sets it: :func:`lettingo.runtime.seed_everything`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.lead_in = lead_in
        self.batch_size = batch_size
        self.model, self.tokenizer = load_causal_lm(model, cache_dir, dtype=dtype, device=device)
        if adapter is not None:
            from peft import PeftModel

            with peft_calls():
                self.model = PeftModel.from_pretrained(self.model, str(adapter)).merge_and_unload().eval()
        self.model.set_attn_implementation(MASKED_SDPA)
        self.stop_token_ids = self.stop_ids(self.model.generation_config.eos_token_id)

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        """See :meth:`GenerationBackend.generate`."""
        validate_request(n, temperature, max_new_tokens)
        encoded = [self.encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        per_batch = max(1, self.batch_size // n)
        results: list[list[Generation]] = [[] for _ in prompts]
        for start in range(0, len(order), per_batch):
            members = order[start : start + per_batch]
            seeds = [sample_seed(seed, prompts[i], j) for i in members for j in range(n)]
            began = time.perf_counter()
            sampled = sample(
                self.model,
                self._pad([encoded[i] for i in members]),
                n,
                seeds,
                temperature,
                max_new_tokens,
                self.stop_token_ids,
            )
            seconds = (time.perf_counter() - began) / len(sampled)
            for row, tokens in enumerate(sampled):
                i = members[row // n]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                results[i].append(Generation(text, len(encoded[i]), len(tokens), seconds))
            new_tokens = sum(len(t) for t in sampled)
            log.debug("batch of %d sequences: %d tokens in %.1f s", len(sampled), new_tokens, seconds * len(sampled))
            if progress is not None:
                progress(len(sampled), new_tokens)
        return results

    def _pad(self, sequences: list[list[int]]) -> PromptBatch:
        """Left-pad token lists into one batch on the model's device."""
        ids, mask = pad_sequences(sequences, self.tokenizer.pad_token_id)  # on the CPU, then one copy
        return PromptBatch(ids.to(self.model.device), mask.to(self.model.device))

    def close(self) -> None:
        """Drop the model and give its memory back (:func:`~lettingo.runtime.free_accelerator_cache`)."""
        del self.model
        free_accelerator_cache()
