"""Stage data: the dataset's interactions cut into per-user samples and split into user groups; every item
carries its rating statistics among the users outside the held-out splits (`lettingo.data.item_stats`)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate

from lettingo.artifacts import SAMPLES, write_table_data
from lettingo.data.item_stats import ItemStats, annotate_items
from lettingo.data.prepare import SampleSpec, format_summary, make_samples, summarize_data
from lettingo.data.schema import LabelThresholds
from lettingo.data.splits import PROFILE_TRAIN, REC_TRAIN, TEST, expand_split_sizes, profile_split
from lettingo.runtime import show
from lettingo.schemas import LettingoConfig
from lettingo.stages.base import Output, Stage, StageContext

log = logging.getLogger(__name__)


def sample_spec(conf: LettingoConfig) -> SampleSpec:
    """The sample/split specification from the `dataset` and `history` configs."""
    histories = sorted({*conf.dataset.histories, conf.history.length})
    return SampleSpec(
        recent=conf.history.recent,
        histories=histories,
        split_sizes=expand_split_sizes(conf.dataset.splits, histories),
        split_seed=conf.dataset.split_seed,
        thresholds=LabelThresholds(**asdict(conf.dataset.labels)),
        targets=conf.evaluate.targets_per_user,
    )


def check_splits_filled(samples: pd.DataFrame, spec: SampleSpec, conf: LettingoConfig) -> None:
    """Fail in one line when a requested split got no users (the data has too few users this long)."""
    sizes = samples["split"].value_counts()
    empty = sorted(name for name, size in spec.split_sizes.items() if size > 0 and sizes.get(name, 0) == 0)
    if empty:
        need = spec.max_history + spec.recent + spec.targets
        raise ValueError(f"history.length={conf.history.length}, history.recent={spec.recent}, "
                         f"evaluate.targets_per_user={spec.targets}: only {len(samples)} "
                         f"users of {conf.dataset.name} have the {need} interactions needed, so splits {empty} got "
                         "no users; "
                         "lower H, K or M, or the split sizes")


def run(ctx: StageContext) -> dict[str, Any]:
    """Build the samples (reused when finished for the same inputs) and print their summary."""
    conf, store = ctx.conf, ctx.store

    def build(folder: Path) -> dict[str, Any]:
        spec = sample_spec(conf)
        interactions = instantiate(conf.dataset.loader)()
        samples = make_samples(interactions, spec, source=conf.dataset.name)
        check_splits_filled(samples, spec, conf)
        held_out = {conf.test.split, conf.evaluate.split}
        samples = annotate_items(samples, ItemStats.from_samples(samples[~samples["split"].isin(held_out)]))
        return write_table_data(folder, samples) | {"summary": summarize_data(interactions, samples, spec)}

    summary = ctx.make(SAMPLES, build)["summary"]
    show(format_summary(summary, conf.dataset.name))
    show(f"samples artifact: {store.path(SAMPLES)}")
    sizes = summary["split_sizes"]
    # Scalars for the splits this run uses (its own H's profile group as `profile_train`); all groups in a table.
    used = {TEST: conf.test.split, REC_TRAIN: REC_TRAIN, PROFILE_TRAIN: profile_split(conf.history.length)}
    ctx.tracker.log_metrics({f"data/{role}/users": sizes.get(split, 0) for role, split in used.items()}
                            | {"data/all/interactions": summary["interactions"]})
    ctx.tracker.log_table("data/splits", pd.DataFrame({"split": list(sizes), "users": list(sizes.values())}))
    return summary


STAGE = Stage(
    name="data",
    run=run,
    needs=(),
    # How items are written into prompts is not part of the samples.
    outputs=lambda cfg: [Output(SAMPLES, config=("dataset", "history", "test.split", "evaluate.split",
                                                 "evaluate.targets_per_user"),
                                not_identity=("dataset.item_text", "dataset.attribute_label"))],
)
