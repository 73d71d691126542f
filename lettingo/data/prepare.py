"""The data stage: load a dataset, build samples for the largest H, split users, summarise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lettingo.data.samples import build_samples, eligible_users, label_distribution
from lettingo.data.schema import LabelThresholds
from lettingo.data.splits import assign_splits


@dataclass(frozen=True)
class SampleSpec:
    """How samples are cut and split: K recent items, the H values served, split sizes and seed, M targets."""

    recent: int
    histories: Sequence[int]
    split_sizes: Mapping[str, int]
    split_seed: int
    thresholds: LabelThresholds
    targets: int = 1

    @property
    def max_history(self) -> int:
        """The largest H: every split user has at least this many older interactions."""
        return max(self.histories)


def make_samples(interactions: pd.DataFrame, spec: SampleSpec, source: object = "dataset") -> pd.DataFrame:
    """Samples of every user eligible for the largest H, with their `split` column."""
    samples = build_samples(interactions, spec.thresholds, spec.recent, spec.max_history, source, spec.targets)
    splits = assign_splits(samples["user_id"].tolist(), spec.split_sizes, spec.split_seed)
    return samples.assign(split=samples["user_id"].map(splits))


def summarize_data(interactions: pd.DataFrame, samples: pd.DataFrame, spec: SampleSpec) -> dict[str, Any]:
    """Counts a researcher checks first: interactions, users, items, eligibility, splits, labels."""
    labels = interactions["rating"].map(spec.thresholds.label)
    return {
        "interactions": int(len(interactions)),
        "users": int(interactions["user_id"].nunique()),
        "items": int(interactions["item_id"].nunique()),
        "eligible_users_per_H": {
            str(h): int(len(eligible_users(interactions, h, spec.recent, spec.targets))) for h in sorted(spec.histories)
        },
        "targets_per_user": spec.targets,
        "split_sizes": {k: int(v) for k, v in samples["split"].value_counts().sort_index().items()},
        "label_distribution_all": label_distribution(labels),
        "label_distribution_targets": label_distribution([t["label"] for t in samples["target"]]),
    }


def format_summary(summary: Mapping[str, Any], name: str) -> str:
    """The data summary as readable lines."""
    lines = [
        f"dataset {name}: {summary['interactions']:,} interactions, {summary['users']:,} users, "
        f"{summary['items']:,} items"
    ]
    per_h = ", ".join(f"H={h}: {n}" for h, n in summary["eligible_users_per_H"].items())
    lines.append(f"eligible users (>= H + K + {summary.get('targets_per_user', 1)} interactions): {per_h}")
    lines.append("splits: " + ", ".join(f"{k}={v}" for k, v in summary["split_sizes"].items()))
    for key in ("label_distribution_all", "label_distribution_targets"):
        dist = summary[key]
        total = max(sum(dist.values()), 1)
        shown = ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in dist.items())
        lines.append(f"labels ({key.rsplit('_', 1)[-1]}): {shown}")
    return "\n".join(lines)

