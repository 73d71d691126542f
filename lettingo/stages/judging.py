"""Judging profiles, as the evaluate stage and every later on-policy round do it alike: the frozen f_Rec (none under
a rule reward), the rewards artifact of a set of profiles, its identity, and its preference pairs with the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from lettingo.artifacts import REC_MODEL, SAMPLES, write_table_data
from lettingo.feedback.pairs import format_pairs_summary
from lettingo.feedback.reliability import plan_pairs
from lettingo.feedback.rewards import RULE_REWARD, score_profiles
from lettingo.profiles.explore import KEY as PROFILE_KEY
from lettingo.recommender.loading import LazyRecommender
from lettingo.runtime import show
from lettingo.schemas import LettingoConfig, RecommenderSchema
from lettingo.stages.base import Output, StageContext, pace_keys


def frozen_recommender(ctx: StageContext, rec: RecommenderSchema) -> LazyRecommender:
    """The configured f_Rec, built on first use: zero-shot as configured, trainable from `rec_model`."""
    checkpoint = None
    if rec.trainable:
        meta = ctx.need(REC_MODEL)
        checkpoint = ctx.store.path(REC_MODEL) / meta["checkpoint"]
    return LazyRecommender(rec.name, rec.model, checkpoint)


def recommender_inputs(cfg: DictConfig) -> tuple[str, ...]:
    """The artifact that identifies the f_Rec: its checkpoint when trainable (a zero-shot one is its config)."""
    return (REC_MODEL,) if cfg.recommender.trainable else ()


def judge(ctx: StageContext, conf: LettingoConfig) -> LazyRecommender | None:
    """The f_Rec that rewards profiles under `evaluate.reward`; None for the rule reward, which reads only the text."""
    return None if conf.evaluate.reward == RULE_REWARD else frozen_recommender(ctx, conf.recommender)


def judge_identity(cfg: DictConfig) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """What a profile's reward depends on besides its text: (config keys, input artifacts, keys left out).

    The rule reward depends on the older history's mean rating, never on f_Rec; an f_Rec reward on f_Rec's
    model (without its pace keys) and, when trained, its checkpoint. Both on the reward and its targets.
    """
    rule = cfg.evaluate.reward == RULE_REWARD
    judged_by = ("history.length",) if rule else ("recommender.model",)
    return ((*judged_by, "evaluate.reward", "evaluate.targets_per_user"),
            () if rule else recommender_inputs(cfg), () if rule else pace_keys(cfg, "recommender.model"))


def rewards_output(cfg: DictConfig, name: str, profiles: str) -> Output:
    """The declaration of rewards artifact ``name`` of the profiles artifact ``profiles`` (row-keyed: grows with it).

    The users scored together change a verdict through rounding, as for generated texts.
    """
    config, inputs, pace = judge_identity(cfg)
    return Output(name, config=(*config, "evaluate.users_per_chunk"), inputs=(profiles, SAMPLES, *inputs),
                  grows_with=(profiles,), not_identity=pace)


def reward_profiles(ctx: StageContext, conf: LettingoConfig, profiles: pd.DataFrame, samples: pd.DataFrame,
                    name: str) -> pd.DataFrame:
    """The rewards artifact ``name`` of ``profiles``: each row's `evaluate.reward` over `evaluate.targets_per_user`
    targets (rows already written for this config are kept, so a killed run scores only the rest)."""
    evaluate = conf.evaluate
    return score_profiles(judge(ctx, conf), profiles, samples, ctx.rows(name, PROFILE_KEY), evaluate.users_per_chunk,
                          reward=evaluate.reward, targets=evaluate.targets_per_user, history=conf.history.length)


def write_pairs(ctx: StageContext, conf: LettingoConfig, rewards: pd.DataFrame, name: str,
                gate_prefix: str) -> dict[str, Any]:
    """The pairs artifact ``name`` from ``rewards`` under `pairs.*` (reused when finished); return its summary.

    The reliability gate runs first, its scalars logged under ``gate_prefix``: under `pairs.gate=require` a judge
    without learnable signal stops the run here, before any pairs exist for align. The summary holds the gate
    and the margin used.
    """
    plan = plan_pairs(rewards, conf.pairs)
    if metrics := plan.metrics(gate_prefix):
        ctx.tracker.log_metrics(metrics)
    if line := plan.report():
        show(line)

    def build(folder: Path) -> dict[str, Any]:
        pairs, summary = plan.pairs(rewards, conf.seed)
        return write_table_data(folder, pairs) | {"summary": summary}

    summary = ctx.make(name, build)["summary"]
    show(format_pairs_summary(summary, conf.pairs.rule))
    return summary
