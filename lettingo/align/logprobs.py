"""Summed log-probabilities of completions given their prompt, the quantity DPO and SFT train on.

A batch holds P distinct prompts and R distinct completions, each completion tied to its prompt
(all the profiles of one user share that user's prompt). With ``share_prompt`` each prompt is run
once and its KV cache (with its autograd graph) is gathered for every completion of that prompt,
which then runs on top of it: P*Lp + R*Lc tokens of compute instead of R*(Lp + Lc). Without it,
each prompt+completion is one left-padded row, as TRL's DPOTrainer concatenates them. Both give the
same numbers up to float rounding; only completion positions go through the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from lettingo.llm.kv_cache import cache_kwargs
from lettingo.llm.padding import pad_sequences


@dataclass(frozen=True)
class CompletionBatch:
    """P left-padded prompts and R right-padded completions; completion r follows prompt ``completion_prompt[r]``."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    completion_prompt: torch.Tensor


def _gather_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position, without materialising the whole log-softmax."""
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _shared_prompt_logps(model: PreTrainedModel, batch: CompletionBatch) -> torch.Tensor:
    """Per-token log-probs (R, C): one forward per prompt, its cache gathered for each of its completions."""
    owner = batch.completion_prompt
    positions = (batch.prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    prompt_out = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=positions,
                       use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    # The last prompt position predicts the first completion token (prompts are left-padded).
    first = prompt_out.logits[owner, -1]
    cache.batch_select_indices(owner)
    lengths = batch.prompt_mask.sum(-1)[owner]
    width = batch.completion_ids.shape[1]
    completion_positions = lengths[:, None] + torch.arange(width, device=lengths.device)
    mask = torch.cat([batch.prompt_mask[owner], batch.completion_mask], dim=-1)
    # The last completion position predicts nothing we score.
    rest = model(input_ids=batch.completion_ids, attention_mask=mask, position_ids=completion_positions,
                 use_cache=True, logits_to_keep=width, **cache_kwargs(model, cache)).logits[:, :-1]
    first_logps = _gather_logps(first, batch.completion_ids[:, 0])
    rest_logps = _gather_logps(rest, batch.completion_ids[:, 1:])
    return torch.cat([first_logps[:, None], rest_logps], dim=1)


def _concatenated_logps(model: PreTrainedModel, batch: CompletionBatch) -> torch.Tensor:
    """Per-token log-probs (R, C) with each prompt+completion as its own left-padded row."""
    rows = []
    for r, p in enumerate(batch.completion_prompt.tolist()):
        prompt = batch.prompt_ids[p][batch.prompt_mask[p].bool()]
        completion = batch.completion_ids[r][batch.completion_mask[r].bool()]
        rows.append(torch.cat([prompt, completion]))
    # The pad id is never attended to or scored: 0 serves.
    ids, mask = pad_sequences(rows, 0, side="left", device=batch.prompt_ids.device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    c = batch.completion_ids.shape[1]
    # Left padding puts every completion in the last C positions; keep the C + 1 logits that predict them.
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                   logits_to_keep=c + 1).logits[:, :-1]
    lengths = batch.completion_mask.sum(-1)
    # Row r's completion occupies the last lengths[r] positions; right-align the labels to match.
    shift = c - lengths
    index = (torch.arange(c, device=ids.device)[None, :] - shift[:, None]).clamp(min=0)
    aligned = torch.gather(batch.completion_ids, 1, index)
    logps = _gather_logps(logits, aligned)
    # Back to the right-padded completion layout so the caller's completion_mask applies.
    back = (torch.arange(c, device=ids.device)[None, :] + shift[:, None]).clamp(max=c - 1)
    return torch.gather(logps, 1, back)


def completion_token_logps(model: PreTrainedModel, batch: CompletionBatch, share_prompt: bool = True) -> torch.Tensor:
    """Log-probability of every completion token given its prompt, shape (R, C); padding positions are 0."""
    logps = _shared_prompt_logps(model, batch) if share_prompt else _concatenated_logps(model, batch)
    return logps * batch.completion_mask


def completion_logps(model: PreTrainedModel, batch: CompletionBatch, share_prompt: bool = True) -> torch.Tensor:
    """Summed log-probability of each completion given its prompt, shape (R,)."""
    return completion_token_logps(model, batch, share_prompt).sum(-1)
