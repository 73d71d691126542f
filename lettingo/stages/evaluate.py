"""Stage evaluate: f_Rec's verdict on every explored profile, the preference pairs, the shuffle check,
and the baselines table on the held-out users."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from lettingo.artifacts import (
    BASELINES,
    JSON_FILE,
    PAIRS,
    PROFILES,
    REWARDS,
    SAMPLES,
    SENSITIVITY,
    TABULAR_MODELS,
    atomic_path,
    write_json_atomic,
)
from lettingo.data.schema import LABELS, LabelThresholds
from lettingo.data.splits import REC_TRAIN, split_role
from lettingo.evaluation.comparison import FILE_STEM as COMPARISON
from lettingo.evaluation.comparison import Comparison, read_comparison
from lettingo.evaluation.methods import ORACLE_FACTS, method_key, no_profile_label
from lettingo.evaluation.views import log_reward_views
from lettingo.feedback.baselines import baseline_probabilities, rule_predictions
from lettingo.feedback.rewards import RULE_REWARD, profile_cases, user_samples
from lettingo.feedback.rule_reward import shuffled_mean_rewards, user_mean
from lettingo.feedback.sensitivity import Sensitivity, profile_sensitivity, sensitivity_message
from lettingo.profiles.oracle import oracle_profile
from lettingo.recommender.base import Recommender
from lettingo.recommender.cases import predicted_labels
from lettingo.recommender.tabular import TabularRecommender
from lettingo.recommender.text import ItemTextConfig
from lettingo.runtime import show
from lettingo.schemas import LettingoConfig
from lettingo.stages.base import Output, Stage, StageContext, metric_roles, pace_keys
from lettingo.stages.judging import judge, recommender_inputs, reward_profiles, rewards_output, write_pairs

log = logging.getLogger(__name__)



def check_sensitivity(ctx: StageContext, conf: LettingoConfig, recommender: Recommender, rewards: pd.DataFrame,
                      samples: pd.DataFrame) -> dict[str, dict[str, float]]:
    """profile_sensitivity per split with at least 2 users (artifact `sensitivity`); warns loudly when unclear."""

    def build(folder: Path) -> dict[str, Any]:
        results = {}
        for split, rows in rewards.groupby("split", sort=True):
            if rows["user_id"].nunique() < 2:
                continue
            results[str(split)] = profile_sensitivity(
                recommender, profile_cases(rows, samples), conf.seed, conf.bootstrap.n_resamples,
                conf.bootstrap.confidence, rows.loc[:, [f"p_{label}" for label in LABELS]].to_numpy(),
            ).to_dict()
        write_json_atomic(folder / JSON_FILE, results)
        return {"splits": sorted(results)}

    ctx.make(SENSITIVITY, build)
    results = ctx.store.read_json(SENSITIVITY)
    min_effect = conf.evaluate.sensitivity.min_effect
    for split, values in results.items():
        result = Sensitivity(**values)
        message = sensitivity_message(result, recommender.name, min_effect)
        if result.clearly_positive(min_effect):
            show(f"{split}: {message}")
        else:
            log.warning("%s: %s", split, message)
    return results


def first_profiles(profiles: pd.DataFrame, users: list[str]) -> dict[str, str] | None:
    """Each user's first profile (first backbone, sample 0) when every one of ``users`` has one, else None."""
    rows = profiles[profiles["user_id"].isin(users)].sort_values(["backbone", "sample_idx"], kind="stable")
    first = rows.drop_duplicates("user_id").set_index("user_id")["text"]
    return {str(u): str(t) for u, t in first.items()} if set(users) <= set(first.index) else None


def held_out_splits(conf: LettingoConfig) -> set[str]:
    """The splits no model may learn from: the held-out users of the evaluate and test stages."""
    return {conf.evaluate.split, conf.test.split}


def tabular_models(ctx: StageContext, conf: LettingoConfig, samples: pd.DataFrame) -> dict[str, TabularRecommender]:
    """Row label -> the tabular f_Rec fitted on every user outside the held-out splits (artifact `tabular_models`)."""
    tabular = conf.evaluate.tabular
    nodes = {rec.model["name"]: rec.model for rec in (tabular.plain, tabular.oracle)}

    def build(folder: Path) -> dict[str, Any]:
        train = samples[~samples["split"].isin(held_out_splits(conf))]
        info = {}
        for label, node in nodes.items():
            model = instantiate(node).fit(train, train)
            with atomic_path(folder / f"{method_key(label)}.pkl") as tmp:
                model.save(tmp)
            info[label] = {"best_params": model.best_params_, "cv_accuracy": model.cv_score_,
                           "cv_seconds": model.cv_seconds_}
            log.info("tabular f_Rec %r: CV accuracy %.3f with %s (%.0f s)", label, model.cv_score_,
                     model.best_params_, model.cv_seconds_)
        return {"users": int(train["user_id"].nunique()), "models": info}

    ctx.make(TABULAR_MODELS, build)
    folder = ctx.store.path(TABULAR_MODELS)
    return {label: TabularRecommender.load(folder / f"{method_key(label)}.pkl") for label in nodes}


def baselines(ctx: StageContext, conf: LettingoConfig, recommender: Recommender, samples: pd.DataFrame,
              profiles: pd.DataFrame) -> Comparison:
    """Every baseline and f_Rec input on the held-out users of `evaluate.split` (artifact `baselines`)."""
    ctx.make(BASELINES, lambda folder: baselines_comparison(ctx, conf, recommender, samples, profiles, folder))
    return read_comparison(ctx.store.path(BASELINES) / f"{COMPARISON}.json")


def baselines_comparison(ctx: StageContext, conf: LettingoConfig, recommender: Recommender, samples: pd.DataFrame,
                         profiles: pd.DataFrame, folder: Path) -> dict[str, Any]:
    """Score every baseline on the held-out users of `evaluate.split` and write their comparison into ``folder``."""
    evaluate = conf.evaluate
    held_out = samples[samples["split"] == evaluate.split]
    if held_out.empty:
        raise ValueError(f"evaluate.split={evaluate.split}: no users in that split to evaluate on")
    train_labels = [t["label"] for t in samples.loc[samples["split"] == REC_TRAIN, "target"]]
    facts = asdict(conf.prompt.facts)
    oracle = {str(s["user_id"]): oracle_profile(s, conf.history.length, facts) for s in held_out.to_dict("records")}
    item_text = conf.dataset.item_text
    probabilities = baseline_probabilities(
        recommender, held_out, evaluate.raw_histories, ItemTextConfig(item_text.max_chars, item_text.review_chars),
        conf.history.recent, first_profiles(profiles, held_out["user_id"].astype(str).tolist()), oracle, conf.seed,
    )
    if evaluate.tabular.enabled:
        probabilities |= {label: model.predict(held_out) for label, model in tabular_models(ctx, conf, samples).items()}
    predictions = rule_predictions(held_out, train_labels, LabelThresholds(**asdict(conf.dataset.labels)))
    predictions |= {label: predicted_labels(rows) for label, rows in probabilities.items()}
    comparison = Comparison.compute(
        held_out["user_id"].astype(str).tolist(), [str(t["label"]) for t in held_out["target"]], predictions,
        references=[no_profile_label(conf.history.recent), ORACLE_FACTS], n_resamples=conf.bootstrap.n_resamples,
        confidence=conf.bootstrap.confidence, seed=conf.seed,
        meta={"split": evaluate.split, "recommender": recommender.name}, probabilities=probabilities,
    )
    title = f"{recommender.name} on the held-out `{evaluate.split}` users"
    comparison.write(folder, COMPARISON, title)
    return {"users": len(comparison.users)}


def reward_metrics(rewards: pd.DataFrame) -> dict[str, float]:
    """Per explored split: the mean reward and, when f_Rec judged the profiles, their accuracy on the real target."""
    metrics = {}
    for split, rows in rewards.groupby("split"):
        metrics[f"evaluate/{split_role(split)}/reward"] = float(rows["reward"].mean())
        if "correct" in rows:
            metrics[f"evaluate/{split_role(split)}/profile_accuracy"] = float(rows["correct"].mean())
    return metrics


def rule_guard_metrics(rewards: pd.DataFrame, samples: pd.DataFrame, history: int, seed: int) -> dict[str, float]:
    """Per explored split of at least 2 users: the mean rule reward against another user's mean (the guard)."""
    by_user = user_samples(rewards, samples)
    metrics = {}
    for split, rows in rewards.groupby("split"):
        users = rows["user_id"].astype(str).tolist()
        if len(set(users)) < 2:
            continue
        means = {user: user_mean(by_user[user], history) for user in set(users)}
        shuffled = shuffled_mean_rewards(users, rows["text"].astype(str).tolist(),
                                         (rows["degenerate"] != "").tolist(), means, seed)
        metrics[f"evaluate/{split_role(split)}/reward_shuffled"] = float(np.mean(shuffled))
        show(f"{split}: {RULE_REWARD} reward {rows['reward'].mean():+.3f}, against another user's mean "
             f"(the guard) {np.mean(shuffled):+.3f}")
    return metrics


def run(ctx: StageContext) -> dict[str, Any]:
    """Write `rewards`, `pairs`, `sensitivity` and `baselines` (each reused when finished for its inputs).

    With no explored profiles (``sampling.max_users=0``, the reference tables) only `baselines` is written.
    The rule reward (``evaluate.reward=stated_mean``) needs no f_Rec: only `rewards` and `pairs` are written.
    """
    conf, store = ctx.conf, ctx.store
    evaluate = conf.evaluate
    samples = ctx.read_table(SAMPLES)
    profiles = ctx.read_table(PROFILES)
    recommender = judge(ctx, conf)
    if recommender is None:
        show(f"evaluate: reward {RULE_REWARD} is a rule on the text that needs no f_Rec, so no sensitivity check "
             "and no baselines")
    metrics: dict[str, float] = {}
    pairs: dict[str, Any] = {}
    sensitivity: dict[str, dict[str, float]] = {}
    if profiles.empty:
        show(f"evaluate: no explored profiles (sampling.max_users={conf.sampling.max_users}): no rewards or pairs; "
             "the baselines table only")
    else:
        rewards = reward_profiles(ctx, conf, profiles, samples, REWARDS)
        pairs = write_pairs(ctx, conf, rewards, PAIRS, "evaluate/gate")
        metrics |= reward_metrics(rewards)
        log_reward_views(ctx.tracker, rewards, "evaluate")
        if recommender is not None:
            sensitivity = check_sensitivity(ctx, conf, recommender, rewards, samples)
        else:
            metrics |= rule_guard_metrics(rewards, samples, conf.history.length, conf.seed)
    metrics |= {f"evaluate/pairs/{k}": float(v) for k, v in pairs.items() if isinstance(v, int | float)}
    if recommender is None:
        ctx.tracker.log_metrics(metrics)
        return {"recommender": None, "reward": evaluate.reward, "pairs": pairs}
    split = evaluate.split
    comparison = baselines(ctx, conf, recommender, samples, profiles)
    show(comparison.markdown(f"{recommender.name} on the held-out `{split}` users"))

    for explored, result in sensitivity.items():
        metrics |= {f"evaluate/{split_role(explored)}/profile_sensitivity{suffix}": float(result[field])
                    for suffix, field in (("", "value"), ("_low", "low"), ("_high", "high"))}
    metrics |= comparison.tracker_metrics(f"evaluate/{split}", metric_roles(conf).key)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_table(f"evaluate/{split}/baselines", comparison.flat_table())
    ctx.tracker.log_image(f"evaluate/{split}/macro_f1", store.path(BASELINES) / f"{COMPARISON}.png")
    return {"recommender": recommender.name, "pairs": pairs, "profile_sensitivity": sensitivity,
            "baselines": comparison.to_json()["methods"]}


def outputs(cfg: DictConfig) -> list[Output]:
    """rewards (row-keyed by profile: grows with the profiles), pairs, sensitivity and baselines."""
    rec = recommender_inputs(cfg)
    pace = pace_keys(cfg, "recommender.model")
    return [
        rewards_output(cfg, REWARDS, PROFILES),
        Output(PAIRS, config=("pairs", "seed"), inputs=(REWARDS,)),
        Output(SENSITIVITY, config=("bootstrap", "seed"), inputs=(REWARDS, SAMPLES)),
        *([Output(TABULAR_MODELS, config=("evaluate.tabular", "evaluate.split", "test.split", "history", "seed"),
                  inputs=(SAMPLES,))] if cfg.evaluate.tabular.enabled else []),
        Output(BASELINES, config=("evaluate.split", "evaluate.raw_histories", "evaluate.tabular", "bootstrap", "seed",
                                  "dataset.labels", "dataset.item_text", "recommender.model", "history",
                                  "prompt.facts"),
               inputs=(SAMPLES, PROFILES, *rec), not_identity=pace),
    ]


STAGE = Stage(name="evaluate", run=run, needs=(SAMPLES, PROFILES), outputs=outputs)
