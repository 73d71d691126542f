"""Stage test: every generator writes one profile per held-out user; the frozen f_Rec scores them all.

Methods, all on the same users: f_Rec with no profile (the K recent items only), its floor and ceiling
(the no-DPO profiles shuffled among users; the oracle facts of the older history); the LettinGo prompt through each base
backbone of `sampling.backbones` (the aligned generator's base is "no DPO"); the generator with each
round's adapter of `align.methods` (when trained); and the fixed-format prompts of `test.fixed_formats` (PALR,
RLMRec, KAR styles) through the generator's base model. Profiles go to resumable artifacts
``test_profiles*``, verdicts to `predictions` (one row per user and method, each of the user's M targets in its
per-target columns), and to `results`: the held-out reward of every generator (`evaluate.reward`, with its
profiles shuffled among users beside it) and the comparison of every method on the real target (intervals,
paired differences against DPO, no DPO, no profile and oracle facts: the headline), with M >= 2 beside it the same
comparison over every user x all M targets (`comparison_targets.*`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from lettingo.artifacts import (
    PREDICTIONS,
    RESULTS,
    SAMPLES,
    TABULAR_MODELS,
    TEST_PROFILES,
    atomic_path,
    write_json_atomic,
)
from lettingo.data.schema import LABELS
from lettingo.evaluation.comparison import FILE_STEM as COMPARISON
from lettingo.evaluation.comparison import Comparison, read_comparison
from lettingo.evaluation.methods import (
    DPO,
    NO_DPO,
    ORACLE_FACTS,
    SFT,
    SHUFFLED,
    MetricRoles,
    method_key,
    no_profile_label,
)
from lettingo.evaluation.reward_table import ROW_COLUMNS, RULE_COLUMN, reward_markdown, reward_table
from lettingo.evaluation.tables import to_markdown
from lettingo.evaluation.views import confusion_frame, reward_samples
from lettingo.feedback.rewards import score_profiles
from lettingo.feedback.sensitivity import shuffled_texts
from lettingo.llm.pool import BackendPool, backbones_by_name, shared_engine_order
from lettingo.profiles.explore import KEY as PROFILE_KEY
from lettingo.profiles.explore import PROFILE_COLUMNS, explore
from lettingo.profiles.oracle import oracle_profile
from lettingo.recommender.cases import predicted_labels
from lettingo.recommender.tabular import TabularRecommender
from lettingo.runtime import show
from lettingo.schemas import LettingoConfig, TestSchema
from lettingo.stages.base import Output, Stage, StageContext, backbones_pace_keys, metric_roles, pace_keys
from lettingo.stages.judging import judge, judge_identity
from lettingo.stages.rounds import every_adapter, trained_generators

log = logging.getLogger(__name__)

TABLE3 = (NO_DPO, SFT, DPO)  # the paper's alignment ablation, in its order
TABLE3_METRICS = ("accuracy", "macro_f1", "p_true", "log_loss")
REWARD_TABLE = "rewards"  # file stem of the held-out reward table in the results artifact
TARGETS_COMPARISON = f"{COMPARISON}_targets"  # file stem of the comparison over users x all M targets


def fixed_format_artifact(name: str) -> str:
    """The artifact of the test profiles written with fixed-format prompt ``name``."""
    return f"{TEST_PROFILES}_{name}"


def explore_settings(conf: LettingoConfig) -> dict[str, Any]:
    """The explore arguments every test generator shares: one greedy profile per user."""
    return {"item_text_cfg": asdict(conf.dataset.item_text), "history_len": conf.history.length, "n": 1,
            "temperature": conf.test.temperature, "max_new_tokens": conf.test.max_new_tokens, "seed": conf.seed,
            "users_per_chunk": conf.test.users_per_chunk}


def write_test_profiles(ctx: StageContext, conf: LettingoConfig, users: pd.DataFrame) -> pd.DataFrame:
    """One profile per user from every generator and prompt, with its method label in column `method`."""
    common = explore_settings(conf)
    generator = conf.backbone["name"]
    bases = backbones_by_name(conf.sampling.backbones)
    adapters = trained_generators(ctx, conf)
    labels = {name: (NO_DPO if name == generator else name) for name in bases}
    labels |= {config["name"]: label for label, config in adapters.items()}
    configs = {**bases, **{config["name"]: config for config in adapters.values()}}
    configs.setdefault(generator, conf.backbone)
    fixed = []
    # One pool for every generator, fixed formats first on the generator's own engine, then the rest
    # ordered so that generators sharing an engine (base + adapters) run back to back: one engine each.
    with BackendPool(configs) as pool:
        for name, prompt in conf.test.fixed_formats.items():
            artifact = fixed_format_artifact(name)
            frame = explore(users, pool.subset([generator]), prompt_cfg=asdict(prompt),
                            rows=ctx.rows(artifact, PROFILE_KEY), **common)
            fixed.append(frame.assign(method=f"{prompt.name} ({generator})"))
        names = [n for n in shared_engine_order(configs) if n in labels]
        frame = explore(users, pool.subset(names), prompt_cfg=asdict(conf.prompt),
                        rows=ctx.rows(TEST_PROFILES, PROFILE_KEY), **common)
    frames = [frame.assign(method=frame["backbone"].map(labels)), *fixed]
    return pd.concat(frames, ignore_index=True)


def text_rows(users: pd.DataFrame, texts: Mapping[str, str], method: str) -> pd.DataFrame:
    """Rows shaped like profile rows for a method whose profile is not generated (the text is given)."""
    tag = method_key(method)
    rows = [{"user_id": u, "split": s, "backbone": tag, "sample_idx": 0, "prompt_name": tag, "history_len": 0,
             "prompt": "", "text": texts.get(str(u), ""), "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0,
             "seed": 0, "degenerate": ""} for u, s in zip(users["user_id"], users["split"], strict=True)]
    return pd.DataFrame(rows, columns=list(PROFILE_COLUMNS)).assign(method=method)


def shuffled_label(method: str) -> str:
    """The label of ``method``'s profiles shuffled among the users (the base's is the paper-style floor row)."""
    return SHUFFLED if method == NO_DPO else f"{method} shuffled"


def reference_rows(conf: LettingoConfig, users: pd.DataFrame) -> pd.DataFrame:
    """The rows every profile method is read against: no profile (K recent items only) and the oracle facts of
    the older history (the ceiling)."""
    facts = asdict(conf.prompt.facts)
    oracle = {str(s["user_id"]): oracle_profile(s, conf.history.length, facts) for s in users.to_dict("records")}
    return pd.concat([text_rows(users, {}, no_profile_label(conf.history.recent)),
                      text_rows(users, oracle, ORACLE_FACTS)], ignore_index=True)


def shuffled_rows(conf: LettingoConfig, users: pd.DataFrame, generated: pd.DataFrame) -> pd.DataFrame:
    """Each LettinGo-prompt generator's profiles shuffled among the users: the floor of its rows, and the guard
    beside its held-out reward (the base's is the `shuffled` row)."""
    frames = [pd.DataFrame(columns=[*PROFILE_COLUMNS, "method"])]
    own_prompt = generated[generated["prompt_name"] == conf.prompt.name]
    for method, rows in own_prompt.groupby("method", sort=False):
        if rows["user_id"].nunique() >= 2:
            texts = dict(zip(rows["user_id"].astype(str), rows["text"], strict=True))
            frames.append(text_rows(users, shuffled_texts(texts, conf.seed), shuffled_label(str(method))))
    return pd.concat(frames, ignore_index=True)


def guarded_methods(predictions: pd.DataFrame) -> dict[str, str]:
    """Method -> the label of its shuffled rows, for every method whose profiles were also scored shuffled."""
    methods = set(predictions["method"])
    return {m: shuffled_label(m) for m in methods if shuffled_label(m) in methods and m != shuffled_label(m)}


def held_out_rewards(conf: LettingoConfig, predictions: pd.DataFrame, folder: Path) -> dict[str, Any]:
    """The held-out reward table (:func:`reward_table`, reference: no DPO), written as rewards.md and .json."""
    columns = [*ROW_COLUMNS, *([RULE_COLUMN] if RULE_COLUMN in predictions else [])]
    table = reward_table(predictions.loc[:, columns], guarded_methods(predictions), NO_DPO,
                         conf.bootstrap.n_resamples, conf.bootstrap.confidence, conf.seed)
    markdown = reward_markdown(table, conf.evaluate.reward, NO_DPO)
    with atomic_path(folder / f"{REWARD_TABLE}.md") as tmp:
        tmp.write_text(markdown)
    write_json_atomic(folder / f"{REWARD_TABLE}.json", {"reward": conf.evaluate.reward, "methods": table})
    return table


def method_predictions(predictions: pd.DataFrame) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Users scored by every method, their true labels, and method -> predicted labels (same user order)."""
    methods = list(dict.fromkeys(predictions["method"]))
    by_method = {m: rows.set_index("user_id") for m, rows in predictions.groupby("method", sort=False)}
    users = sorted(set.intersection(*(set(frame.index) for frame in by_method.values())), key=str)
    dropped = predictions["user_id"].nunique() - len(users)
    if dropped:
        log.warning("%d users lack a profile from some method and are left out of the comparison", dropped)
    truth = by_method[methods[0]].loc[users, "label"].astype(str).tolist()
    return users, truth, {m: by_method[m].loc[users, "predicted"].astype(str).tolist() for m in methods}


def method_probabilities(predictions: pd.DataFrame, order: list[str]) -> dict[str, np.ndarray]:
    """Method -> the f_Rec's probability of each label (columns in LABELS order) for ``order``'s users."""
    columns = [f"p_{label}" for label in LABELS]
    return {m: rows.set_index("user_id").loc[order, columns].to_numpy(dtype=float)
            for m, rows in predictions.groupby("method", sort=False)}


def tabular_probabilities(ctx: StageContext, conf: LettingoConfig, users: pd.DataFrame,
                          order: list[str]) -> dict[str, np.ndarray]:
    """Row label -> the tabular f_Rec's label probabilities for ``order``'s users (none without evaluate.tabular)."""
    if not conf.evaluate.tabular.enabled:
        return {}
    meta = ctx.need(TABULAR_MODELS)
    by_user = users.set_index(users["user_id"].astype(str)).loc[order].reset_index(drop=True)
    folder = ctx.store.path(TABULAR_MODELS)
    return {label: TabularRecommender.load(folder / f"{method_key(label)}.pkl").predict(by_user)
            for label in meta["models"]}


def test_users(test: TestSchema, samples: pd.DataFrame) -> pd.DataFrame:
    """The held-out users of `test.split` (the first `test.max_users` when set)."""
    users = samples[samples["split"] == test.split]
    if users.empty:
        raise ValueError(f"test.split={test.split}: no users in that split to test on")
    return users if test.max_users is None else users.head(test.max_users)


def compared_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """The prediction rows the comparisons read: every method but the generators' shuffled guards (the base's
    shuffled profiles stay, as the `shuffled` floor row)."""
    guards = set(guarded_methods(predictions).values()) - {SHUFFLED}
    return predictions[~predictions["method"].isin(guards)]


def method_comparison(conf: LettingoConfig, predictions: pd.DataFrame, users: list[str], truth: list[str],
                      predicted: dict[str, list[str]], probabilities: dict[str, np.ndarray],
                      targets: list[int] | None = None) -> Comparison:
    """:meth:`Comparison.compute` of the methods' cases (one per user, or per user and target with ``targets``),
    with paired differences against DPO, the base generator (no DPO: every aligned method's gain), no profile and
    oracle facts, and the test stage's bootstrap and meta."""
    return Comparison.compute(
        users, truth, predicted, references=[DPO, NO_DPO, no_profile_label(conf.history.recent), ORACLE_FACTS],
        n_resamples=conf.bootstrap.n_resamples, confidence=conf.bootstrap.confidence, seed=conf.seed,
        meta={"split": conf.test.split, "recommender": conf.recommender.name, "dataset": conf.dataset.name,
              "degenerate_share": predictions.groupby("method")["degenerate"]
              .apply(lambda d: float((d != "").mean())).to_dict()},
        probabilities=probabilities, targets=targets,
    )


def all_targets_title(title: str, targets: int) -> str:
    """The title of the comparison over every test user's ``targets`` targets."""
    return f"{title}: all {targets} targets per user"


def target_comparison(conf: LettingoConfig, predictions: pd.DataFrame, user_ids: list[str], folder: Path,
                      title: str) -> None:
    """Write the comparison over ``user_ids`` x all M targets (TARGETS_COMPARISON), from the predictions'
    per-target columns; the tabular f_Rec, which scores the real target only, is left out."""
    if "target_predicted" not in predictions or predictions["target_predicted"].isna().any():
        log.warning("the predictions were scored before per-target labels were stored: no comparison over all "
                    "targets (move the predictions artifact aside to rescore it)")
        return
    frames = {m: rows.set_index("user_id").loc[user_ids] for m, rows in predictions.groupby("method", sort=False)}
    first = next(iter(frames.values()))
    targets = len(first["target_labels"].iloc[0])
    comparison = method_comparison(
        conf, predictions, [u for u in user_ids for _ in range(targets)],
        [label for labels in first["target_labels"] for label in labels],
        {m: [label for labels in rows["target_predicted"] for label in labels] for m, rows in frames.items()},
        {m: np.concatenate([np.stack(list(p)) for p in rows["target_probabilities"]]) for m, rows in frames.items()},
        targets=list(range(targets)) * len(user_ids))
    comparison.write(folder, TARGETS_COMPARISON, all_targets_title(title, targets))


def label_comparison(ctx: StageContext, conf: LettingoConfig, users: pd.DataFrame, predictions: pd.DataFrame,
                     folder: Path, title: str) -> int:
    """Write the f_Rec's label comparison of every method on the real target (accuracy, F1s, p_true, log-loss
    with intervals and paired differences against DPO, no DPO, no profile and oracle facts) and, with M >= 2 targets
    per user, the same over all of them; return how many users the real-target one compares."""
    predictions = compared_rows(predictions)
    user_ids, truth, predicted = method_predictions(predictions)
    tabular = tabular_probabilities(ctx, conf, users, user_ids)
    predicted |= {label: predicted_labels(probabilities) for label, probabilities in tabular.items()}
    comparison = method_comparison(conf, predictions, user_ids, truth, predicted,
                                   method_probabilities(predictions, user_ids) | tabular)
    comparison.write(folder, COMPARISON, title)
    if conf.evaluate.targets_per_user >= 2:
        target_comparison(conf, predictions, user_ids, folder, title)
    return len(comparison.users)


def reward_metrics(rewards: Mapping[str, Mapping[str, Any]], prefix: str, roles: MetricRoles) -> dict[str, float]:
    """The held-out reward table as tracker scalars ``<prefix>/<method role>/<field>`` (another explored
    backbone's rows stay in the table only)."""
    metrics: dict[str, float] = {}
    for method, row in rewards.items():
        if (name := roles.key(method)) is None:
            continue
        metrics |= {f"{prefix}/{name}/{field}": float(row[part]["value"])
                    for field, part in (("mean", "reward"), ("vs_no_dpo", "vs_reference"),
                                        ("true_minus_shuffled", "true_minus_shuffled"))}
        if "rule_full_share" in row:
            metrics[f"{prefix}/{name}/rule_full_share"] = float(row["rule_full_share"])
    return metrics


def log_comparison(ctx: StageContext, comparison: Comparison, prefix: str, plot: Path) -> None:
    """Log a comparison under tracker ``prefix``: its metrics (keyed by row role), results table, plot and
    confusion matrices."""
    ctx.tracker.log_metrics(comparison.tracker_metrics(prefix, metric_roles(ctx.conf).key))
    ctx.tracker.log_table(f"{prefix}/results", comparison.flat_table())
    ctx.tracker.log_image(f"{prefix}/macro_f1", plot)
    ctx.tracker.log_table(f"{prefix}/confusion_matrix", confusion_frame(comparison.details))


def report_comparison(ctx: StageContext, folder: Path, title: str) -> dict[str, Any]:
    """Print Table 3, the full label comparison and, when written, the one over all M targets; log them (the
    latter under ``test/<split>/all_targets``); return the real-target comparison as JSON."""
    comparison = read_comparison(folder / f"{COMPARISON}.json")
    split = comparison.meta["split"]
    table3 = [m for m in TABLE3 if m in comparison.predictions]
    if table3:
        table = comparison.table(methods=table3, metrics=TABLE3_METRICS)
        show("## Table 3: alignment ablation\n\n" + to_markdown(table))
    show(comparison.markdown(title))
    log_comparison(ctx, comparison, f"test/{split}", folder / f"{COMPARISON}.png")
    show(f"results: {folder / COMPARISON}.json")
    if (folder / f"{TARGETS_COMPARISON}.json").is_file():
        every = read_comparison(folder / f"{TARGETS_COMPARISON}.json")
        show(every.markdown(all_targets_title(title, len(set(every.targets or ())))))
        log_comparison(ctx, every, f"test/{split}/all_targets", folder / f"{TARGETS_COMPARISON}.png")
        show(f"results over all targets: {folder / TARGETS_COMPARISON}.json")
    return comparison.to_json()


def run(ctx: StageContext) -> dict[str, Any]:
    """Write `test_profiles*`, `predictions` and `results`; print the held-out rewards, Table 3 and the comparison.

    With a rule reward (no f_Rec judges) the results hold the held-out reward table only.
    """
    conf, store = ctx.conf, ctx.store
    samples = ctx.read_table(SAMPLES)
    users = test_users(conf.test, samples)
    generated = write_test_profiles(ctx, conf, users)
    profiles = pd.concat([reference_rows(conf, users), shuffled_rows(conf, users, generated), generated],
                         ignore_index=True)
    reward = conf.evaluate.reward
    recommender = judge(ctx, conf)
    judged = recommender is not None
    predictions = score_profiles(recommender, profiles, samples, ctx.rows(PREDICTIONS, PROFILE_KEY),
                                 conf.test.users_per_chunk, reward=reward, targets=conf.evaluate.targets_per_user,
                                 history=conf.history.length)
    split = conf.test.split
    title = f"{conf.recommender.name} on the held-out `{split}` users"

    def build(folder: Path) -> dict[str, Any]:
        rewards = held_out_rewards(conf, predictions, folder)
        users_compared = label_comparison(ctx, conf, users, predictions, folder, title) if judged else 0
        return {"users": users_compared, "reward_users": next(iter(rewards.values()))["users"]}

    ctx.make(RESULTS, build)
    folder = store.path(RESULTS)
    rewards = json.loads((folder / f"{REWARD_TABLE}.json").read_text())["methods"]
    show(f"## Held-out reward ({reward}) on the `{split}` users\n\n" + (folder / f"{REWARD_TABLE}.md").read_text())
    ctx.tracker.log_metrics(reward_metrics(rewards, f"test/{split}/reward", metric_roles(conf)))
    ctx.tracker.log_table(f"test/{split}/samples", reward_samples(predictions, "method"))
    results = report_comparison(ctx, folder, title) if judged else {}
    return results | {"held_out_reward": rewards}


#: What every test profile depends on (how many users only adds rows; the users sharing a generate call are part
#: of it, README "Artifacts").
TEST_PROFILE_CONFIG = ("test.temperature", "test.max_new_tokens", "test.users_per_chunk", "dataset.item_text",
                       "history.length", "seed")


def outputs(cfg: DictConfig) -> list[Output]:
    """The test profiles (LettinGo prompt, then one artifact per fixed format), predictions and results."""
    adapters = every_adapter(cfg)
    fixed = [str(name) for name in (cfg.test.get("fixed_formats") or {})]
    judged_by, judge_inputs, judge_pace = judge_identity(cfg)
    grows = ("test.max_users",)
    generators = pace_keys(cfg, "backbone")
    profiles = (TEST_PROFILES, *map(fixed_format_artifact, fixed))
    return [
        Output(TEST_PROFILES, config=(*TEST_PROFILE_CONFIG, "prompt", "sampling.backbones", "backbone"),
               inputs=(SAMPLES, *adapters), grows_by=grows, not_identity=(*backbones_pace_keys(cfg), *generators)),
        *[Output(fixed_format_artifact(name), config=(*TEST_PROFILE_CONFIG, f"test.fixed_formats.{name}", "backbone"),
                 inputs=(SAMPLES,), grows_by=grows, not_identity=generators) for name in fixed],
        Output(PREDICTIONS, config=(*judged_by, "history", "prompt.facts", "test.users_per_chunk"),
               inputs=(*profiles, *judge_inputs), grows_by=grows, grows_with=profiles, not_identity=judge_pace),
        Output(RESULTS, config=("bootstrap", "seed", "test.split", "test.max_users", "evaluate.tabular.enabled",
                                "evaluate.reward"),
               inputs=(PREDICTIONS, *profiles, *((TABULAR_MODELS,) if cfg.evaluate.tabular.enabled else ()))),
    ]


STAGE = Stage(name="test", run=run, needs=(SAMPLES,), outputs=outputs)
