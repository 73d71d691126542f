"""DPO (sigmoid loss) on the generator's LoRA adapter; the reference is the same base with the adapter off."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from peft import PeftModel

from lettingo.align.data import Example, completion_batch
from lettingo.align.logprobs import completion_logps
from lettingo.align.module import AdapterModule, OptimizerFactory


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss (batch mean) and the implicit rewards ``beta * (log pi - log ref)``, shape (P, 2).

    Column 0 is the chosen completion, column 1 the rejected one.
    """
    rewards = beta * (policy - reference)
    loss = -F.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()
    return loss, rewards.detach()


def reward_metrics(rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch means of the chosen and rejected rewards, their margin and how often chosen wins (as TRL logs them)."""
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean()}


def example_logps(model: PeftModel, batch: dict[str, torch.Tensor], share_prompt: bool = True) -> torch.Tensor:
    """Summed log-probs of each example's completions, shape (examples, K); each distinct one computed once."""
    return completion_logps(model, completion_batch(batch), share_prompt)[batch["completion_rows"]]


@torch.no_grad()
def reference_logps(model: PeftModel, batch: dict[str, torch.Tensor], share_prompt: bool = True) -> torch.Tensor:
    """Summed completion log-probs (examples, K) under the base model: the adapter disabled, no second copy."""
    with model.disable_adapter():
        return example_logps(model, batch, share_prompt)


def attach_reference_logps(model: PeftModel, examples: list[Example], loader: Iterable[dict[str, torch.Tensor]],
                           share_prompt: bool = True) -> int:
    """Write each example's reference log-probs into it (``ref_logps``); return how many were computed.

    ``loader`` yields collated batches of ``examples`` (``index`` points into it): pass the very
    loader training uses. In bfloat16 the rounding depends on a batch's padding, and a reference
    computed in other batches would differ from the still untrained policy by up to ~1 nat per
    profile. Batches whose examples all have them are skipped, so this runs once per dataset.
    """
    computed = 0
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            members = batch["index"].tolist()
            if all("ref_logps" in examples[i] for i in members):
                continue
            logps = reference_logps(model, {k: v.to(model.device) for k, v in batch.items()}, share_prompt)
            for i, row in zip(members, logps.tolist(), strict=True):
                examples[i]["ref_logps"] = row
            computed += len(members)
    finally:
        model.train(was_training)
    return computed


class DpoModule(AdapterModule):
    """DPO on preference examples (prompt, [chosen, rejected]) with the sigmoid loss and ``beta``.

    With ``precompute_reference`` the reference log-probs of the whole train and validation sets
    are computed once when fitting starts, in the datamodule's own batches (under DDP every
    process computes them for all examples); batches without them get them on the fly.
    """

    def __init__(self, model: PeftModel, optimizer: OptimizerFactory, beta: float = 0.1, share_prompt: bool = True,
                 precompute_reference: bool = True) -> None:
        super().__init__(model, optimizer, share_prompt)
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta = beta
        self.precompute_reference = precompute_reference

    def on_fit_start(self) -> None:
        """Precompute the reference log-probs of the train and validation examples."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.precompute_reference or datamodule is None:
            return
        # Under the training steps' precision (e.g. bf16 autocast), so that policy and reference
        # agree exactly while the adapter is still the identity.
        with self.trainer.precision_plugin.forward_context():
            attach_reference_logps(self.model, datamodule.train, datamodule.train_dataloader(), self.share_prompt)
            attach_reference_logps(self.model, datamodule.val, datamodule.val_dataloader(), self.share_prompt)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DPO loss of a batch with its reward metrics."""
        policy = example_logps(self.model, batch, self.share_prompt)
        reference = batch["ref_logps"] if "ref_logps" in batch else reference_logps(self.model, batch,
                                                                                    self.share_prompt)
        loss, rewards = dpo_loss(policy, reference, self.beta)
        return loss, reward_metrics(rewards)
