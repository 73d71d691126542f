"""Training a trainable f_Rec: cases from rec_train users, a DataModule, a Lightning Trainer, the best checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, WeightedRandomSampler

from lettingo.data.schema import LABELS
from lettingo.recommender.base import Batch, RecClassifierModule, logged_key
from lettingo.recommender.cases import RecCase, label_codes, shifted_cases
from lettingo.schemas import BALANCE_MODES, SELECT_BY

log = logging.getLogger(__name__)


def split_users(user_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Users for training and for validation (early stopping), drawn with ``seed``; both non-empty."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    users = sorted(set(map(str, user_ids)))
    if len(users) < 2:
        raise ValueError(f"need at least 2 users to split into training and validation, got {len(users)}")
    order = np.random.default_rng(seed).permutation(len(users))
    n_val = min(max(1, round(val_fraction * len(users))), len(users) - 1)
    val = {users[i] for i in order[:n_val]}
    return [u for u in users if u not in val], [u for u in users if u in val]


def training_cases(
    samples: pd.DataFrame,
    profiles: Mapping[str, Sequence[str]],
    n_targets: int,
    empty_profile_rate: float,
    seed: int,
    empty_recent_rate: float = 0.0,
    oracle: Mapping[str, str] | None = None,
    oracle_profile_rate: float = 0.0,
) -> list[RecCase]:
    """Cases of the given users: for each of a user's profiles, `n_targets` shifted targets.

    Each case's profile is left empty with probability `empty_profile_rate` (seeded), so the same
    model learns to score the 10H baseline; with probability `oracle_profile_rate` it is replaced by
    the user's oracle facts (``oracle``: user id -> text), so the model learns what a faithful profile
    is worth beside the generated ones. A case left with a profile (generated or oracle facts) has its
    recent items dropped with probability `empty_recent_rate`, so the model must learn what the profile
    says about the user. A user without profiles gets empty-profile (and oracle-fact) cases.
    """
    rates = {"empty_profile_rate": empty_profile_rate, "empty_recent_rate": empty_recent_rate,
             "oracle_profile_rate": oracle_profile_rate}
    for name, rate in rates.items():
        if not 0 <= rate <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    if empty_profile_rate + oracle_profile_rate > 1:
        raise ValueError(f"empty_profile_rate + oracle_profile_rate must be at most 1, got "
                         f"{empty_profile_rate} + {oracle_profile_rate}")
    if oracle_profile_rate > 0 and oracle is None:
        raise ValueError("oracle_profile_rate > 0 needs the users' oracle profiles")
    replaced = empty_profile_rate + oracle_profile_rate
    rng = np.random.default_rng(seed)
    cases = []
    for sample in samples.to_dict("records"):
        user = str(sample["user_id"])
        for profile in profiles.get(user) or [""]:
            for case in shifted_cases(sample, profile, n_targets):
                draw = rng.random()
                if draw < empty_profile_rate:
                    case = case.with_profile("")
                elif draw < replaced:
                    case = case.with_profile(oracle[user])  # type: ignore[index]
                # A second draw only when it can act: at rate 0 the cases stay those of earlier runs.
                if case.profile and empty_recent_rate > 0 and rng.random() < empty_recent_rate:
                    case = case.without_recent()
                cases.append(case)
    return cases


def balanced_class_weights(cases: Sequence[RecCase]) -> list[float]:
    """Weights n / (C * count_c) per class (LABELS order); a class absent from training gets 0."""
    counts = np.bincount(label_codes(cases), minlength=len(LABELS)).astype(float)
    weights = np.divide(len(cases), len(LABELS) * counts, out=np.zeros_like(counts), where=counts > 0)
    return weights.tolist()


class RecDataModule(L.LightningDataModule):
    """Training and validation cases in batches built by the module's `collate`.

    ``balance="sampler"`` draws training cases with replacement, each class equally often in
    expectation; the other modes shuffle.
    """

    def __init__(
        self,
        train_cases: Sequence[RecCase],
        val_cases: Sequence[RecCase],
        collate: Callable[[Sequence[RecCase]], Batch],
        batch_size: int,
        balance: str = "none",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
        if not train_cases or not val_cases:
            raise ValueError(f"need training and validation cases, got {len(train_cases)} and {len(val_cases)}")
        self.train_cases, self.val_cases = list(train_cases), list(val_cases)
        self.collate, self.batch_size, self.balance, self.seed = collate, batch_size, balance, seed

    def train_dataloader(self) -> DataLoader:
        """Shuffled (or class-balanced) training batches, seeded."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.balance == "sampler":
            per_class = balanced_class_weights(self.train_cases)
            weights = [per_class[i] for i in label_codes(self.train_cases)]
            sampler = WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
            return DataLoader(self.train_cases, self.batch_size, sampler=sampler, collate_fn=self.collate)
        return DataLoader(self.train_cases, self.batch_size, shuffle=True, generator=generator, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in order; under DDP each rank's share, every case exactly once.

        Lightning's own distributed sampler would pad the shares with repeated cases, and the macro-F1
        gathered from every rank (see `RecClassifierModule.on_validation_epoch_end`) would count them twice.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return DataLoader(self.val_cases, self.batch_size, shuffle=False, collate_fn=self.collate)
        if len(self.val_cases) < trainer.world_size:
            raise ValueError(f"{len(self.val_cases)} validation cases for {trainer.world_size} processes: every "
                             "process needs one (more rec_train users, or a larger recommender.training.val_fraction)")
        sampler = UnrepeatedDistributedSampler(self.val_cases, num_replicas=trainer.world_size,
                                               rank=trainer.global_rank, shuffle=False)
        return DataLoader(self.val_cases, self.batch_size, sampler=sampler, collate_fn=self.collate)


def check_select_by(select_by: str) -> str:
    """``select_by`` if it names a validation metric of :data:`SELECT_BY`, else a one-line ValueError."""
    if select_by not in SELECT_BY:
        raise ValueError(f"recommender.training.select_by={select_by}: choose one of {', '.join(SELECT_BY)}")
    return select_by


@dataclass(frozen=True)
class FitResult:
    """Where the best checkpoint is and how it scored on validation (by the metric it was chosen by)."""

    checkpoint: Path
    val_score: float
    epochs: int
    steps: int


def fit(
    module: RecClassifierModule,
    data: RecDataModule,
    make_trainer: Callable[..., L.Trainer],
    checkpoint_dir: Path,
    patience: int,
    logger: Any = False,
    select_by: str = "macro_f1",
) -> FitResult:
    """Train with early stopping on validation ``select_by``; load the best checkpoint into ``module``.

    ``select_by`` is a key of :data:`SELECT_BY`: macro-F1 suits class-weighted training, validation
    loss (cross-entropy, a proper score) or accuracy a plain one judged by accuracy.

    ``make_trainer(logger=..., callbacks=...)`` builds the Trainer (from the ``trainer`` config). Under
    DDP the monitored metric is that of every rank's predictions together, so all ranks stop and keep
    the same checkpoint (written by rank 0).
    """
    if data.balance == "class_weights":
        module.set_class_weights(balanced_class_weights(data.train_cases))
    monitor, mode = logged_key("val", check_select_by(select_by)), SELECT_BY[select_by]
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
        save_weights_only=True, enable_version_counter=False,
    )
    stopping = EarlyStopping(monitor=monitor, mode=mode, patience=patience)
    trainer = make_trainer(logger=logger, callbacks=[checkpoint, stopping])
    trainer.fit(module, datamodule=data)
    if not checkpoint.best_model_path:
        raise RuntimeError("training wrote no checkpoint: did validation run? (check trainer.limit_val_batches)")
    load_checkpoint(module, Path(checkpoint.best_model_path))
    return FitResult(Path(checkpoint.best_model_path), float(checkpoint.best_model_score), trainer.current_epoch,
                     trainer.global_step)


def load_checkpoint(module: RecClassifierModule, path: Path) -> None:
    """Load the trainable state a checkpoint holds into ``module``."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_trainable_state(state)
