"""Stage explore: `sampling.n` profiles per user of `sampling.splits` from every backbone of `sampling.backbones`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from lettingo.artifacts import PROFILES, SAMPLES
from lettingo.llm.pool import BackendPool, backbones_by_name
from lettingo.profiles.explore import KEY, explore, explore_split_samples
from lettingo.profiles.quality import format_summary, summarize_profiles
from lettingo.runtime import show
from lettingo.stages.base import PROFILE_CONFIG, Output, Stage, StageContext, backbones_pace_keys

log = logging.getLogger(__name__)

SAMPLE_ROWS = 3  # users shown in the `explore/samples` table (sample 0 of every backbone)


def tracker_metrics(summary: Mapping[str, Any], split: str) -> dict[str, float]:
    """Flatten one split's summary into `explore/<split>/[<backbone>/]<metric>` scalars."""
    metrics = {
        f"explore/{split}/{key}": float(summary[key])
        for key in ("profiles", "users", "mean_tokens", "degenerate_share", "seconds", "completion_tokens")
    }
    metrics |= {f"explore/{split}/across_{k}": float(v) for k, v in summary["across"].items()}
    for name, values in summary["per_backbone"].items():
        metrics |= {f"explore/{split}/{name}/{k}": float(v) for k, v in values.items()}
    return metrics


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
        ctx.tracker.log_metrics({f"explore/all/{name}/{k}": float(v) for k, v in used.items()})
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
