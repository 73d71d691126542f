"""Stage evaluate: rewards of every explored profile, preference pairs, the shuffle check, the baselines table."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from lettingo.artifacts import ArtifactStore, atomic_path, fingerprint
from lettingo.data.schema import LABELS, LabelThresholds
from lettingo.data.stage import load_or_build_samples
from lettingo.evaluation.plots import plot_intervals
from lettingo.evaluation.tables import paired_table, results_table, to_markdown
from lettingo.evaluation.views import log_reward_views
from lettingo.feedback.baselines import MAJORITY, BaselineResults, baseline_predictions, score_baselines
from lettingo.feedback.pairs import build_pairs, format_pairs_summary, pairs_summary
from lettingo.feedback.rewards import profile_cases, score_profiles
from lettingo.feedback.sensitivity import Sensitivity, profile_sensitivity, sensitivity_message
from lettingo.feedback.train import REC_TRAIN_SPLIT, load_recommender, recommender_identity
from lettingo.recommender.base import Recommender
from lettingo.recommender.text import ItemTextConfig
from lettingo.runtime import RunContext

log = logging.getLogger(__name__)

PROFILES = "profiles"
REWARDS = "rewards"
PAIRS = "pairs"
BASELINES = "baselines"


def read_profiles(store: ArtifactStore) -> tuple[pd.DataFrame, str]:
    """The finished `profiles` artifact and its fingerprint."""
    meta = store.meta(PROFILES)
    if meta is None:
        raise RuntimeError(f"no finished profiles in {store.root}: run stage=explore first")
    return store.read_table(PROFILES), str(meta["fingerprint"])


def write_pairs(cfg: DictConfig, store: ArtifactStore, rewards: pd.DataFrame, rewards_fp: str) -> dict[str, Any]:
    """Build the `pairs` artifact from the rewards under `pairs.*`; return its summary."""
    pcfg = cfg.pairs
    cap = None if pcfg.max_pairs_per_user is None else int(pcfg.max_pairs_per_user)
    settings = {"rule": str(pcfg.rule), "max_pairs_per_user": cap, "min_margin": float(pcfg.min_margin),
                "seed": int(cfg.seed)}
    pairs = build_pairs(rewards, **settings)
    summary = pairs_summary(rewards, pairs)
    store.write_table(PAIRS, pairs, fingerprint({"rewards": rewards_fp, **settings}), summary=summary, **settings)
    print(format_pairs_summary(summary, settings["rule"]))
    return summary


def check_sensitivity(
    recommender: Recommender, rewards: pd.DataFrame, samples: pd.DataFrame, ecfg: DictConfig, seed: int
) -> dict[str, Sensitivity]:
    """profile_sensitivity on each split's scored profiles (splits with at least 2 users); warns loudly."""
    results = {}
    for split, rows in rewards.groupby("split", sort=True):
        if rows["user_id"].nunique() < 2:
            continue
        result = profile_sensitivity(
            recommender, profile_cases(rows, samples), seed, int(ecfg.bootstrap.n_resamples),
            float(ecfg.bootstrap.confidence), rows.loc[:, [f"p_{label}" for label in LABELS]].to_numpy(),
        )
        message = sensitivity_message(result, recommender.name, float(ecfg.sensitivity.min_effect))
        if result.clearly_positive(float(ecfg.sensitivity.min_effect)):
            print(f"{split}: {message}")
        else:
            log.warning("%s: %s", split, message)
        results[str(split)] = result
    return results


def first_profiles(profiles: pd.DataFrame, users: list[str]) -> dict[str, str] | None:
    """Each user's first profile (first backbone, sample 0) when every one of ``users`` has one, else None."""
    rows = profiles[profiles["user_id"].isin(users)].sort_values(["backbone", "sample_idx"], kind="stable")
    first = rows.drop_duplicates("user_id").set_index("user_id")["text"]
    return {str(u): str(t) for u, t in first.items()} if set(users) <= set(first.index) else None


def baselines_table(cfg: DictConfig, recommender: Recommender, samples: pd.DataFrame,
                    profiles: pd.DataFrame) -> BaselineResults:
    """Every baseline and f_Rec input on the held-out users of `recommender.evaluation.split`."""
    ecfg = cfg.recommender.evaluation
    held_out = samples[samples["split"] == str(ecfg.split)]
    if held_out.empty:
        raise ValueError(f"no users in split {ecfg.split!r} to evaluate on")
    train_labels = [t["label"] for t in samples.loc[samples["split"] == REC_TRAIN_SPLIT, "target"]]
    predictions = baseline_predictions(
        recommender, held_out, train_labels, LabelThresholds(**cfg.dataset.labels),
        [int(h) for h in ecfg.raw_histories], ItemTextConfig.from_mapping(cfg.dataset.item_text),
        first_profiles(profiles, held_out["user_id"].astype(str).tolist()),
    )
    return score_baselines(held_out, predictions, int(ecfg.bootstrap.n_resamples),
                           float(ecfg.bootstrap.confidence), int(cfg.seed))


def write_report(ctx: RunContext, results: BaselineResults, split: str, name: str) -> str:
    """The baselines table and the paired differences vs majority class, as markdown (printed, saved, logged)."""
    table = results_table(results.intervals)
    versus = paired_table(results.versus_majority, MAJORITY)
    markdown = (
        f"## {name} on the held-out `{split}` users ({len(results.users)} users, 95% bootstrap CIs over users)\n\n"
        + to_markdown(table) + f"\n### Paired differences vs {MAJORITY}\n\n" + to_markdown(versus)
    )
    folder = ctx.store.path(BASELINES)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "baselines.md") as tmp:
        tmp.write_text(markdown)
    plot = plot_intervals(results.intervals, "macro_f1", folder / "macro_f1.png", f"{name}: macro-F1 on {split}")
    ctx.tracker.log_table(f"evaluate/{split}/baselines", table.reset_index().set_axis(
        ["method", *[f"{h}_{f}" for h, f in table.columns]], axis=1))
    ctx.tracker.log_image(f"evaluate/{split}/macro_f1", plot)
    return markdown


def run_evaluate(ctx: RunContext) -> dict[str, Any]:
    """Stage evaluate: `rewards` for every profile, `pairs` with their summary, profile_sensitivity per
    split, and the baselines table on the held-out users (markdown printed and saved under `baselines/`)."""
    cfg, store = ctx.cfg, ctx.store
    ecfg, seed = cfg.recommender.evaluation, int(cfg.seed)
    samples, _ = load_or_build_samples(cfg, store)
    profiles, profiles_fp = read_profiles(store)
    recommender = load_recommender(cfg, store)
    rewards_fp = fingerprint({"profiles": profiles_fp, "recommender": recommender_identity(cfg, store)})
    rewards = score_profiles(recommender, profiles, samples, store, REWARDS, rewards_fp, int(ecfg.users_per_chunk))
    pairs = write_pairs(cfg, store, rewards, rewards_fp)
    sensitivity = check_sensitivity(recommender, rewards, samples, ecfg, seed)
    results = baselines_table(cfg, recommender, samples, profiles)
    markdown = write_report(ctx, results, str(ecfg.split), str(cfg.recommender.name))
    print(markdown)

    metrics: dict[str, float] = {}
    for split, rows in rewards.groupby("split"):
        metrics[f"evaluate/{split}/profile_accuracy"] = float(rows["correct"].mean())
    for split, result in sensitivity.items():
        metrics |= {f"evaluate/{split}/profile_sensitivity{suffix}": getattr(result, field)
                    for suffix, field in (("", "value"), ("_low", "low"), ("_high", "high"))}
    for method, intervals in results.intervals.items():
        for metric, interval in intervals.items():
            key = f"evaluate/{ecfg.split}/{method}/{metric}"
            metrics |= {key: interval.value, f"{key}_low": interval.low, f"{key}_high": interval.high}
    metrics |= {f"evaluate/pairs/{k}": float(v) for k, v in pairs.items() if isinstance(v, int | float)}
    ctx.tracker.log_metrics(metrics)
    log_reward_views(ctx.tracker, rewards, "evaluate")
    summary = {
        "recommender": str(cfg.recommender.name),
        "pairs": pairs,
        "profile_sensitivity": {split: r.to_dict() for split, r in sensitivity.items()},
        "baselines": {m: {k: v.to_dict() for k, v in row.items()} for m, row in results.intervals.items()},
        "versus_majority": {m: {k: v.to_dict() for k, v in row.items()} for m, row in results.versus_majority.items()},
    }
    store.write_json(BASELINES, summary, fingerprint({"rewards": rewards_fp, "pairs": pairs}))
    return summary

