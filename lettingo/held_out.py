"""Stage test: every generator writes one profile per held-out user; the frozen f_Rec scores them all.

Methods, all on the same users: f_Rec with no profile (10H); the LettinGo prompt through each base
backbone of `sampling.backbones`; the aligned generator's SFT and DPO adapters (when trained); and
the fixed-format prompts (PALR, RLMRec, KAR styles, `align.test.fixed_formats`) through the
generator's base model. Profiles are written by the exploration function (resumable artifacts
``test_profiles*``), verdicts go to the `predictions` artifact (one row per user and method), and
``results.json`` holds every metric with its bootstrap interval plus the paired difference of each
method against DPO (method minus DPO, on the same users; negative favours DPO). The paper's Table 3
(no DPO vs SFT vs DPO) is printed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lettingo.align.stage import adapter_artifact
from lettingo.artifacts import ArtifactStore, fingerprint, write_json_atomic
from lettingo.data.schema import LABELS
from lettingo.data.stage import load_or_build_samples
from lettingo.evaluation.bootstrap import DEFAULT_METRICS, Interval, PairedDifference, paired_bootstrap, summarize
from lettingo.evaluation.metrics import classification_metrics
from lettingo.evaluation.plots import plot_intervals
from lettingo.evaluation.tables import paired_table, results_table, to_markdown
from lettingo.evaluation.views import confusion_frame, reward_samples
from lettingo.feedback.rewards import score_profiles
from lettingo.feedback.train import load_recommender, recommender_identity
from lettingo.profiles.explore import PROFILE_COLUMNS, explore
from lettingo.profiles.stage import BackendPool, backbone_identity, backbones_by_name
from lettingo.runtime import RunContext

log = logging.getLogger(__name__)

TEST_PROFILES = "test_profiles"
PREDICTIONS = "predictions"
RESULTS_FILE = "results.json"
NO_PROFILE = "10H (no profile)"
NO_DPO, SFT, DPO = "no DPO", "SFT", "DPO"
TABLE3_METRICS = ("accuracy", "macro_f1")


def adapter_generators(cfg: DictConfig, store: ArtifactStore) -> dict[str, tuple[str, DictConfig, str]]:
    """Method label -> (backbone tag, backbone config with the adapter, adapter fingerprint) per trained adapter."""
    found = {}
    for label, method in ((SFT, "sft"), (DPO, "dpo")):
        meta = store.meta(adapter_artifact(method))
        if meta is None:
            continue
        tag = f"{cfg.backbone.name}+{method}"
        config = OmegaConf.merge(cfg.backbone, {"name": tag, "adapter": str(store.path(adapter_artifact(method)))})
        found[label] = (tag, config, str(meta["fingerprint"]))
    return found


def write_test_profiles(cfg: DictConfig, store: ArtifactStore, users: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One profile per user from every generator and prompt; returns the rows and tag -> method label."""
    tcfg, common = cfg.align.test, _explore_settings(cfg)
    bases = backbones_by_name(cfg.sampling.backbones)
    adapters = adapter_generators(cfg, store)
    configs = {**bases, **{tag: config for tag, config, _ in adapters.values()}}
    labels = {(name, str(cfg.prompt.name)): (NO_DPO if name == cfg.backbone.name else name) for name in bases}
    labels |= {(tag, str(cfg.prompt.name)): label for label, (tag, _, _) in adapters.items()}
    inputs = {"backbones": backbone_identity(configs), "adapters": {t: fp for t, _, fp in adapters.values()}}
    with BackendPool(configs) as backends:
        frames = [explore(users, backends, prompt_cfg=cfg.prompt, artifact_name=TEST_PROFILES, inputs=inputs,
                          store=store, **common)]
    generator = {str(cfg.backbone.name): cfg.backbone}
    for name, prompt_cfg in (tcfg.get("fixed_formats") or {}).items():
        with BackendPool(generator) as backends:
            frames.append(explore(users, backends, prompt_cfg=prompt_cfg, artifact_name=f"{TEST_PROFILES}_{name}",
                                  inputs={"backbones": backbone_identity(generator)}, store=store, **common))
        labels[(str(cfg.backbone.name), str(prompt_cfg.name))] = f"{prompt_cfg.name} ({cfg.backbone.name})"
    return pd.concat(frames, ignore_index=True), labels


def _explore_settings(cfg: DictConfig) -> dict[str, Any]:
    tcfg = cfg.align.test
    return {"item_text_cfg": cfg.dataset.item_text, "history_len": int(cfg.history.length), "n": 1,
            "temperature": float(tcfg.temperature), "max_new_tokens": int(tcfg.max_new_tokens), "seed": int(cfg.seed),
            "users_per_chunk": int(tcfg.users_per_chunk)}


def no_profile_rows(users: pd.DataFrame) -> pd.DataFrame:
    """Rows that stand for f_Rec with an empty profile (the 10H baseline), shaped like profile rows."""
    rows = [{"user_id": u, "split": s, "backbone": "none", "sample_idx": 0, "prompt_name": "none", "history_len": 0,
             "prompt": "", "text": "", "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0, "seed": 0,
             "degenerate": ""} for u, s in zip(users["user_id"], users["split"], strict=True)]
    return pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))


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


def compare(truth: list[str], predicted: Mapping[str, list[str]], n_resamples: int, confidence: float,
            seed: int) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, PairedDifference]]]:
    """Intervals of every method, and each other method's paired difference against DPO (method minus DPO)."""
    intervals = {m: summarize(truth, p, LABELS, DEFAULT_METRICS, n_resamples, confidence, seed)
                 for m, p in predicted.items()}
    versus = {}
    if DPO in predicted:
        versus = {other: {metric: paired_bootstrap(truth, p, predicted[DPO], LABELS, metric, n_resamples, confidence,
                                                   seed) for metric in DEFAULT_METRICS}
                  for other, p in predicted.items() if other != DPO}
    return intervals, versus


def report(intervals: Mapping[str, Mapping[str, Interval]], versus: Mapping[str, Mapping[str, PairedDifference]],
           recommender: str, n_users: int) -> str:
    """Markdown: Table 3 (no DPO / SFT / DPO, accuracy and F1), all methods, and DPO's paired differences."""
    heading = f"on {n_users} held-out users, f_Rec = {recommender}, 95% bootstrap CIs over users"
    table3 = {m: intervals[m] for m in (NO_DPO, SFT, DPO) if m in intervals}
    text = ""
    if table3:
        text += f"## Table 3: alignment ablation {heading}\n\n" + to_markdown(results_table(table3, TABLE3_METRICS))
    text += f"\n## Every method {heading}\n\n" + to_markdown(results_table(intervals))
    if versus:
        text += (f"\n## Paired differences against {DPO} (method minus {DPO}; negative favours {DPO})\n\n"
                 + to_markdown(paired_table(versus, DPO)))
    return text


def run_test(ctx: RunContext) -> dict[str, Any]:
    """Stage test: profiles of the held-out users from every method, scored by the frozen f_Rec.

    Writes `test_profiles*`, `predictions` and ``results.json``; prints Table 3 and the full table.
    """
    cfg, store, tcfg = ctx.cfg, ctx.store, ctx.cfg.align.test
    samples, _ = load_or_build_samples(cfg, store)
    users = samples[samples["split"] == str(tcfg.split)]
    if users.empty:
        raise ValueError(f"no users in split {tcfg.split!r} to test on")
    if tcfg.max_users is not None:
        users = users.head(int(tcfg.max_users))
    profiles, labels = write_test_profiles(cfg, store, users)
    profiles["method"] = [labels[(b, p)] for b, p in zip(profiles["backbone"], profiles["prompt_name"], strict=True)]
    profiles = pd.concat([no_profile_rows(users).assign(method=NO_PROFILE), profiles], ignore_index=True)

    recommender = load_recommender(cfg, store)
    fp = fingerprint({"profiles": profiles.loc[:, ["user_id", "method", "text"]].to_dict("list"),
                      "recommender": recommender_identity(cfg, store)})
    predictions = score_profiles(recommender, profiles, samples, store, PREDICTIONS, fp, int(tcfg.users_per_chunk))
    user_ids, truth, predicted = method_predictions(predictions)
    boot = tcfg.bootstrap
    intervals, versus = compare(truth, predicted, int(boot.n_resamples), float(boot.confidence), int(cfg.seed))
    markdown = report(intervals, versus, str(cfg.recommender.name), len(user_ids))
    print(markdown)

    folder = ctx.run_dir / "test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(markdown)
    plot = plot_intervals(intervals, "macro_f1", folder / "macro_f1.png", f"macro-F1 on {len(user_ids)} test users")
    results = {
        "split": str(tcfg.split), "users": len(user_ids), "recommender": str(cfg.recommender.name),
        "methods": {m: {k: v.to_dict() for k, v in row.items()} for m, row in intervals.items()},
        "versus_dpo": {m: {k: v.to_dict() for k, v in row.items()} for m, row in versus.items()},
        "details": {m: classification_metrics(truth, p, LABELS) for m, p in predicted.items()},
        "degenerate_share": predictions.groupby("method")["degenerate"].apply(lambda d: float((d != "").mean()))
        .to_dict(),
        "plot": str(plot),
    }
    write_json_atomic(ctx.run_dir / RESULTS_FILE, results)
    metrics = {f"test/{tcfg.split}/{m}/{k}{suffix}": getattr(v, field) for m, row in intervals.items()
               for k, v in row.items() for suffix, field in (("", "value"), ("_low", "low"), ("_high", "high"))}
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_table(f"test/{tcfg.split}/results", results_table(intervals).reset_index().set_axis(
        ["method", *[f"{h}_{f}" for h, f in results_table(intervals).columns]], axis=1))
    ctx.tracker.log_image(f"test/{tcfg.split}/macro_f1", plot)
    ctx.tracker.log_table(f"test/{tcfg.split}/confusion_matrix", confusion_frame(results["details"]))
    ctx.tracker.log_table(f"test/{tcfg.split}/samples", reward_samples(predictions, "method"))
    print(f"results: {ctx.run_dir / RESULTS_FILE}\nplot: {plot}")
    return results
