"""Stage explore: `sampling.n` profiles per user of `sampling.splits` from every backbone of `sampling.backbones`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import pandas as pd

from lettingo.artifacts import PROFILES, SAMPLES
from lettingo.data.splits import split_role
from lettingo.llm.pool import BackendPool, backbones_by_name
from lettingo.profiles.explore import KEY, explore, explore_split_samples
from lettingo.profiles.quality import format_summary, summarize_profiles
from lettingo.runtime import show
from lettingo.stages.base import PROFILE_CONFIG, Output, Stage, StageContext, backbones_pace_keys

log = logging.getLogger(__name__)

SAMPLE_ROWS = 3  # users shown in the `explore/samples` table (sample 0 of every backbone)


def tracker_metrics(summary: Mapping[str, Any], split: str) -> dict[str, float]:
    """One split's summary over every backbone as `explore/<split role>/<metric>` scalars (no H, no backbone
    name in a key: every run of a sweep shares them); per-backbone numbers go to :func:`backbone_table`."""
    return {f"explore/{split_role(split)}/{key}": float(summary[key])
            for key in ("profiles", "users", "mean_tokens", "degenerate_share", "seconds", "completion_tokens")}


def backbone_table(summaries: Mapping[str, Mapping[str, Any]],
                   usage: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """One row per (split, backbone): its summary numbers, the agreement across backbones, and an API
    backbone's requests, tokens and cost (columns a backbone lacks are empty)."""
    rows = [{"split": split, "backbone": name, **values, **{f"across_{k}": v for k, v in summary["across"].items()},
             **usage.get(name, {})}
            for split, summary in summaries.items() for name, values in summary["per_backbone"].items()]
    return pd.DataFrame(rows)


def run(ctx: StageContext) -> dict[str, Any]:
    """Write (or grow, or resume) the `profiles` artifact; log the summary per split and a few profiles."""
    conf = ctx.conf
    sampling, splits = conf.sampling, conf.sampling.splits
    samples = ctx.read_table(SAMPLES)
    backends = BackendPool(backbones_by_name(sampling.backbones))
    with backends:
        frame = explore(
            explore_split_samples(samples, splits), backends, prompt_cfg=asdict(conf.prompt),
            item_text_cfg=asdict(conf.dataset.item_text), history_len=conf.history.length, n=sampling.n,
            temperature=sampling.temperature, max_new_tokens=sampling.max_new_tokens, seed=conf.seed,
            rows=ctx.rows(PROFILES, KEY), max_users=sampling.max_users,
            users_per_chunk=sampling.users_per_chunk,
        )
    explored = {split: frame[frame["split"] == split] for split in splits}
    summaries = {split: summarize_profiles(rows) for split, rows in explored.items() if not rows.empty}
    if frame.empty:
        show(f"explore: no users explored (sampling.max_users={sampling.max_users})")
    for split, summary in summaries.items():
        show(format_summary(summary, split))
        ctx.tracker.log_metrics(tracker_metrics(summary, split))
    for name, used in backends.usage.items():  # API backbones: requests, exact tokens and cost of this call
        show(f"explore {name}: " + ", ".join(f"{k} {v:g}" for k, v in used.items()))
    ctx.tracker.log_table("explore/backbones", backbone_table(summaries, backends.usage))
    shown = frame[(frame["sample_idx"] == 0) & frame["user_id"].isin(frame["user_id"].unique()[:SAMPLE_ROWS])]
    ctx.tracker.log_table("explore/samples", shown.loc[:, ["user_id", "backbone", "text", "degenerate"]])
    show(f"profiles artifact: {ctx.store.path(PROFILES)}")
    return {"artifact": str(ctx.store.path(PROFILES)), "splits": summaries}


STAGE = Stage(
    name="explore",
    run=run,
    needs=(SAMPLES,),
    outputs=lambda cfg: [Output(PROFILES, config=PROFILE_CONFIG, inputs=(SAMPLES,),
                                grows_by=("sampling.max_users", "sampling.n", "sampling.splits"),
                                not_identity=backbones_pace_keys(cfg))],
)
