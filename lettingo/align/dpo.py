"""DPO (sigmoid loss) on the generator's LoRA adapter; the reference is the same base with the adapter off.

With ``sft_weight`` > 0 the loss adds the token-mean cross-entropy of the chosen profiles (RPO, TRL's
``loss_type=["sigmoid", "sft"]``): it counters likelihood displacement, where DPO lowers the chosen
profile's likelihood along with the rejected one's and the generator drifts into degenerate text.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from peft import PeftModel

from lettingo.align.data import Example, completion_batch
from lettingo.align.logprobs import completion_logps, completion_token_logps
from lettingo.align.module import AdapterModule, OptimizerFactory
from lettingo.align.sft import sft_loss
from lettingo.align.sharding import call_in_forward, is_sharded


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
                           share_prompt: bool = True, rank: int = 0, world: int = 1, lockstep: bool = False) -> int:
    """Write each example's reference log-probs into it (``ref_logps``); return how many were computed.

    ``loader`` yields collated batches of ``examples`` (``index`` points into it): pass the very
    loader training uses. In bfloat16 the rounding depends on a batch's padding, and a reference
    computed in other batches would differ from the still untrained policy by up to ~1 nat per
    profile. Batches whose examples all have them are skipped, so this runs once per dataset.

    With ``world`` > 1 processes (a collective: every rank calls it with the same examples and loader)
    rank ``rank`` computes every ``world``-th batch still to compute, and the rows of all ranks are
    gathered, so each rank ends with every example's reference, computed in the same batches.
    With ``lockstep`` (a sharded model, whose every forward is a collective) every rank runs as many
    forwards: a rank with one batch fewer reruns one and drops the result.
    """
    rows: dict[int, list[float]] = {}
    was_training = model.training
    model.eval()
    todo, spare = 0, None  # batches still without references (the same on every rank), one of them
    try:
        for batch in loader:
            members = batch["index"].tolist()
            if all("ref_logps" in examples[i] for i in members):
                continue
            todo, spare = todo + 1, batch if spare is None else spare
            if (todo - 1) % world != rank:
                continue
            logps = reference_logps(model, {k: v.to(model.device) for k, v in batch.items()}, share_prompt)
            rows.update(zip(members, logps.tolist(), strict=True))
        if lockstep and spare is not None:
            for _ in range(-(-todo // world) - len(range(rank, todo, world))):
                reference_logps(model, {k: v.to(model.device) for k, v in spare.items()}, share_prompt)
    finally:
        model.train(was_training)
    if world > 1:
        rows = gather_rows(rows, world)
    for i, row in rows.items():
        examples[i]["ref_logps"] = row
    return len(rows)


def gather_rows(rows: dict[int, list[float]], world: int) -> dict[int, list[float]]:
    """The union of every rank's ``rows`` (example index -> reference log-probs), on every rank."""
    import torch.distributed as dist

    shards: list[dict[int, list[float]] | None] = [None] * world
    dist.all_gather_object(shards, rows)
    return {i: row for shard in shards for i, row in (shard or {}).items()}


class DpoModule(AdapterModule):
    """DPO on preference examples (prompt, [chosen, rejected]) with the sigmoid loss and ``beta``.

    With ``precompute_reference`` the reference log-probs of the whole train and validation sets
    are computed once when fitting starts, in the datamodule's own batches (under DDP or FSDP each
    process computes its share of the batches and every process gets all of them; under FSDP inside
    the strategy wrapper's forward, as a step runs); batches without them get them on the fly.
    """

    def __init__(self, model: PeftModel, optimizer: OptimizerFactory, beta: float = 0.1, share_prompt: bool = True,
                 precompute_reference: bool = True, sft_weight: float = 0.0) -> None:
        super().__init__(model, optimizer, share_prompt)
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
        self.beta = beta
        self.precompute_reference = precompute_reference
        self.sft_weight = sft_weight

    def on_fit_start(self) -> None:
        """Precompute the reference log-probs of the train and validation examples."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.precompute_reference or datamodule is None:
            return
        # Under the training steps' precision (e.g. bf16 autocast), so that policy and reference
        # agree exactly while the adapter is still the identity.
        rank, world = self.trainer.global_rank, self.trainer.world_size
        sharded = is_sharded(self.trainer.strategy)

        def precompute() -> None:
            with self.trainer.precision_plugin.forward_context():
                for examples, loader in ((datamodule.train, datamodule.train_dataloader()),
                                         (datamodule.val, datamodule.val_dataloader())):
                    attach_reference_logps(self.model, examples, loader, self.share_prompt, rank, world, sharded)

        call_in_forward(self, precompute)

    def preference_loss(self, policy: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a batch's (chosen, rejected) log-probs under policy and reference, and the implicit rewards
        (``beta`` x log-ratio, shape like ``policy``): sigmoid DPO. A method of another loss overrides this."""
        return dpo_loss(policy, reference, self.beta)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DPO loss of a batch with its reward metrics (and the SFT term with ``sft_weight``)."""
        rows = batch["completion_rows"]
        tokens = completion_token_logps(self.model, completion_batch(batch), self.share_prompt)
        reference = batch["ref_logps"] if "ref_logps" in batch else reference_logps(self.model, batch,
                                                                                    self.share_prompt)
        loss, rewards = self.preference_loss(tokens.sum(-1)[rows], reference)
        metrics = reward_metrics(rewards)
        if self.sft_weight:
            sft = sft_loss(tokens, batch["completion_mask"], rows[:, 0])
            loss = loss + self.sft_weight * sft
            metrics["sft_loss"] = sft.detach()
        return loss, metrics
