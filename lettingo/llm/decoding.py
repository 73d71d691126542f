"""Batched sampling with a KV cache: one shared prefill per prompt, per-sequence random streams.

``model.generate`` draws every sequence of a batch from one random stream, so a sample depends on
which other prompts share its batch; and it prefills each of the ``n`` copies of a prompt
separately. This loop gives each sequence its own random stream, prefills each prompt once and
copies its cache ``n`` times, and drops finished sequences from the batch as it goes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from lettingo.llm.attention import preallocated_cache

BLOCK = 1024  # vocabulary block of the two-level inverse-CDF sampler


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts: ``input_ids`` and ``attention_mask`` of shape (prompts, length)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


@torch.inference_mode()
def sample(
    model: PreTrainedModel,
    batch: PromptBatch,
    n: int,
    seeds: Sequence[int],
    temperature: float,
    max_new_tokens: int,
    stop_ids: Sequence[int],
) -> list[list[int]]:
    """Sample ``n`` continuations of each prompt in ``batch``.

    Row ``i * n + j`` of the result is sample ``j`` of prompt ``i``, drawn from a generator
    seeded with ``seeds[i * n + j]``; ``temperature == 0`` is greedy. A sequence ends at the
    first token in ``stop_ids`` (not included) or after ``max_new_tokens`` tokens.
    """
    device = batch.input_ids.device
    rows = batch.input_ids.shape[0] * n
    if len(seeds) != rows:
        raise ValueError(f"need one seed per sequence ({rows}), got {len(seeds)}")
    streams = [random.Random(s) for s in seeds]
    stop = torch.tensor(list(stop_ids), device=device)

    mask = batch.attention_mask
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = preallocated_cache(model.config, capacity=mask.shape[1] + max_new_tokens)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1]
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        positions = positions.repeat_interleave(n, dim=0)
    position = positions[:, -1:]

    active = torch.arange(rows, device=device)  # which original sequence each batch row is
    tokens_out: list[list[int]] = [[] for _ in range(rows)]
    for step in range(max_new_tokens):
        if temperature == 0:
            chosen = logits.argmax(dim=-1)
        else:
            uniforms = torch.tensor([streams[i].random() for i in active.tolist()], device=device)
            chosen = sample_tokens(logits, uniforms, temperature)
        finished = torch.isin(chosen, stop)
        for row, token, done in zip(active.tolist(), chosen.tolist(), finished.tolist(), strict=True):
            if not done:
                tokens_out[row].append(token)
        if step == max_new_tokens - 1 or finished.all():
            break
        if finished.any():
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, chosen, mask, position = active[keep], chosen[keep], mask[keep], position[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        position = position + 1
        out = model(
            input_ids=chosen[:, None], attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True
        )
        logits = out.logits[:, -1]
    return tokens_out


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits / temperature)`` by inverting its CDF at ``uniforms``.

    One uniform number per row (from that sequence's own stream) decides the draw, so a row's
    token does not depend on the other rows. The CDF is searched in two levels, over blocks of
    the vocabulary and then inside one block, which avoids a cumulative sum over the whole
    vocabulary per row (262k entries for Gemma 3).
    """
    rows, vocab = logits.shape
    weights = logits.float() / temperature
    weights = (weights - weights.amax(dim=-1, keepdim=True)).exp_()
    weights = torch.nn.functional.pad(weights, (0, -vocab % BLOCK)).view(rows, -1, BLOCK)
    block_mass = weights.sum(dim=-1)
    block_cdf = block_mass.cumsum(dim=-1)
    target = (uniforms.to(block_cdf.dtype) * block_cdf[:, -1])[:, None]
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=block_cdf.shape[1] - 1)
    before = (block_cdf.gather(1, block) - block_mass.gather(1, block))
    inner_cdf = weights[torch.arange(rows, device=logits.device), block[:, 0]].cumsum(dim=-1) + before
    inner = torch.searchsorted(inner_cdf, target, right=True).clamp_(max=BLOCK - 1)
    return (block * BLOCK + inner)[:, 0].clamp_(max=vocab - 1)
