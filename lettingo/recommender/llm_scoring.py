"""Label-word scoring of a causal LM: P(like / neutral / dislike) from the answer position's logits.

The prompt is split in two at the profile: a *prefix* (chat header, instruction, recent items,
target) that all profiles of one user share, and a *suffix* (profile, question, answer header).
A case's tokens are always ``prefix ids + suffix ids``, each tokenized on its own, so every path
below feeds the model the same tokens: a padded batch of whole prompts, or one forward of a shared
prefix whose KV cache is copied for a batch of suffixes. The probability of a label is the softmax
over the three label words' first-token logits at the answer position (deterministic, no parsing).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from lettingo.data.schema import LABELS
from lettingo.llm.kv_cache import cache_kwargs
from lettingo.llm.padding import pad_sequences
from lettingo.recommender.cases import RecCase
from lettingo.recommender.text import ItemTextConfig, case_fields, fill


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one case's prompt: the shareable prefix and the per-profile suffix."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        """The whole prompt."""
        return [*self.prefix, *self.suffix]


@dataclass(frozen=True)
class PromptTemplate:
    """The f_Rec prompt: ``head`` (before the profile; no ``{profile}`` field) + ``tail`` (from the profile on).

    ``lead_in`` ends the prompt of a model without a chat template (e.g. ``"\\nAnswer:"``);
    ``empty_profile`` stands where a case has no profile.
    """

    head: str
    tail: str
    empty_profile: str = "(none)"
    lead_in: str = "\nAnswer:"

    def __post_init__(self) -> None:
        if "{profile}" in self.head or "{profile}" not in self.tail:
            raise ValueError("the f_Rec prompt needs {profile} in its tail and not in its head (the shared prefix)")


class LLMPromptEncoder:
    """Renders cases through the model's chat template (or ``lead_in``) and tokenizes prefix and suffix."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, item_text: ItemTextConfig) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.item_text = item_text
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def texts(self, case: RecCase) -> tuple[str, str]:
        """The rendered prefix and suffix strings of one case (their concatenation is the full prompt)."""
        fields = case_fields(case, self.item_text, self.template.empty_profile)
        head = fill(self.template.head, fields, "f_Rec prompt head")
        tail = fill(self.template.tail, fields, "f_Rec prompt tail").rstrip()
        if not self.chat:
            return head, tail + self.template.lead_in
        content = head + tail
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        start = rendered.find(content)
        if start < 0:
            raise ValueError("the chat template changed the f_Rec prompt's text; cannot find the profile's position")
        cut = start + len(head)
        return rendered[:cut], rendered[cut:]

    def encode(self, case: RecCase) -> EncodedPrompt:
        """Token ids of one case. A chat template writes its own special tokens; a plain prompt gets BOS."""
        prefix, suffix = self.texts(case)
        prefix_ids = self.tokenizer(prefix, add_special_tokens=not self.chat)["input_ids"]
        suffix_ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        return EncodedPrompt(tuple(prefix_ids), tuple(suffix_ids))


def label_token_ids(tokenizer: PreTrainedTokenizerBase, words: Mapping[str, str], leading_space: bool) -> list[int]:
    """First token id of each label's answer word, in LABELS order; they must all differ."""
    missing = [label for label in LABELS if label not in words]
    if missing:
        raise ValueError(f"label_words lacks {missing}")
    ids = [tokenizer((" " if leading_space else "") + str(words[label]), add_special_tokens=False)["input_ids"][0]
           for label in LABELS]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {dict(words)} share a first token; choose words that start differently")
    return ids


def answer_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    label_ids: Sequence[int],
    past: DynamicCache | None = None,
) -> torch.Tensor:
    """Logits of the label words at the last position of left-padded rows, shape (batch, 3).

    With ``past`` (a cache of a shared prefix, already repeated to the batch size), the rows
    continue that prefix: positions start after it and every row attends to all of it.
    """
    offset = 0 if past is None else past.get_seq_length()
    positions = offset + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if past is not None:
        attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], offset), attention_mask], dim=-1)
    device = model.device
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=positions.to(device),
        **cache_kwargs(model, past),
        use_cache=past is not None,
        logits_to_keep=1,
    )
    return out.logits[:, -1, list(label_ids)].float()


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@torch.no_grad()
def _score_whole(
    model: PreTrainedModel, encoded: Sequence[EncodedPrompt], members: Sequence[int], label_ids: Sequence[int],
    pad_id: int, batch_size: int, out: np.ndarray,
) -> None:
    """Whole prompts in padded batches (sorted by length, so little goes to padding)."""
    order = sorted(members, key=lambda i: len(encoded[i].ids))
    for batch in _batches(order, batch_size):
        ids, mask = pad_sequences([encoded[i].ids for i in batch], pad_id)
        out[batch] = torch.softmax(answer_logits(model, ids, mask, label_ids), dim=-1).cpu().numpy()


@torch.no_grad()
def _score_shared_prefix(
    model: PreTrainedModel, prefix: Sequence[int], encoded: Sequence[EncodedPrompt], members: Sequence[int],
    label_ids: Sequence[int], pad_id: int, batch_size: int, out: np.ndarray,
) -> None:
    """One forward of the prefix; its KV cache is copied for each batch of the members' suffixes."""
    device = model.device
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, **cache_kwargs(model, cache),
          logits_to_keep=1)
    for batch in _batches(members, batch_size):
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(batch))
        ids, mask = pad_sequences([encoded[i].suffix for i in batch], pad_id)
        out[batch] = torch.softmax(answer_logits(model, ids, mask, label_ids, past), dim=-1).cpu().numpy()


def score_prompts(
    model: PreTrainedModel,
    encoded: Sequence[EncodedPrompt],
    label_ids: Sequence[int],
    pad_id: int,
    batch_size: int = 8,
    reuse_prefix: bool = True,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Label probabilities (n, 3) in LABELS order for encoded prompts.

    With ``reuse_prefix``, prompts sharing a prefix (the profiles of one user) are scored from one
    prefix forward; prompts whose prefix nobody else shares are batched whole.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = np.zeros((len(encoded), len(label_ids)), dtype=np.float64)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, prompt in enumerate(encoded):
        groups[prompt.prefix if reuse_prefix else (i,)].append(i)
    singles = [i for members in groups.values() if len(members) == 1 for i in members]
    if singles:
        _score_whole(model, encoded, singles, label_ids, pad_id, batch_size, out)
        if progress:
            progress(len(singles))
    for prefix, members in groups.items():
        if len(members) > 1:
            _score_shared_prefix(model, prefix, encoded, members, label_ids, pad_id, batch_size, out)
            if progress:
                progress(len(members))
    return out


class LabelWordScorer:
    """Everything label-word scoring needs besides the model: prompt encoder, label ids, pad id."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: PromptTemplate,
        item_text: ItemTextConfig,
        label_words: Mapping[str, str],
    ) -> None:
        self.encoder = LLMPromptEncoder(tokenizer, template, item_text)
        # After a chat template's answer header the word starts a line; after a plain lead-in it follows a space.
        self.label_ids = label_token_ids(tokenizer, label_words, leading_space=not self.encoder.chat)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    @classmethod
    def from_config(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        prompt: Mapping[str, Any],
        item_text: Mapping[str, Any],
        label_words: Mapping[str, str],
    ) -> LabelWordScorer:
        """The scorer of an f_Rec config: its ``prompt``, ``item_text`` and ``label_words`` nodes."""
        return cls(tokenizer, PromptTemplate(**dict(prompt)), ItemTextConfig.from_mapping(item_text), dict(label_words))

    def encode(self, cases: Sequence[RecCase]) -> list[EncodedPrompt]:
        """Encoded prompts of cases, in order."""
        return [self.encoder.encode(case) for case in cases]

    def probabilities(
        self, model: PreTrainedModel, cases: Sequence[RecCase], batch_size: int, reuse_prefix: bool
    ) -> np.ndarray:
        """Label probabilities (n, 3) of cases under ``model`` (see :func:`score_prompts`)."""
        return score_prompts(model, self.encode(cases), self.label_ids, self.pad_id, batch_size, reuse_prefix)


def label_probabilities(logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """Label probabilities (n, 3) from each case's log-probabilities of the three label tokens: the softmax
    over the three, each label's share of them (what :func:`score_prompts` computes from the logits)."""
    rows = np.asarray(logprobs, dtype=np.float64).reshape(len(logprobs), len(LABELS))
    if not len(rows):
        return rows
    weights = np.exp(rows - rows.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)
