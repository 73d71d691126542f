"""The decoding loop against a reference without any cache, for a GQA Llama and a sliding-window
Gemma 3 (tiny, random), passing its cache without deprecated keywords; the inverse-CDF sampler
against the distribution it samples; padding of token sequences."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from lettingo.llm.decoding import PromptBatch, sample, sample_tokens
from lettingo.llm.fast_decode import MASKED_SDPA, PreallocatedLayer
from lettingo.llm.kv_cache import cache_kwargs
from lettingo.llm.padding import pad_sequences


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
    batch = PromptBatch(*pad_sequences(prompts, pad_id=0))
    with warnings.catch_warnings():
        # transformers' FutureWarning for the old `past_key_values` keyword, once printed per decode step.
        warnings.simplefilter("error", FutureWarning)
        got = sample(model, batch, n=2, seeds=list(range(6)), temperature=0, max_new_tokens=6, stop_ids=[])
    assert got == [e for e in expected for _ in range(2)]


class _OldSignature(torch.nn.Module):
    """A model of a transformers release that took the cache only as ``past_key_values``."""

    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return input_ids


class _Wrapper(torch.nn.Module):
    """Stands for a PEFT model: keywords go on to the wrapped model."""

    def __init__(self, base: torch.nn.Module) -> None:
        super().__init__()
        self.base = base

    def get_base_model(self) -> torch.nn.Module:
        return self.base

    def forward(self, **kwargs):
        return self.base(**kwargs)


def test_the_cache_keyword_follows_the_model_signature() -> None:
    marker = object()
    assert cache_kwargs(tiny_llama(), marker) == {"cache": marker}
    assert cache_kwargs(_Wrapper(tiny_llama()), None) == {"cache": None}
    assert cache_kwargs(_OldSignature(), marker) == {"past_key_values": marker}
    assert cache_kwargs(_Wrapper(_OldSignature()), marker) == {"past_key_values": marker}


def test_pad_sequences_on_either_side() -> None:
    ids, mask = pad_sequences([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = pad_sequences([torch.tensor([5, 6, 7]), (8,)], pad_id=2, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="side"):
        pad_sequences([[1]], 0, side="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        pad_sequences([], 0)


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
