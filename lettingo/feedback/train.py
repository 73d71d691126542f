"""Stage train_rec: fine-tune a trainable f_Rec on the rec_train users; loading the `rec_model` for later stages.

The rec_train users' profiles come from the base generators (`sampling.backbones`) through the
explore function, into their own artifact, so f_Rec learns from profiles like those it will judge.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lettingo.artifacts import ArtifactStore, fingerprint
from lettingo.data.stage import load_or_build_samples, samples_fingerprint
from lettingo.profiles.explore import explore
from lettingo.profiles.stage import BackendPool, backbone_identity, backbones_by_name
from lettingo.recommender.base import Recommender
from lettingo.recommender.training import RecDataModule, fit, load_checkpoint, split_users, training_cases
from lettingo.runtime import RunContext

log = logging.getLogger(__name__)

REC_MODEL = "rec_model"
REC_TRAIN_PROFILES = "rec_train_profiles"
REC_TRAIN_SPLIT = "rec_train"
# Trainer keys that change where things go or how they are shown, not what is trained.
UNTRACKED_TRAINER_KEYS = ("default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps")
# f_Rec keys that change speed or location, not predictions.
UNTRACKED_MODEL_KEYS = ("cache_dir", "batch_size", "predict_batch_size", "reuse_prefix", "device")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def model_identity(cfg: DictConfig) -> dict[str, Any]:
    """The f_Rec's model config without the keys that do not change its predictions."""
    return {k: v for k, v in _plain(cfg.recommender.model).items() if k not in UNTRACKED_MODEL_KEYS}


def rec_train_samples(cfg: DictConfig, samples: pd.DataFrame) -> pd.DataFrame:
    """The rec_train users (the first `recommender.training.max_users` when set)."""
    users = samples[samples["split"] == REC_TRAIN_SPLIT]
    if users.empty:
        raise ValueError(f"the samples have no {REC_TRAIN_SPLIT!r} users; check dataset.splits")
    max_users = cfg.recommender.training.max_users
    return users if max_users is None else users.head(int(max_users))


def rec_train_profiles(cfg: DictConfig, users: pd.DataFrame, store: ArtifactStore) -> pd.DataFrame:
    """Profiles of the rec_train users from the base generators (artifact `rec_train_profiles`, resumable)."""
    configs = backbones_by_name(cfg.sampling.backbones)
    with BackendPool(configs) as backends:
        return explore(
            users, backends, prompt_cfg=cfg.prompt, item_text_cfg=cfg.dataset.item_text,
            history_len=int(cfg.history.length), n=int(cfg.recommender.training.profiles_per_user),
            temperature=float(cfg.sampling.temperature), max_new_tokens=int(cfg.sampling.max_new_tokens),
            seed=int(cfg.seed), store=store, artifact_name=REC_TRAIN_PROFILES,
            users_per_chunk=int(cfg.sampling.users_per_chunk), inputs={"backbones": backbone_identity(configs)},
        )


def rec_model_fingerprint(cfg: DictConfig, profiles_fp: str | None) -> str:
    """Fingerprint of everything the trained f_Rec depends on."""
    trainer = {k: v for k, v in _plain(cfg.trainer).items() if k not in UNTRACKED_TRAINER_KEYS}
    return fingerprint({
        "model": model_identity(cfg), "training": _plain(cfg.recommender.training), "trainer": trainer,
        "samples": samples_fingerprint(cfg), "profiles": profiles_fp, "seed": int(cfg.seed),
    })


def _profiles_fingerprint(store: ArtifactStore) -> str | None:
    meta = store.meta(REC_TRAIN_PROFILES)
    return None if meta is None else str(meta["fingerprint"])


def run_train_rec(ctx: RunContext) -> dict[str, Any]:
    """Stage train_rec: train the configured f_Rec (a no-op summary for a zero-shot one)."""
    cfg, rcfg, store = ctx.cfg, ctx.cfg.recommender, ctx.store
    if not rcfg.trainable:
        print(f"train_rec: {rcfg.name} is zero-shot; nothing to train")
        return {"recommender": str(rcfg.name), "trained": False}
    samples, _ = load_or_build_samples(cfg, store)
    users = rec_train_samples(cfg, samples)
    tcfg = rcfg.training
    profiles = rec_train_profiles(cfg, users, store) if int(tcfg.profiles_per_user) > 0 else None
    fp = rec_model_fingerprint(cfg, _profiles_fingerprint(store) if profiles is not None else None)
    if store.is_done(REC_MODEL, fp):
        meta = store.meta(REC_MODEL)
        print(f"train_rec: reusing {store.path(REC_MODEL)} (validation macro-F1 {meta['val_macro_f1']:.3f})")
        return meta
    began = time.perf_counter()
    texts = {} if profiles is None else profiles.groupby("user_id")["text"].apply(list).to_dict()
    train_users, val_users = split_users(users["user_id"].tolist(), float(tcfg.val_fraction), int(cfg.seed))
    n_targets, seed = int(tcfg.n_targets), int(cfg.seed)
    train = training_cases(users[users["user_id"].isin(train_users)], texts, n_targets,
                           float(tcfg.empty_profile_rate), seed, float(tcfg.empty_recent_rate))
    val = training_cases(users[users["user_id"].isin(val_users)], texts, n_targets, 0.0, seed)
    module = instantiate(rcfg.model)
    data = RecDataModule(train, val, module.collate, int(tcfg.batch_size), str(tcfg.balance), seed)
    folder = store.path(REC_MODEL)
    shutil.rmtree(folder, ignore_errors=True)

    def make_trainer(**kwargs: Any) -> Any:
        return instantiate(cfg.trainer, **_plain(tcfg.trainer), **kwargs)

    result = fit(module, data, make_trainer, folder, int(tcfg.patience), logger=ctx.tracker.lightning_logger())
    summary = {
        "recommender": str(rcfg.name), "trained": True, "checkpoint": result.checkpoint.name,
        "val_macro_f1": result.val_macro_f1, "epochs": result.epochs, "steps": result.steps,
        "train_cases": len(train), "val_cases": len(val), "train_users": len(train_users),
        "val_users": len(val_users), "seconds": time.perf_counter() - began,
    }
    store.finish(REC_MODEL, fp, **summary)
    ctx.tracker.log_metrics({"train_rec/val/macro_f1": result.val_macro_f1,
                             "train_rec/train/seconds": summary["seconds"]})
    print(f"train_rec: {rcfg.name} trained on {len(train)} cases of {len(train_users)} users in "
          f"{summary['seconds']:.0f} s; best validation macro-F1 {result.val_macro_f1:.3f} ({len(val)} cases)")
    return summary


def load_recommender(cfg: DictConfig, store: ArtifactStore) -> Recommender:
    """The configured f_Rec, ready to predict: zero-shot as configured, trainable from this run's `rec_model`."""
    recommender = instantiate(cfg.recommender.model)
    if not cfg.recommender.trainable:
        return recommender
    meta = store.meta(REC_MODEL)
    if meta is None:
        raise RuntimeError(f"{cfg.recommender.name} is not trained in {store.root}: run stage=train_rec first")
    with_profiles = int(cfg.recommender.training.profiles_per_user) > 0
    if meta["fingerprint"] != rec_model_fingerprint(cfg, _profiles_fingerprint(store) if with_profiles else None):
        raise RuntimeError(f"{store.path(REC_MODEL)} was trained with other inputs than this config: "
                           "rerun stage=train_rec")
    load_checkpoint(recommender, store.path(REC_MODEL) / meta["checkpoint"])
    recommender.eval()
    return recommender


def recommender_identity(cfg: DictConfig, store: ArtifactStore) -> dict[str, Any]:
    """What identifies the f_Rec whose verdicts an artifact holds (joins downstream fingerprints)."""
    if cfg.recommender.trainable:
        return {"rec_model": store.meta(REC_MODEL)["fingerprint"]}
    return {"model": model_identity(cfg)}
