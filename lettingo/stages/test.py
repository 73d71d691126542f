"""Stage test: every generator writes one profile per held-out user; the frozen f_Rec scores them all.

Methods, all on the same users: f_Rec with no profile (the K recent items only), its floor and ceiling
(the no-DPO profiles shuffled among users; the oracle facts of the older history); the LettinGo prompt through each base
backbone of `sampling.backbones` (the aligned generator's base is "no DPO"); the generator with each
adapter of `align.methods` (when trained); and the fixed-format prompts of `test.fixed_formats` (PALR,
RLMRec, KAR styles) through the generator's base model. Profiles go to resumable artifacts
``test_profiles*``, verdicts to `predictions` (one row per user and method), and the comparison of
every method (intervals, paired differences against DPO, no profile and oracle facts) to `results`.
"""

from __future__ import annotations

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
    REC_MODEL,
    RESULTS,
    SAMPLES,
    TABULAR_MODELS,
    TEST_PROFILES,
    adapter_artifact,
)
from lettingo.data.schema import LABELS
from lettingo.evaluation.comparison import FILE_STEM as COMPARISON
from lettingo.evaluation.comparison import Comparison, read_comparison
from lettingo.evaluation.methods import DPO, NO_DPO, ORACLE_FACTS, SFT, SHUFFLED, method_key, no_profile_label
from lettingo.evaluation.tables import to_markdown
from lettingo.evaluation.views import confusion_frame, reward_samples
from lettingo.feedback.rewards import score_profiles
from lettingo.feedback.sensitivity import shuffled_texts
from lettingo.llm.pool import BackendPool, backbones_by_name, shared_engine_order
from lettingo.profiles.explore import KEY as PROFILE_KEY
from lettingo.profiles.explore import PROFILE_COLUMNS, explore
from lettingo.profiles.oracle import oracle_profile
from lettingo.recommender.cases import predicted_labels
from lettingo.recommender.loading import LazyRecommender
from lettingo.recommender.tabular import TabularRecommender
from lettingo.schemas import LettingoConfig, TestSchema
from lettingo.stages.base import Output, Stage, StageContext, backbones_pace_keys, pace_keys

log = logging.getLogger(__name__)

TABLE3 = (NO_DPO, SFT, DPO)  # the paper's alignment ablation, in its order
TABLE3_METRICS = ("accuracy", "macro_f1", "p_true", "log_loss")


def aligned_label(method: str) -> str:
    """The results label of the generator aligned by ``method`` (`dpo` -> DPO)."""
    return method.upper()


def fixed_format_artifact(name: str) -> str:
    """The artifact of the test profiles written with fixed-format prompt ``name``."""
    return f"{TEST_PROFILES}_{name}"


def adapter_generators(ctx: StageContext, conf: LettingoConfig) -> dict[str, dict[str, Any]]:
    """Method label -> generator config with its adapter, for every trained adapter of `align.methods`."""
    found = {}
    for method in conf.align.methods:
        artifact = adapter_artifact(method)
        if ctx.store.meta(artifact) is None:
            continue
        ctx.need(artifact)
        found[aligned_label(method)] = {**conf.backbone, "name": f"{conf.backbone['name']}+{method}",
                                        "adapter": str(ctx.store.path(artifact))}
    return found


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
    adapters = adapter_generators(ctx, conf)
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


def reference_rows(conf: LettingoConfig, users: pd.DataFrame, generated: pd.DataFrame) -> pd.DataFrame:
    """The rows every profile method is read against: no profile (K recent items only), the no-DPO
    profiles shuffled among users (the floor) and the oracle facts of the older history (the ceiling)."""
    facts = asdict(conf.prompt.facts)
    oracle = {str(s["user_id"]): oracle_profile(s, conf.history.length, facts) for s in users.to_dict("records")}
    frames = [text_rows(users, {}, no_profile_label(conf.history.recent)), text_rows(users, oracle, ORACLE_FACTS)]
    base = generated[generated["method"] == NO_DPO]
    if base["user_id"].nunique() >= 2:
        texts = dict(zip(base["user_id"].astype(str), base["text"], strict=True))
        frames.append(text_rows(users, shuffled_texts(texts, conf.seed), SHUFFLED))
    return pd.concat(frames, ignore_index=True)


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


def run(ctx: StageContext) -> dict[str, Any]:
    """Write `test_profiles*`, `predictions` and `results`; print Table 3 and the full comparison."""
    conf, store = ctx.conf, ctx.store
    samples = ctx.read_table(SAMPLES)
    users = test_users(conf.test, samples)
    generated = write_test_profiles(ctx, conf, users)
    profiles = pd.concat([reference_rows(conf, users, generated), generated], ignore_index=True)
    rec = conf.recommender
    checkpoint = store.path(REC_MODEL) / ctx.need(REC_MODEL)["checkpoint"] if rec.trainable else None
    recommender = LazyRecommender(rec.name, rec.model, checkpoint)
    predictions = score_profiles(recommender, profiles, samples, ctx.rows(PREDICTIONS, PROFILE_KEY),
                                 conf.test.users_per_chunk)
    split = conf.test.split
    title = f"{rec.name} on the held-out `{split}` users"

    def build(folder: Path) -> dict[str, Any]:
        user_ids, truth, predicted = method_predictions(predictions)
        tabular = tabular_probabilities(ctx, conf, users, user_ids)
        predicted |= {label: predicted_labels(probabilities) for label, probabilities in tabular.items()}
        comparison = Comparison.compute(
            user_ids, truth, predicted, references=[DPO, no_profile_label(conf.history.recent), ORACLE_FACTS],
            n_resamples=conf.bootstrap.n_resamples, confidence=conf.bootstrap.confidence, seed=conf.seed,
            meta={"split": split, "recommender": rec.name, "dataset": conf.dataset.name,
                  "degenerate_share": predictions.groupby("method")["degenerate"]
                  .apply(lambda d: float((d != "").mean())).to_dict()},
            probabilities=method_probabilities(predictions, user_ids) | tabular,
        )
        comparison.write(folder, COMPARISON, title)
        return {"users": len(comparison.users)}

    ctx.make(RESULTS, build)
    comparison = read_comparison(store.path(RESULTS) / f"{COMPARISON}.json")
    table3 = [m for m in TABLE3 if m in comparison.predictions]
    if table3:
        table = comparison.table(methods=table3, metrics=TABLE3_METRICS)
        print("## Table 3: alignment ablation\n\n" + to_markdown(table))
    print(comparison.markdown(title))
    ctx.tracker.log_metrics(comparison.tracker_metrics(f"test/{split}"))
    ctx.tracker.log_table(f"test/{split}/results", comparison.flat_table())
    ctx.tracker.log_image(f"test/{split}/macro_f1", store.path(RESULTS) / f"{COMPARISON}.png")
    ctx.tracker.log_table(f"test/{split}/confusion_matrix", confusion_frame(comparison.details))
    ctx.tracker.log_table(f"test/{split}/samples", reward_samples(predictions, "method"))
    print(f"results: {store.path(RESULTS) / COMPARISON}.json")
    return comparison.to_json()


#: What every test profile depends on (how many users only adds rows; the users sharing a generate call are part
#: of it, README "Artifacts").
TEST_PROFILE_CONFIG = ("test.temperature", "test.max_new_tokens", "test.users_per_chunk", "dataset.item_text",
                       "history.length", "seed")


def outputs(cfg: DictConfig) -> list[Output]:
    """The test profiles (LettinGo prompt, then one artifact per fixed format), predictions and results."""
    adapters = tuple(adapter_artifact(str(m)) for m in cfg.align.methods)
    fixed = [str(name) for name in (cfg.test.get("fixed_formats") or {})]
    rec = (REC_MODEL,) if cfg.recommender.trainable else ()
    grows = ("test.max_users",)
    generators = pace_keys(cfg, "backbone")
    profiles = (TEST_PROFILES, *map(fixed_format_artifact, fixed))
    return [
        Output(TEST_PROFILES, config=(*TEST_PROFILE_CONFIG, "prompt", "sampling.backbones", "backbone"),
               inputs=(SAMPLES, *adapters), grows_by=grows, not_identity=(*backbones_pace_keys(cfg), *generators)),
        *[Output(fixed_format_artifact(name), config=(*TEST_PROFILE_CONFIG, f"test.fixed_formats.{name}", "backbone"),
                 inputs=(SAMPLES,), grows_by=grows, not_identity=generators) for name in fixed],
        Output(PREDICTIONS, config=("recommender.model", "history", "prompt.facts", "test.users_per_chunk"),
               inputs=(*profiles, *rec), grows_by=grows, grows_with=profiles,
               not_identity=pace_keys(cfg, "recommender.model")),
        Output(RESULTS, config=("bootstrap", "seed", "test.split", "test.max_users", "evaluate.tabular.enabled"),
               inputs=(PREDICTIONS, *profiles, *((TABULAR_MODELS,) if cfg.evaluate.tabular.enabled else ()))),
    ]


STAGE = Stage(name="test", run=run, needs=(SAMPLES,), outputs=outputs)
