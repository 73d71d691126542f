"""What a shortened generator prompt costs in profile quality, on one finished run's held-out users.

The run's base generator writes one greedy profile per user (as the test stage's no-DPO row does) from
two prompts that differ only in the item list: the run's own prompt (e.g. `experiment=ml1m_cpu`'s newest
10 of the H older items, without genres) and the full prompt (all H items with their genres; the same
facts). The run's f_Rec scores both on the same users, next to its no-profile and oracle-facts rows for
scale. Written to `<out>/prompt_quality_k<K>.md` and `.csv`: accuracy, macro-F1 and weighted-F1 with 95%
intervals, the paired difference full - run's prompt (an effect is claimed only where its interval
excludes zero), and what the texts state: the share naming one of the user's highest-rated genres, one of
the lowest-rated, the user's mean rating; the prompt and profile tokens and seconds per profile.

Generation and scoring are resumable: their artifacts live in `<run>/prompt_quality/`, so a killed
run continues where it stopped (the run's own artifacts are only read). `benchmarks/prompt_cost.py`
measures the other side: what each prompt costs in seconds.

Run: python benchmarks/prompt_quality.py outputs/ml1m_cpu_k3/latest [--users 100] [--out results]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lettingo.artifacts import REC_MODEL, SAMPLES, ArtifactStore, atomic_path, fingerprint
from lettingo.evaluation.comparison import Comparison
from lettingo.evaluation.methods import ORACLE_FACTS, no_profile_label
from lettingo.evaluation.tables import to_markdown
from lettingo.feedback.rewards import score_profiles
from lettingo.llm.pool import BackendPool
from lettingo.profiles.explore import KEY, explore
from lettingo.profiles.prompts import history_items
from lettingo.profiles.user_facts import user_facts
from lettingo.recommender.loading import LazyRecommender
from lettingo.reports import RUN_CONFIG_FILE, effect_verdict, markdown_table
from lettingo.schemas import LettingoConfig, config_object
from lettingo.stages.test import explore_settings, method_predictions, reference_rows, test_users

NAME = "prompt_quality"
DEFAULT_OUT = "results"
DEFAULT_USERS = 100
WORK = "prompt_quality"  # the script's artifact folder inside the run folder
FULL = "full prompt"  # every older item listed, with its attributes
CSV_COLUMNS = ("section", "row", "metric", "value", "low", "high", "n")


def run_prompt_label(prompt_cfg: Mapping[str, Any], history: int) -> str:
    """The results label of the run's own prompt, saying what its item list shows."""
    listed = prompt_cfg.get("listed_items")
    shortened = listed is not None and int(listed) < history
    items = f"newest {listed} of {history} items" if shortened else f"all {history} items"
    attributes = "with" if prompt_cfg.get("item_attributes", True) else "without"
    return f"run's prompt ({items}, {attributes} attributes)"


def full_prompt(prompt_cfg: DictConfig) -> DictConfig:
    """The run's prompt listing every older item with its attributes, under its own name (its rows' key)."""
    return OmegaConf.merge(prompt_cfg, {"name": f"{prompt_cfg.name}_full", "listed_items": None,
                                        "item_attributes": True})


def text_facts(samples: pd.DataFrame, texts: pd.DataFrame, history: int,
               facts_cfg: Mapping[str, Any]) -> dict[str, float]:
    """Shares of ``texts`` (one profile per user) that name a highest- or lowest-rated attribute of the
    user, or the user's mean rating (as the prompt states it, one decimal)."""
    by_user = samples.set_index(samples["user_id"].astype(str))
    counts = {"names a highest-rated genre": 0, "names a lowest-rated genre": 0, "states the mean rating": 0}
    for user, text in zip(texts["user_id"].astype(str), texts["text"].str.lower(), strict=True):
        facts = user_facts(history_items(by_user.loc[user], history), facts_cfg)
        prefs, stats = facts["preferences"], facts["stats"]
        if prefs and any(a.name.lower() in text for a in prefs.highest):
            counts["names a highest-rated genre"] += 1
        if prefs and any(a.name.lower() in text for a in prefs.lowest):
            counts["names a lowest-rated genre"] += 1
        if stats and f"{stats.mean:.1f}" in text:
            counts["states the mean rating"] += 1
    return {key: value / max(1, len(texts)) for key, value in counts.items()}


def profiles_artifact(prompt_cfg: Mapping[str, Any]) -> str:
    """The script's artifact of the profiles written with ``prompt_cfg``."""
    return f"profiles_{prompt_cfg['name']}"


def generate(cfg: DictConfig, conf: LettingoConfig, users: pd.DataFrame, prompts: Mapping[str, DictConfig],
             store: ArtifactStore, samples_fp: str) -> pd.DataFrame:
    """One greedy profile per user and prompt from the run's base generator (artifact per prompt)."""
    settings = explore_settings(conf)  # as the test stage writes its profiles
    identity = {"samples": samples_fp, "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
                **{k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                   for k, v in settings.items() if k != "users_per_chunk"}}
    frames = []
    with BackendPool({str(cfg.backbone.name): cfg.backbone}) as pool:
        for label, prompt_cfg in prompts.items():
            fp = fingerprint({**identity, "prompt": OmegaConf.to_container(prompt_cfg, resolve=True)})
            frame = explore(users, pool, prompt_cfg=prompt_cfg, rows=store.rows(profiles_artifact(prompt_cfg), fp, KEY),
                            **settings)
            frames.append(frame.assign(method=label))
    return pd.concat(frames, ignore_index=True)


def build(run_dir: Path, out: Path, n_users: int = DEFAULT_USERS) -> dict[str, Path]:
    """Generate, score and compare the two prompts on the first ``n_users`` test users of ``run_dir``."""
    run_dir = Path(run_dir)
    config_file = run_dir / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no run config; is {run_dir} a lettingo run folder?")
    cfg = OmegaConf.create(json.loads(config_file.read_text(encoding="utf-8"))["config"])
    run_store = ArtifactStore(run_dir, read_only=True)
    trained = bool(cfg.recommender.trainable)
    for needed in (SAMPLES, REC_MODEL) if trained else (SAMPLES,):
        if run_store.meta(needed) is None:
            raise FileNotFoundError(f"{run_store.path(needed)}: not finished; run the pipeline through train_rec first")
    samples = run_store.read_table(SAMPLES)
    conf = config_object(cfg)
    users = test_users(dataclasses.replace(conf.test, max_users=int(n_users)), samples)
    history, recent = int(cfg.history.length), int(cfg.history.recent)
    own = run_prompt_label(cfg.prompt, history)
    store = ArtifactStore(run_dir / WORK)
    prompts = {own: cfg.prompt, FULL: full_prompt(cfg.prompt)}
    generated = generate(cfg, conf, users, prompts, store,
                         str(run_store.meta(SAMPLES)["fingerprint"]))
    references = reference_rows(conf, users)
    profiles = pd.concat([references, generated], ignore_index=True)
    rec_meta = run_store.meta(REC_MODEL) if trained else None
    checkpoint = run_store.path(REC_MODEL) / rec_meta["checkpoint"] if rec_meta else None
    recommender = LazyRecommender(str(cfg.recommender.name), cfg.recommender.model, checkpoint)
    identity = {"rec_model": rec_meta["fingerprint"] if rec_meta else OmegaConf.to_container(cfg.recommender),
                "profiles": [store.fingerprint_of(profiles_artifact(p)) for p in prompts.values()]}
    scored = score_profiles(recommender, profiles, samples, store.rows("predictions", fingerprint(identity), KEY),
                            int(cfg.test.users_per_chunk))
    user_ids, truth, predicted = method_predictions(scored)
    comparison = Comparison.compute(user_ids, truth, predicted, references=[own],
                                    n_resamples=int(cfg.bootstrap.n_resamples),
                                    confidence=float(cfg.bootstrap.confidence), seed=int(cfg.seed))
    return write(out, recent, cfg, comparison, generated, samples, own)


def shown(key: str, value: float) -> str:
    """A cell of the texts table: tokens whole, seconds to 0.01, shares in percent."""
    if key.endswith("tokens"):
        return f"{value:,.0f}"
    return f"{value:.2f}" if key == "s/profile" else f"{100 * value:.1f}%"


def write(out: Path, recent: int, cfg: DictConfig, comparison: Comparison, generated: pd.DataFrame,
          samples: pd.DataFrame, own: str) -> dict[str, Path]:
    """The markdown and CSV of the comparison and of what the two prompts' texts state."""
    history = int(cfg.history.length)
    rows: list[dict[str, Any]] = []
    for method, metrics in comparison.intervals.items():
        rows += [{"section": "methods", "row": method, "metric": metric, "value": value.value, "low": value.low,
                  "high": value.high, "n": len(comparison.users)} for metric, value in metrics.items()]
    difference = comparison.paired[own][FULL]
    rows += [{"section": "paired", "row": f"{FULL} - {own}", "metric": metric, "value": d.value, "low": d.low,
              "high": d.high, "n": len(comparison.users)} for metric, d in difference.items()]
    texts = []
    for label, frame in generated.groupby("method", sort=False):
        stated = text_facts(samples, frame, history, cfg.prompt.facts)
        row = {"prompt": label, "prompt tokens": frame["prompt_tokens"].mean(),
               "profile tokens": frame["completion_tokens"].mean(), "s/profile": frame["seconds"].mean(),
               **stated, "degenerate": (frame["degenerate"] != "").mean()}
        texts.append(row)
        rows += [{"section": "texts", "row": label, "metric": key, "value": value, "low": "", "high": "",
                  "n": len(frame)} for key, value in row.items() if key != "prompt"]
    accuracy = difference["accuracy"]
    markdown = "\n\n".join([
        f"# What the shortened prompt costs (K = {recent}, H = {history}, {len(comparison.users)} held-out users)",
        f"Made by `python benchmarks/{NAME}.py <run folder>` from run `{cfg.experiment_name}`: the base generator "
        f"`{cfg.backbone.name}` writes one greedy profile per user from each prompt; f_Rec `{cfg.recommender.name}` "
        f"scores both on the same users. For scale, `{no_profile_label(recent)}` is what the f_Rec predicts without a "
        f"profile and `{ORACLE_FACTS}` with the older history's facts stated exactly.",
        to_markdown(comparison.table()),
        f"## Paired difference, {FULL} {chr(0x2212)} {own}\n\n" + to_markdown(comparison.paired_table(own)),
        f"Accuracy: {effect_verdict(accuracy)}.",
        "## What the texts state\n\nShares of the profiles (one per user), mean tokens and seconds per profile.\n\n"
        + markdown_table(list(texts[0]), [[row["prompt"], *(shown(key, value) for key, value in row.items()
                                                             if key != "prompt")] for row in texts]),
    ]) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / f"{NAME}_k{recent}.md", "csv": out / f"{NAME}_k{recent}.csv"}
    with atomic_path(paths["csv"]) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return paths


def main() -> None:
    """Command line: the run folder, how many test users, where the results go."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder finished through train_rec")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="the first N held-out users")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="folder of the results files")
    args = parser.parse_args()
    for path in build(args.run_dir, args.out, args.users).values():
        print(path)


if __name__ == "__main__":
    main()
