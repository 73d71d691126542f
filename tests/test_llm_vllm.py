"""VLLMBackend: a clear error where vLLM is not installed; on a machine with vLLM (and a GPU), a real run."""

from __future__ import annotations

import importlib.util

import pytest

from lettingo.llm.vllm_backend import VLLMBackend

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here, so there is no missing-package error to check")
def test_without_vllm_construction_explains_what_to_do(tiny_model_cache) -> None:  # noqa: F811
    with pytest.raises(ImportError, match=r"backbone=vllm needs the `vllm` package"):
        VLLMBackend("vllm", "tiny_random", tiny_model_cache)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (GPU machines: pip install 'lettingo[vllm]')")
def test_vllm_generates_seeded_samples_in_order(tiny_model_cache) -> None:  # noqa: F811
    backend = VLLMBackend("vllm", "tiny_random", tiny_model_cache, gpu_memory_utilization=0.3, max_model_len=512)
    prompts = [backend.render(f"user {i} likes Toy Story") for i in range(3)]
    first = backend.generate(prompts, n=2, max_new_tokens=6, seed=4)
    assert [len(row) for row in first] == [2, 2, 2]
    assert all(g.prompt_tokens == backend.count_tokens(p) for p, row in zip(prompts, first, strict=True) for g in row)
    again = backend.generate(prompts[::-1], n=2, max_new_tokens=6, seed=4)[::-1]
    assert [[g.text for g in row] for row in again] == [[g.text for g in row] for row in first]
