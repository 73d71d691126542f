"""GRPO (group-relative policy optimisation) on the generator's LoRA adapter, on the shared-prompt log-prob path.

A group is one user's prompt with the G profiles sampled for it and their rewards (the f_Rec's
verdicts, or any rule). Each profile's advantage is its reward minus the group's mean, divided by
the group's standard deviation (`scale_rewards="group"`), so only differences within a user teach.
The loss is TRL's ``GRPOTrainer`` default, ``loss_type="dapo"``, with one update per sampled batch
(``num_iterations=1``): the importance ratio ``exp(log pi - sg(log pi))`` is 1 in value, so PPO's
clip never binds, but its gradient is the policy gradient; per-token losses are summed over every
completion token of the batch and divided by their count (long profiles weigh by their length, as
in DAPO). ``beta`` > 0 adds TRL's per-token k3 KL estimate to the base model (the adapter
disabled), weighted by the ratio as TRL's default ``use_bias_correction_kl`` does; ``sft_weight``
> 0 adds the token-mean cross-entropy of each group's best profile (not in TRL: a guard against
degenerate text, as RPO's SFT term is for DPO).

Groups whose rewards are all equal have zero advantage and are dropped before training (DAPO's
dynamic sampling): they would cost a forward and backward and only dilute the token mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from peft import PeftModel

from lettingo.align.data import Example, Truncation, completion_batch, tokenize_examples
from lettingo.align.logprobs import completion_token_logps
from lettingo.align.module import AdapterModule, OptimizerFactory
from lettingo.align.sft import sft_loss

SAMPLE_COLUMNS = ("user_id", "prompt", "completion", "reward")
SCALE_REWARDS = ("group", "none")
STD_FLOOR = 1e-4  # TRL's: keeps the advantage finite when a group's rewards hardly differ


def check_samples(samples: pd.DataFrame) -> None:
    """Raise ``ValueError`` when the samples lack a column GRPO reads, have an empty prompt or a non-finite reward."""
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"the GRPO samples lack the columns {missing}; they have {list(samples.columns)}")
    empty = samples["prompt"].fillna("").str.len() == 0
    if empty.any():
        raise ValueError(f"{int(empty.sum())} samples have an empty 'prompt' (first at row {int(empty.idxmax())})")
    bad = ~np.isfinite(pd.to_numeric(samples["reward"], errors="coerce").to_numpy(dtype=float))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} samples have a missing or non-finite 'reward' (first at row "
                         f"{int(bad.argmax())})")


def sample_groups(samples: pd.DataFrame) -> list[pd.DataFrame]:
    """The samples of each (user, prompt) in first-seen order; all groups must have one size G >= 2."""
    check_samples(samples)
    groups = [g for _, g in samples.groupby(["user_id", "prompt"], sort=False)]
    sizes = sorted({len(g) for g in groups})
    if groups and (len(sizes) > 1 or sizes[0] < 2):
        raise ValueError(f"GRPO needs G >= 2 samples for every (user, prompt), the same G for all; found group "
                         f"sizes {sizes}")
    return groups


def informative_groups(samples: pd.DataFrame) -> list[pd.DataFrame]:
    """The (user, prompt) groups of ``samples`` whose rewards are not all equal: the only ones with an advantage."""
    return [g for g in sample_groups(samples) if g["reward"].nunique() > 1]


def group_examples(samples: pd.DataFrame, tokenizer: Any, max_prompt_tokens: int,
                   max_completion_tokens: int) -> tuple[list[Example], Truncation]:
    """GRPO examples: (prompt, its G completions, their ``rewards``) per (user, prompt); equal-reward groups dropped.

    Prompts and completions are tokenized and cut exactly as DPO's (see :func:`tokenize_examples`).
    """
    informative = informative_groups(samples)
    examples, cut = tokenize_examples(tokenizer, [g["prompt"].iloc[0] for g in informative],
                                      [list(g["completion"].fillna("")) for g in informative],
                                      max_prompt_tokens, max_completion_tokens)
    for example, group in zip(examples, informative, strict=True):
        example["rewards"] = [float(r) for r in group["reward"]]
    return examples, cut


def group_advantages(rewards: torch.Tensor, scale_rewards: str = "group") -> torch.Tensor:
    """Advantages (groups, G): reward minus its group's mean, over the group's std + 1e-4 with ``"group"``.

    The std is the unbiased one (Bessel's correction), as TRL's ``nanstd``.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    advantages = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + STD_FLOOR)
    return advantages


def grpo_loss(token_logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
              ref_token_logps: torch.Tensor | None = None, beta: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """TRL's on-policy ``dapo`` loss over completions (..., C), with the KL metric when ``beta`` > 0.

    ``token_logps``, ``mask`` and ``ref_token_logps`` are per completion token, ``advantages`` per
    completion (the leading shape). The loss is the sum over completion tokens of
    ``-ratio * A + beta * ratio * kl`` over the number of completion tokens, ``ratio`` being 1 with
    the policy's gradient.
    """
    ratio = torch.exp(token_logps - token_logps.detach())
    per_token = -ratio * advantages.unsqueeze(-1)
    tokens = mask.sum().clamp(min=1)
    metrics: dict[str, Any] = {}
    if beta:
        if ref_token_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        delta = ref_token_logps - token_logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * ratio * kl
        metrics["kl"] = (kl * mask).sum().detach() / tokens
    return (per_token * mask).sum() / tokens, metrics


@torch.no_grad()
def reference_token_logps(model: PeftModel, batch: dict[str, torch.Tensor], share_prompt: bool = True) -> torch.Tensor:
    """Per-token log-probs (R, C) of the batch's completions under the base model (the adapter disabled)."""
    with model.disable_adapter():
        return completion_token_logps(model, completion_batch(batch), share_prompt)


class GrpoModule(AdapterModule):
    """GRPO on group examples (prompt, G completions, their rewards); see the module docstring for the loss.

    Every completion of a batch is scored in one shared-prompt forward (each distinct prompt and
    completion once); metrics: the batch's mean reward and within-group std, and with ``beta`` the
    KL to the base model, with ``sft_weight`` the SFT term.
    """

    def __init__(self, model: PeftModel, optimizer: OptimizerFactory, beta: float = 0.0, sft_weight: float = 0.0,
                 scale_rewards: str = "group", share_prompt: bool = True) -> None:
        super().__init__(model, optimizer, share_prompt)
        if beta < 0 or sft_weight < 0:
            raise ValueError(f"beta and sft_weight must be >= 0, got {beta} and {sft_weight}")
        group_advantages(torch.zeros(1, 2), scale_rewards)  # refuses an unknown scaling now, not at the first step
        self.beta, self.sft_weight, self.scale_rewards = beta, sft_weight, scale_rewards

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """GRPO loss of a batch of groups with its metrics."""
        rows, rewards = batch["completion_rows"], batch["rewards"]
        tokens = completion_token_logps(self.model, completion_batch(batch), self.share_prompt)
        mask = batch["completion_mask"]
        reference = reference_token_logps(self.model, batch, self.share_prompt)[rows] if self.beta else None
        loss, metrics = grpo_loss(tokens[rows], mask[rows], group_advantages(rewards, self.scale_rewards),
                                  reference, self.beta)
        metrics |= {"reward/mean": rewards.mean(), "reward/group_std": rewards.std(dim=1).mean()}
        if self.sft_weight:
            best = rows.gather(1, rewards.argmax(dim=1, keepdim=True)).squeeze(1)
            sft = sft_loss(tokens, mask, best)
            loss = loss + self.sft_weight * sft
            metrics["sft_loss"] = sft.detach()
        return loss, metrics
