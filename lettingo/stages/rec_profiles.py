"""Stage rec_profiles: the base generators' profiles of the rec_train users, which a trainable f_Rec learns from.

They come from `sampling.backbones` through the explore function, into their own artifact
`rec_train_profiles`, so f_Rec learns from profiles like those it will judge. A single-process stage:
train_rec, which runs on every rank, only reads the finished artifact. Nothing is made for a zero-shot
f_Rec or for `recommender.training.profiles_per_user=0`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from omegaconf import DictConfig

from lettingo.artifacts import REC_TRAIN_PROFILES, SAMPLES
from lettingo.data.splits import rec_train_users
from lettingo.llm.pool import BackendPool, backbones_by_name
from lettingo.profiles.explore import KEY, explore
from lettingo.runtime import show
from lettingo.stages.base import Output, Stage, StageContext, backbones_pace_keys


def run(ctx: StageContext) -> dict[str, Any]:
    """Write (or grow, or resume) the `rec_train_profiles` artifact; nothing when no f_Rec learns from it."""
    if not outputs(ctx.cfg):
        show("rec_profiles: no trainable f_Rec learns from generated profiles; nothing to write")
        return {"rows": 0}
    conf = ctx.conf
    training, sampling = conf.recommender.training, conf.sampling
    users = rec_train_users(ctx.read_table(SAMPLES), training.max_users)
    with BackendPool(backbones_by_name(sampling.backbones)) as backends:
        frame = explore(
            users, backends, prompt_cfg=asdict(conf.prompt), item_text_cfg=asdict(conf.dataset.item_text),
            history_len=conf.history.length, n=training.profiles_per_user, temperature=sampling.temperature,
            max_new_tokens=sampling.max_new_tokens, seed=conf.seed, rows=ctx.rows(REC_TRAIN_PROFILES, KEY),
            users_per_chunk=sampling.users_per_chunk,
        )
    show(f"rec_profiles: {len(frame)} profiles of {frame['user_id'].nunique()} rec_train users in "
         f"{ctx.store.path(REC_TRAIN_PROFILES)}")
    return {"artifact": str(ctx.store.path(REC_TRAIN_PROFILES)), "rows": len(frame)}


#: What a rec_train profile depends on (how many users and profiles only add rows; as for `profiles`, the
#: prompts sharing a generate call are part of it).
REC_TRAIN_PROFILE_CONFIG = ("sampling.backbones", "sampling.temperature", "sampling.max_new_tokens",
                            "sampling.users_per_chunk", "prompt", "dataset.item_text", "history.length", "seed")


def outputs(cfg: DictConfig) -> list[Output]:
    """The rec_train users' profiles when a trainable f_Rec learns from at least one per user; else nothing."""
    if not cfg.recommender.trainable or cfg.recommender.training.profiles_per_user == 0:
        return []
    return [Output(REC_TRAIN_PROFILES, config=REC_TRAIN_PROFILE_CONFIG, inputs=(SAMPLES,),
                   grows_by=("recommender.training.max_users", "recommender.training.profiles_per_user"),
                   not_identity=backbones_pace_keys(cfg))]


STAGE = Stage(name="rec_profiles", run=run, needs=(SAMPLES,), outputs=outputs)
