"""Generation with vLLM's offline engine (GPU machines), optionally through a LoRA adapter."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from lettingo.llm.base import Generation, GenerationBackend, Progress, sample_seed, validate_request
from lettingo.llm.models import resolve_model_path
from lettingo.llm.prompting import TokenizerPrompts


class VLLMBackend(TokenizerPrompts, GenerationBackend):
    """``vllm.LLM`` over a local HF folder: bundled names are converted and Hub ids resolved through the HF cache
    first (:func:`lettingo.llm.models.resolve_model_path`, as for the local backend), so vLLM reads the same files.

    Every sample is its own request with its own seed (see :func:`sample_seed`), so results match
    the contract of the other backends; vLLM's prefix caching shares the prompt's prefill among
    the ``n`` samples. ``chunk_size`` prompts go to the engine at a time, ``progress`` after each.
    """

    def __init__(
        self,
        name: str,
        model: str,
        cache_dir: str | Path,
        lead_in: str = "",
        adapter: str | Path | None = None,
        max_lora_rank: int = 64,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        tensor_parallel_size: int = 1,
        chunk_size: int = 1024,
    ) -> None:
        """Start the engine; raises ``ImportError`` with instructions where vLLM is not installed."""
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(
                "backbone=vllm needs the `vllm` package, which runs on GPU machines (`pip install vllm`); "
                "on this machine use backbone=smollm2_135m (local transformers) or backbone=openai"
            ) from error
        self.name = name
        self.lead_in = lead_in
        self.chunk_size = chunk_size
        self.adapter = None if adapter is None else str(adapter)
        path = str(resolve_model_path(model, cache_dir))  # a local folder, also for a Hub id
        self.engine = LLM(
            model=path,
            tokenizer=path,
            trust_remote_code=False,
            dtype=dtype,
            enable_lora=self.adapter is not None,
            max_lora_rank=max_lora_rank,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=True,
        )
        self.tokenizer = self.engine.get_tokenizer()

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
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        validate_request(n, temperature, max_new_tokens)
        lora = None if self.adapter is None else LoRARequest("adapter", 1, self.adapter)
        jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
        results: list[list[Generation]] = [[] for _ in prompts]
        for start in range(0, len(jobs), self.chunk_size * n):
            chunk = jobs[start : start + self.chunk_size * n]
            inputs = [{"prompt_token_ids": self.encode(prompts[i])} for i, _ in chunk]
            params = [
                SamplingParams(
                    temperature=temperature, max_tokens=max_new_tokens, seed=sample_seed(seed, prompts[i], j)
                )
                for i, j in chunk
            ]
            began = time.perf_counter()
            outputs = self.engine.generate(inputs, params, lora_request=lora, use_tqdm=False)
            seconds = (time.perf_counter() - began) / len(chunk)
            for (i, _), output in zip(chunk, outputs, strict=True):
                completion = output.outputs[0]
                results[i].append(
                    Generation(completion.text, len(output.prompt_token_ids), len(completion.token_ids), seconds)
                )
            if progress is not None:
                progress(len(chunk), sum(len(o.outputs[0].token_ids) for o in outputs))
        return results

    def close(self) -> None:
        """Shut the engine down and free the GPU memory."""
        del self.engine
