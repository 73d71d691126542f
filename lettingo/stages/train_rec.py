"""Stage train_rec: fine-tune a trainable f_Rec on the rec_train users (nothing to do for a zero-shot one).

A pure fit: the rec_train users' profiles are read from the artifact `rec_train_profiles` that stage
rec_profiles made, on every rank alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from lettingo.artifacts import REC_MODEL, REC_TRAIN_PROFILES, SAMPLES
from lettingo.data.splits import rec_train_users
from lettingo.llm.pool import backbones_by_name
from lettingo.profiles.oracle import oracle_profiles
from lettingo.recommender.training import RecDataModule, fit, split_users, training_cases
from lettingo.runtime import lightning_trainer
from lettingo.schemas import LettingoConfig
from lettingo.stages.base import TRAINER_DISPLAY, Output, Stage, StageContext, pace_keys

log = logging.getLogger(__name__)


def wanted_profiles(conf: LettingoConfig, users: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the rec_train profiles these users train on, in user, backbone, sample order.

    Every rank of a multi-process trainer reads them from the finished artifact, so every rank builds the
    very same training cases (the distributed sampler shards them).
    """
    n = conf.recommender.training.profiles_per_user
    user_rank = {u: i for i, u in enumerate(users["user_id"])}
    backbone_rank = {b: i for i, b in enumerate(backbones_by_name(conf.sampling.backbones))}
    keep = frame["user_id"].isin(user_rank) & frame["backbone"].isin(backbone_rank) & (frame["sample_idx"] < n)
    frame = frame[keep]
    order = pd.DataFrame({"u": frame["user_id"].map(user_rank), "b": frame["backbone"].map(backbone_rank),
                          "j": frame["sample_idx"]}).sort_values(["u", "b", "j"], kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def run(ctx: StageContext) -> dict[str, Any]:
    """Train the configured f_Rec into the `rec_model` artifact (reused when finished for the same inputs).

    Under a multi-process trainer every rank builds the same cases and joins the fit; only rank 0 writes
    the artifact.
    """
    conf, store = ctx.conf, ctx.store
    rec, training = conf.recommender, conf.recommender.training
    if training is None:  # only a trainable f_Rec has its training node
        if ctx.is_main:
            print(f"train_rec: {rec.name} is zero-shot; nothing to train")
        return {"recommender": rec.name, "trained": False}
    samples = ctx.read_table(SAMPLES)
    users = rec_train_users(samples, training.max_users)
    profiles = None
    if training.profiles_per_user > 0:
        profiles = wanted_profiles(conf, users, ctx.read_table(REC_TRAIN_PROFILES))
    meta = ctx.make(REC_MODEL, lambda folder: train_model(ctx, conf, users, profiles, folder))
    if not ctx.is_main:
        return {"recommender": rec.name, "trained": True, "rank": ctx.rank}
    print(f"train_rec: {rec.name} in {store.path(REC_MODEL)}: best validation {meta['select_by']} "
          f"{meta['val_score']:.3f} ({meta['val_cases']} cases)")
    return meta


def train_model(ctx: StageContext, conf: LettingoConfig, users: pd.DataFrame, profiles: pd.DataFrame | None,
                folder: Path) -> dict[str, Any]:
    """Fit the f_Rec on the rec_train users' cases, its checkpoints in ``folder``; return what its meta records.

    Every rank builds the same cases and joins the fit (the distributed sampler shards them).
    """
    rec, training = conf.recommender, conf.recommender.training
    select_by, seed = training.select_by, conf.seed
    began = time.perf_counter()
    texts = {} if profiles is None else profiles.groupby("user_id")["text"].apply(list).to_dict()
    train_users, val_users = split_users(users["user_id"].tolist(), training.val_fraction, seed)
    n_targets, oracle_rate = training.n_targets, training.oracle_profile_rate
    oracle = oracle_profiles(users, conf.history.length, asdict(conf.prompt.facts)) if oracle_rate > 0 else None
    train = training_cases(users[users["user_id"].isin(train_users)], texts, n_targets,
                           training.empty_profile_rate, seed, training.empty_recent_rate, oracle, oracle_rate)
    # Validation (checkpoint choice) sees profiles as the judged ones are: generated, and oracle facts in
    # the training share, never empty.
    val = training_cases(users[users["user_id"].isin(val_users)], texts, n_targets, 0.0, seed,
                         oracle=oracle, oracle_profile_rate=oracle_rate)
    module = instantiate(rec.model)
    data = RecDataModule(train, val, module.collate, training.batch_size, training.balance, seed)

    def make_trainer(**kwargs: Any) -> Any:
        return lightning_trainer(conf.trainer, **training.trainer, **kwargs)

    result = fit(module, data, make_trainer, folder, training.patience, logger=ctx.tracker.lightning_logger(),
                 select_by=select_by)
    summary = {
        "recommender": rec.name, "trained": True, "checkpoint": result.checkpoint.name,
        "select_by": select_by, "val_score": result.val_score, "epochs": result.epochs, "steps": result.steps,
        "train_cases": len(train), "val_cases": len(val), "train_users": len(train_users),
        "val_users": len(val_users), "seconds": time.perf_counter() - began,
        "cut_share": module.cut_share(),  # training and validation pairs longer than the model reads
    }
    ctx.tracker.log_metrics({f"train_rec/val/{select_by}": result.val_score,
                             "train_rec/train/seconds": summary["seconds"]})
    log.info("train_rec: %s trained on %d cases of %d users in %.0f s", rec.name, len(train), len(train_users),
             summary["seconds"])
    return summary


#: f_Rec model keys that only batch its scoring (`predict`), never its training or validation.
SCORING_ONLY = ("batch_size", "predict_batch_size", "reuse_prefix")


def outputs(cfg: DictConfig) -> list[Output]:
    """A trainable f_Rec makes its checkpoint from the rec_train users (and their profiles); a zero-shot one nothing."""
    if not cfg.recommender.trainable:
        return []
    model = cfg.recommender.model
    profiles = (REC_TRAIN_PROFILES,) if cfg.recommender.training.profiles_per_user > 0 else ()
    return [Output(REC_MODEL, config=("recommender.model", "recommender.training", "trainer", "prompt.facts", "seed"),
                   inputs=(SAMPLES, *profiles),
                   not_identity=(*TRAINER_DISPLAY, *pace_keys(cfg, "recommender.model"),
                                 *(f"recommender.model.{key}" for key in SCORING_ONLY if key in model)))]


STAGE = Stage(name="train_rec", run=run, needs=(SAMPLES,), outputs=outputs, distributed=True)
