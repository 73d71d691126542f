"""Stage train_rec: fine-tune a trainable f_Rec on the rec_train users (nothing to do for a zero-shot one).

A tabular f_Rec that reads the profile (`recommender=tabular_reader`) is fitted here too, on the same users'
cases, by its own grid search, and pickled as the `rec_model` artifact.

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
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from lettingo.artifacts import REC_MODEL, REC_TRAIN_PROFILES, SAMPLES
from lettingo.data.splits import rec_train_users
from lettingo.llm.pool import backbones_by_name
from lettingo.profiles.oracle import oracle_profiles
from lettingo.recommender.tabular import TabularRecommender
from lettingo.recommender.training import RecDataModule, fit, split_users, training_cases
from lettingo.runtime import lightning_trainer, show
from lettingo.schemas import LettingoConfig
from lettingo.stages.base import TRAINER_DISPLAY, Output, Stage, StageContext, pace_keys

log = logging.getLogger(__name__)

#: The file of a tabular f_Rec's pickle in the rec_model artifact.
TABULAR_CHECKPOINT = "model.pkl"


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
            show(f"train_rec: {rec.name} is zero-shot; nothing to train")
        return {"recommender": rec.name, "trained": False}
    samples = ctx.read_table(SAMPLES)
    users = rec_train_users(samples, training.max_users)
    profiles = None
    if training.profiles_per_user > 0:
        profiles = wanted_profiles(conf, users, ctx.read_table(REC_TRAIN_PROFILES))
    fit_model = fit_tabular if is_tabular(rec.model) else train_model
    meta = ctx.make(REC_MODEL, lambda folder: fit_model(ctx, conf, users, profiles, folder))
    if not ctx.is_main:
        return {"recommender": rec.name, "trained": True, "rank": ctx.rank}
    show(f"train_rec: {rec.name} in {store.path(REC_MODEL)}: best validation {meta['select_by']} "
         f"{meta['val_score']:.3f} ({meta['val_cases']} cases)")
    return meta


def profile_sources(conf: LettingoConfig, users: pd.DataFrame, profiles: pd.DataFrame | None
                    ) -> tuple[dict[str, list[str]], dict[str, str] | None]:
    """Each user's generated profiles, and their oracle facts when `recommender.training.oracle_profile_rate` > 0."""
    texts = {} if profiles is None else profiles.groupby("user_id")["text"].apply(list).to_dict()
    wanted = conf.recommender.training.oracle_profile_rate > 0
    return texts, oracle_profiles(users, conf.history.length, asdict(conf.prompt.facts)) if wanted else None


def is_tabular(model_cfg: Any) -> bool:
    """Whether the f_Rec of ``model_cfg`` is fitted whole by its own grid search (a tabular one), not by Lightning."""
    return issubclass(get_class(model_cfg["_target_"]), TabularRecommender)


def fit_tabular(ctx: StageContext, conf: LettingoConfig, users: pd.DataFrame, profiles: pd.DataFrame | None,
                folder: Path) -> dict[str, Any]:
    """Fit a tabular f_Rec (`recommender=tabular_reader`) on the rec_train users' cases, pickled into ``folder``.

    The cases' profiles mix as for a Lightning f_Rec (`recommender.training`: generated, oracle facts, empty; a
    seeded draw per case); the item statistics come from the same users. Its user-grouped grid search is the
    validation, so no users are held out. A single-process fit: other ranks only wait for rank 0's artifact.
    """
    rec, training = conf.recommender, conf.recommender.training
    if not ctx.is_main:
        return {}
    began = time.perf_counter()
    texts, oracle = profile_sources(conf, users, profiles)
    cases = training_cases(users, texts, training.n_targets, training.empty_profile_rate, conf.seed,
                           training.empty_recent_rate, oracle, training.oracle_profile_rate)
    model = instantiate(rec.model).fit_cases(cases, users)
    model.save(folder / TABULAR_CHECKPOINT)
    seconds = time.perf_counter() - began
    ctx.tracker.log_metrics({f"train_rec/cv/{model.scoring}": model.cv_score_, "train_rec/train/seconds": seconds})
    return {"recommender": rec.name, "trained": True, "checkpoint": TABULAR_CHECKPOINT,
            "select_by": f"{model.scoring} ({model.cv_folds}-fold user-grouped CV)", "val_score": model.cv_score_,
            "val_cases": len(cases), "train_cases": len(cases), "train_users": len(users),
            "best_params": model.best_params_, "seconds": seconds}


def train_model(ctx: StageContext, conf: LettingoConfig, users: pd.DataFrame, profiles: pd.DataFrame | None,
                folder: Path) -> dict[str, Any]:
    """Fit the f_Rec on the rec_train users' cases, its checkpoints in ``folder``; return what its meta records.

    Every rank builds the same cases and joins the fit (the distributed sampler shards them).
    """
    rec, training = conf.recommender, conf.recommender.training
    select_by, seed = training.select_by, conf.seed
    began = time.perf_counter()
    texts, oracle = profile_sources(conf, users, profiles)
    train_users, val_users = split_users(users["user_id"].tolist(), training.val_fraction, seed)
    n_targets, oracle_rate = training.n_targets, training.oracle_profile_rate
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
    ctx.tracker.log_metrics({f"train_rec/val/best_{select_by}": result.val_score,
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
