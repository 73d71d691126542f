"""The LightningModule family of the aligned generator: a causal LM whose LoRA adapter is the only thing trained."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from peft import PeftModel

from lettingo.align.sharding import is_sharded, trainable_names

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
HISTORY_PREFIX = "align/val/"  # the keys of a validation-history row (results files read them)


class AdapterModule(L.LightningModule):
    """Trains the LoRA adapter of ``model``; subclasses define ``step`` (the loss and its metrics).

    Metrics are logged as ``<log_prefix>/<train|val>/<name>`` (the align stage sets ``align/<method>``); the
    validation history keeps them as ``align/val/<name>``, whatever the prefix. Checkpoints hold the adapter
    weights only (the frozen base is reloaded from its model folder), so they are small and quick to write.
    """

    strict_loading = False  # checkpoints carry the adapter only, not the frozen base
    loss_name = "loss"  # the loss is logged as <log_prefix>/<split>/<loss_name>
    log_prefix = "align"  # what logged metric keys start with

    def __init__(self, model: PeftModel, optimizer: OptimizerFactory, share_prompt: bool = True) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.share_prompt = share_prompt
        self.history: list[dict[str, float]] = []  # validation metrics after each validation run

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a batch and the metrics to log beside it."""
        raise NotImplementedError

    def _log_split(self, split: str, loss: torch.Tensor, metrics: dict[str, torch.Tensor], size: int) -> None:
        values = {self.loss_name: loss.detach(), **metrics}
        on_step = split == "train"
        self.log_dict({f"{self.log_prefix}/{split}/{k}": v for k, v in values.items()}, on_step=on_step,
                      on_epoch=not on_step, batch_size=size, sync_dist=not on_step, prog_bar=False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one micro-batch (Lightning scales it for gradient accumulation)."""
        loss, metrics = self.step(batch)
        self._log_split("train", loss, metrics, len(batch["index"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss and metrics on held-out examples, averaged over the validation set."""
        loss, metrics = self.step(batch)
        self._log_split("val", loss, metrics, len(batch["index"]))

    def on_validation_end(self) -> None:
        """Keep the validation metrics (aggregated by now) with the optimizer step they were measured at."""
        if self.trainer.sanity_checking:
            return
        logged = f"{self.log_prefix}/val/"
        row = {f"{HISTORY_PREFIX}{k.removeprefix(logged)}": float(v)
               for k, v in self.trainer.callback_metrics.items() if k.startswith(logged)}
        if row:
            self.history.append({"step": float(self.global_step), **row})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The configured optimizer over the trainable (adapter) parameters."""
        return self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip as the trainer says; under FSDP by the norm over every rank's shard (the root unit's
        ``clip_grad_norm_``: Lightning's FSDP refuses to clip by norm itself)."""
        strategy = self.trainer.strategy
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and is_sharded(strategy):
            strategy.model.clip_grad_norm_(float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen base weights from the checkpoint; keep the validation history.

        Names are compared without FSDP's wrapper prefixes: a sharded strategy's full state dict has none.
        """
        trainable = {f"model.{name}" for name in trainable_names(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["val_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the validation history of the interrupted run."""
        self.history = list(checkpoint.get("val_history", []))
