"""SFT baseline: cross-entropy on the correct profiles only, same adapter and data path as DPO."""

from __future__ import annotations

import torch

from lettingo.align.data import completion_batch
from lettingo.align.logprobs import completion_token_logps
from lettingo.align.module import AdapterModule


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per completion token over the examples (``rows``: each example's row)."""
    return -token_logps.sum(-1)[rows].sum() / mask.sum(-1)[rows].sum().clamp(min=1)


class SftModule(AdapterModule):
    """Supervised fine-tuning on examples (prompt, [profile]); logs ``align/<split>/sft_loss``."""

    loss_name = "sft_loss"

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token-mean cross-entropy of the batch's completions."""
        tokens = completion_token_logps(self.model, completion_batch(batch), self.share_prompt)
        return sft_loss(tokens, batch["completion_mask"], batch["completion_rows"][:, 0]), {}
