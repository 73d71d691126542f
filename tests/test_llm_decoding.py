"""The decoding loop against a reference without any cache, for a GQA Llama and a sliding-window
Gemma 3 (tiny, random); and the inverse-CDF sampler against the distribution it samples."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from lettingo.llm.decoding import PromptBatch, sample, sample_tokens
from lettingo.llm.fast_decode import MASKED_SDPA, PreallocatedLayer


def tiny_llama() -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config)


def tiny_gemma3() -> torch.nn.Module:
    # A window of 4 tokens, far shorter than the prompts, so the sliding layers really slide.
    config = Gemma3TextConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        initializer_range=0.5,
        final_logit_softcapping=None,
    )
    return Gemma3ForCausalLM(config)


def greedy_without_cache(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Reference: the whole sequence through the model at every step, default attention, no padding."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3])
def test_cached_batched_greedy_matches_the_uncached_reference(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    prompts = [[5, 17, 3, 42, 8, 9, 11], [7, 7, 1], [60, 2, 33, 4, 19]]
    expected = [greedy_without_cache(model, p, 6) for p in prompts]
    model.set_attn_implementation(MASKED_SDPA)
    width = max(map(len, prompts))
    batch = PromptBatch(
        torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
        torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
    )
    got = sample(model, batch, n=2, seeds=list(range(6)), temperature=0, max_new_tokens=6, stop_ids=[])
    assert got == [e for e in expected for _ in range(2)]


def test_sampler_follows_the_softmax_distribution() -> None:
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0, -30.0])
    expected = torch.softmax(logits / 0.7, dim=0)
    rows = 40_000
    uniforms = torch.rand(rows, generator=torch.Generator().manual_seed(0))
    tokens = sample_tokens(logits.expand(rows, -1), uniforms, temperature=0.7)
    frequencies = torch.bincount(tokens, minlength=5).double() / rows
    assert torch.allclose(frequencies, expected.double(), atol=0.01)
    assert frequencies[4] == 0  # a token of probability ~1e-14 is never drawn


def test_sampler_across_vocabulary_blocks() -> None:
    # 3000 tokens span three blocks; all the mass sits on one token in each of the last two.
    logits = torch.full((2000, 3000), -1e4)
    logits[:, 1500], logits[:, 2999] = 0.0, 0.0
    tokens = sample_tokens(logits, torch.linspace(0.0, 0.9999, 2000), temperature=1.0)
    assert set(tokens.tolist()) == {1500, 2999}
    assert (tokens[:1000] == 1500).all() and (tokens[1000:] == 2999).all()


def test_preallocated_cache_refuses_to_overflow() -> None:
    layer = PreallocatedLayer(capacity=4)
    states = torch.randn(2, 1, 3, 8)
    keys, values = layer.update(states, states)
    assert torch.equal(keys, states) and layer.get_seq_length() == 3
    with pytest.raises(ValueError, match="capacity of 4"):
        layer.update(states, states)
