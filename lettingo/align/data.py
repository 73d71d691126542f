"""Preference pairs and positive profiles as token ids, length-bucketed batches, and their DataModule.

An example is one prompt with K completions: DPO uses (chosen, rejected), SFT the chosen profile
alone. The prompt is the generator prompt exactly as exploration rendered it (chat template
included) and is tokenized the way the local backend feeds it to the model; each completion is the
profile text followed by EOS, and only completion tokens are scored.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lettingo.align.logprobs import CompletionBatch
from lettingo.llm.padding import pad_sequences
from lettingo.llm.prompting import TokenizerPrompts

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("user_id", "prompt", "chosen", "rejected")
Example = dict[str, Any]  # prompt_ids, completions (K token lists), optional ref_logps and rewards (K floats)


def check_pairs(pairs: pd.DataFrame) -> None:
    """Raise ``ValueError`` when the pairs table lacks a column alignment reads, or has empty texts."""
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"the pairs table lacks the columns {missing}; it has {list(pairs.columns)}")
    for column in ("prompt", "chosen", "rejected"):
        empty = pairs[column].fillna("").str.len() == 0
        if empty.any():
            raise ValueError(f"{int(empty.sum())} pairs have an empty {column!r} (first at row {int(empty.idxmax())})")


class _Prompts(TokenizerPrompts):
    """The generation backends' prompt rules over a bare tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.lead_in = tokenizer, ""


def prompt_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt exactly as the generation backends feed it to the model.

    A chat template writes its own special tokens (BOS included), so none are added; a plain
    completion prompt gets the tokenizer's special tokens, as the model saw in pre-training.
    """
    return _Prompts(tokenizer).encode(prompt)


def completion_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a profile followed by EOS (the model learns where a profile ends)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@dataclass(frozen=True)
class Truncation:
    """How many examples lost the start of their prompt, or the end of a completion, to the length caps."""

    examples: int
    prompts_cut: int
    completions_cut: int

    def log(self, what: str) -> None:
        """Log the counts (a warning when anything was cut)."""
        level = logging.WARNING if self.prompts_cut or self.completions_cut else logging.INFO
        log.log(level, "%s: %d examples, %d prompts cut (start dropped), %d completions cut (end dropped)",
                what, self.examples, self.prompts_cut, self.completions_cut)


def tokenize_examples(
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    max_prompt_tokens: int,
    max_completion_tokens: int,
) -> tuple[list[Example], Truncation]:
    """Tokenize prompts with their completions; prompts keep their END, completions their START.

    Keeping the end of the prompt keeps the instruction's tail and the generation prompt, which the
    completion follows directly.
    """
    if max_prompt_tokens < 1 or max_completion_tokens < 1:
        raise ValueError("max_prompt_tokens and max_completion_tokens must be at least 1")
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completion lists")
    examples: list[Example] = []
    prompts_cut = completions_cut = 0
    for prompt, texts in zip(prompts, completions, strict=True):
        prompt_ids = prompt_token_ids(tokenizer, prompt)
        if len(prompt_ids) > max_prompt_tokens:
            prompts_cut += 1
            prompt_ids = prompt_ids[-max_prompt_tokens:]
        ids = [completion_token_ids(tokenizer, t) for t in texts]
        if any(len(c) > max_completion_tokens for c in ids):
            completions_cut += 1
            ids = [c[:max_completion_tokens] for c in ids]
        examples.append({"prompt_ids": prompt_ids, "completions": ids})
    return examples, Truncation(len(examples), prompts_cut, completions_cut)


def preference_examples(pairs: pd.DataFrame, tokenizer: Any, max_prompt_tokens: int,
                        max_completion_tokens: int) -> tuple[list[Example], Truncation]:
    """DPO examples: (prompt, [chosen, rejected]) for each pair."""
    return tokenize_examples(tokenizer, list(pairs["prompt"]), list(zip(pairs["chosen"], pairs["rejected"],
                                                                        strict=True)),
                             max_prompt_tokens, max_completion_tokens)


def positive_examples(pairs: pd.DataFrame, tokenizer: Any, max_prompt_tokens: int,
                      max_completion_tokens: int) -> tuple[list[Example], Truncation]:
    """SFT examples: (prompt, [profile]) for each distinct correct profile of the pairs."""
    positives = pairs.drop_duplicates(["user_id", "prompt", "chosen"])
    return tokenize_examples(tokenizer, list(positives["prompt"]), [[c] for c in positives["chosen"]],
                             max_prompt_tokens, max_completion_tokens)


def select_pairs(pairs: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_pairs`` pairs, spread over users: every user's first pair before anyone's second."""
    shuffled = pairs.sample(frac=1.0, random_state=seed)
    if max_pairs is None or len(shuffled) <= max_pairs:
        return shuffled.reset_index(drop=True)
    rank = shuffled.groupby("user_id", sort=False).cumcount()
    return shuffled.assign(_rank=rank).sort_values("_rank", kind="stable").head(max_pairs).drop(
        columns="_rank").reset_index(drop=True)


def split_by_user(pairs: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation pairs with no user in both (a user's pairs share one prompt)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    users = sorted(pairs["user_id"].unique(), key=str)
    n_val = int(round(len(users) * val_fraction))
    if val_fraction > 0 and len(users) >= 2:
        n_val = min(max(n_val, 1), len(users) - 1)
    val_users = set(random.Random(seed).sample(users, n_val))
    in_val = pairs["user_id"].isin(val_users)
    return pairs[~in_val].reset_index(drop=True), pairs[in_val].reset_index(drop=True)


def example_order_key(example: Example) -> tuple[int, int, int]:
    """Sort key for bucketing: prompt length, then the prompt itself, so a user's examples end up side by side."""
    prompt = example["prompt_ids"]
    return len(prompt), hash(tuple(prompt)), sum(len(c) for c in example["completions"])


def length_buckets(keys: Sequence[Any], batch_size: int, seed: int, window: int = 32) -> list[list[int]]:
    """Index batches of similar keys: shuffle, sort within windows of ``window`` batches, cut, shuffle batches.

    Sorting only within windows keeps batches random enough while little compute goes to padding,
    and examples sharing a prompt mostly land in one batch, where the prompt runs once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    batches: list[list[int]] = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span].tolist(), key=lambda i: keys[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch: each distinct prompt once (left-padded), each distinct completion of a prompt once
    (right-padded), and ``completion_rows`` (examples x K) pointing every example at its completion rows.

    Also the examples' ``index`` and, when every example has them, their reference log-probs ``ref_logps``
    and their completions' ``rewards`` (GRPO's groups), each (examples x K).
    """
    prompts: dict[tuple[int, ...], int] = {}
    completions: dict[tuple[int, tuple[int, ...]], int] = {}
    rows = []
    for example in examples:
        p = prompts.setdefault(tuple(example["prompt_ids"]), len(prompts))
        rows.append([completions.setdefault((p, tuple(c)), len(completions)) for c in example["completions"]])
    prompt_ids, prompt_mask = pad_sequences(list(prompts), pad_id, side="left")
    completion_ids, completion_mask = pad_sequences([c for _, c in completions], pad_id, side="right")
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
             "completion_mask": completion_mask,
             "completion_prompt": torch.tensor([p for p, _ in completions], dtype=torch.long),
             "completion_rows": torch.tensor(rows, dtype=torch.long),
             "index": torch.tensor(list(indices), dtype=torch.long)}
    if all("ref_logps" in e for e in examples):
        batch["ref_logps"] = torch.tensor([e["ref_logps"] for e in examples], dtype=torch.float32)
    if all("rewards" in e for e in examples):
        batch["rewards"] = torch.tensor([e["rewards"] for e in examples], dtype=torch.float32)
    return batch


def completion_batch(batch: dict[str, torch.Tensor]) -> CompletionBatch:
    """The token part of a collated batch."""
    return CompletionBatch(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"],
                           batch["completion_prompt"])


class _Batches(Dataset):
    """A dataset whose items are whole, pre-bucketed batches (so a distributed sampler shards batches)."""

    def __init__(self, examples: list[Example], batches: list[list[int]], pad_id: int) -> None:
        self.examples, self.batches, self.pad_id = examples, batches, pad_id

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        members = self.batches[i]
        return collate([self.examples[j] for j in members], members, self.pad_id)


class EpochSeededSampler(Sampler[int]):
    """A shuffled order of ``n`` items that depends only on (seed, epoch).

    Lightning calls :meth:`set_epoch` before every epoch, so a run resumed from an epoch-end
    checkpoint visits the batches of every later epoch in the order an uninterrupted run does.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the order of epoch ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def batch_loader(examples: list[Example], batch_size: int, pad_id: int, seed: int, shuffle: bool) -> DataLoader:
    """A loader over length-bucketed batches of ``examples`` (one item per batch), shuffled per (seed, epoch)."""
    batches = length_buckets([example_order_key(e) for e in examples], batch_size, seed)
    sampler = EpochSeededSampler(len(batches), seed) if shuffle else None
    return DataLoader(_Batches(examples, batches, pad_id), batch_size=None, sampler=sampler)


class AlignDataModule(L.LightningDataModule):
    """Tokenized train and validation examples served in length-bucketed micro-batches.

    The example lists are shared with the module, which writes precomputed reference log-probs
    into them (``ref_logps``) before training.
    """

    def __init__(self, train: list[Example], val: list[Example], micro_batch_size: int, pad_id: int,
                 seed: int = 0) -> None:
        super().__init__()
        if not train:
            raise ValueError("no training examples: the pairs table is empty after selection")
        self.train, self.val = train, val
        self.micro_batch_size, self.pad_id, self.seed = micro_batch_size, pad_id, seed

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of similar lengths."""
        return batch_loader(self.train, self.micro_batch_size, self.pad_id, self.seed, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches (none when there is no validation split)."""
        if not self.val:
            return []
        return batch_loader(self.val, self.micro_batch_size, self.pad_id, self.seed, shuffle=False)
