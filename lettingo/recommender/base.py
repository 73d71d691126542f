"""The one interface every f_Rec offers, and the base of the trainable ones (a LightningModule)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lettingo.data.schema import LABELS
from lettingo.evaluation.metrics import classification_metrics
from lettingo.recommender.cases import RecCase, label_codes

#: The stage whose name starts every logged f_Rec curve (W&B keys are shared with the stage's own metrics).
LOG_PREFIX = "train_rec"


def logged_key(split: str, name: str) -> str:
    """The logged name of an f_Rec training curve: ``train_rec/<train|val>/<name>``."""
    return f"{LOG_PREFIX}/{split}/{name}"


@runtime_checkable
class Recommender(Protocol):
    """f_Rec: for each case, the probabilities of LABELS (rows sum to 1)."""

    name: str

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        """Probabilities of shape (len(cases), 3), columns in LABELS order."""
        ...


Batch = dict[str, torch.Tensor]


class RecClassifierModule(L.LightningModule):
    """A trainable f_Rec: 3-way cross-entropy on `logits(batch)`, validation macro-F1, `predict`.

    Subclasses build batches from cases (`collate`, with the true labels under ``labels``) and
    return label logits (`logits`). Checkpoints hold only the trainable parameters, so a LoRA
    checkpoint is the adapter, not the frozen base model.
    """

    def __init__(self, name: str, optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                 predict_batch_size: int = 32) -> None:
        super().__init__()
        self.name = name
        self.optimizer_factory = optimizer
        self.predict_batch_size = predict_batch_size
        self.register_buffer("class_weights", torch.ones(len(LABELS)))
        self.strict_loading = False  # checkpoints hold only the trainable state
        self._val_true: list[np.ndarray] = []
        self._val_pred: list[np.ndarray] = []

    def collate(self, cases: Sequence[RecCase]) -> Batch:
        """Tensors of a batch of cases, with the true label indices under ``labels``."""
        raise NotImplementedError

    def logits(self, batch: Batch) -> torch.Tensor:
        """Label logits of shape (batch, 3), in LABELS order."""
        raise NotImplementedError

    def cut_share(self) -> float | None:
        """Share of the cases collated so far that were cut to fit the model; None where not counted."""
        return None

    def set_class_weights(self, weights: Sequence[float]) -> None:
        """Per-class weights of the training loss (LABELS order)."""
        self.class_weights.copy_(torch.as_tensor(list(weights), dtype=torch.float32))

    def loss(self, batch: Batch) -> torch.Tensor:
        """Class-weighted cross-entropy of a batch."""
        return F.cross_entropy(self.logits(batch), batch["labels"], weight=self.class_weights)

    def on_fit_start(self) -> None:
        """Put every submodule in training mode (pretrained models are loaded in eval mode)."""
        self.train()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss."""
        loss = self.loss(batch)
        self.log(logged_key("train", "loss"), loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Collect predictions for the epoch's macro-F1."""
        logits = self.logits(batch)
        self.log(logged_key("val", "loss"), F.cross_entropy(logits, batch["labels"]), batch_size=len(batch["labels"]),
                 sync_dist=True)
        self._val_true.append(batch["labels"].cpu().numpy())
        self._val_pred.append(logits.argmax(-1).cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        """Log validation accuracy and macro-F1 over all validation cases (of every rank under DDP).

        Under a multi-process trainer each rank validates its shard of the cases; their predictions are
        gathered first, so every rank logs the macro-F1 of the whole validation set, the value that
        early stopping and the checkpoint choice agree on.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        true = np.concatenate(self._val_true) if self._val_true else np.zeros(0, dtype=np.int64)
        pred = np.concatenate(self._val_pred) if self._val_pred else np.zeros(0, dtype=np.int64)
        self._val_true.clear()
        self._val_pred.clear()
        if world > 1:
            true, pred = gather_codes(true), gather_codes(pred)
        if len(true) == 0:
            return
        scores = classification_metrics([LABELS[i] for i in true], [LABELS[i] for i in pred], LABELS)
        # Every rank holds the same value now; sync_dist only tells Lightning so (the mean of equal values).
        self.log(logged_key("val", "macro_f1"), scores["macro_f1"], prog_bar=True, sync_dist=True)
        self.log(logged_key("val", "accuracy"), scores["accuracy"], sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The configured optimizer over the trainable parameters."""
        return self.optimizer_factory([p for p in self.parameters() if p.requires_grad])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state entries of trainable parameters (and buffers such as the class weights)."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        buffers = {n for n, _ in self.named_buffers()}
        return {k: v for k, v in self.state_dict().items() if k in trainable or k in buffers}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable state in checkpoints."""
        checkpoint["state_dict"] = self.trainable_state()

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a checkpoint's trainable state; every saved entry must match a parameter here."""
        result = self.load_state_dict(dict(state), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint entries {result.unexpected_keys[:5]} do not belong to {self.name}")

    @torch.no_grad()
    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        """Label probabilities (n, 3) in eval mode, in batches of `predict_batch_size`."""
        was_training = self.training
        self.eval()
        out = np.zeros((len(cases), len(LABELS)))
        for start in range(0, len(cases), self.predict_batch_size):
            chunk = cases[start : start + self.predict_batch_size]
            batch = {k: v.to(self.device) for k, v in self.collate(chunk).items()}
            out[start : start + len(chunk)] = torch.softmax(self.logits(batch).float(), -1).cpu().numpy()
        self.train(was_training)
        return out


def gather_codes(codes: np.ndarray) -> np.ndarray:
    """The label codes of every rank, concatenated in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return codes
    shards: list[list[int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, [int(c) for c in codes])
    return np.asarray([c for shard in shards for c in shard or []], dtype=np.int64)


def label_tensor(cases: Sequence[RecCase]) -> torch.Tensor:
    """True label indices of cases as a tensor."""
    return torch.from_numpy(label_codes(cases))
