"""Per-user samples: target = last interaction, recent = the K before it, older = the H before those.

With M targets per user (`evaluate.targets_per_user`) the user's last K + M interactions come after the
older history: target j (0..M-1) is the (K + j)-th of them, read with the K before it; the last target is
the primary one (`target`, `recent`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from lettingo.data.schema import LABELS, DataFormatError, LabelThresholds, attribute_list

ITEM_FIELDS: tuple[str, ...] = ("item_id", "rating", "timestamp", "title", "attributes", "text", "label")


def add_labels(interactions: pd.DataFrame, thresholds: LabelThresholds) -> pd.DataFrame:
    """Return a copy of the interactions with a `label` column from the rating thresholds."""
    return interactions.assign(label=thresholds.labels(interactions["rating"]))


def eligible_users(interactions: pd.DataFrame, history: int, recent: int, targets: int = 1) -> pd.Index:
    """Users with at least `history + recent + targets` interactions."""
    counts = interactions.groupby("user_id").size()
    return counts.index[counts >= history + recent + targets]


def target_windows(after: Sequence[Mapping[str, Any]], recent: int) -> list[dict[str, Any]]:
    """Every `{"target", "recent"}` window of the items after the older history, oldest target first:
    target j is `after[recent + j]`, read with the `recent` items before it."""
    return [{"target": after[recent + j], "recent": list(after[j : recent + j])} for j in range(len(after) - recent)]


def build_samples(
    interactions: pd.DataFrame,
    thresholds: LabelThresholds,
    recent: int,
    history: int,
    source: object = "interactions",
    targets: int = 1,
) -> pd.DataFrame:
    """One row per eligible user: `user_id, target, recent, older, targets, n_interactions`.

    Interactions are ordered by time (ties keep their order in the source). `older` holds the
    `history` interactions before the last `recent + targets`, oldest first; shorter histories H are
    its last H items (`older_history`). `targets` holds the `targets` windows of `target_windows`, the
    last being (`target`, `recent`). No target or recent item appears in `older`.
    """
    if recent < 1 or history < 1:
        raise ValueError(f"recent={recent} and history={history} must both be at least 1")
    if targets < 1:
        raise ValueError(f"evaluate.targets_per_user={targets}: must be at least 1")
    users = eligible_users(interactions, history, recent, targets)
    if len(users) == 0:
        raise DataFormatError(
            source, f"no user has the {history + recent + targets} interactions needed (H={history}, K={recent}, "
                    f"M={targets})"
        )
    labelled = add_labels(interactions[interactions["user_id"].isin(users)], thresholds)
    ordered = labelled.sort_values(["user_id", "timestamp"], kind="stable")
    counts = ordered.groupby("user_id").size()
    window = ordered.groupby("user_id", sort=True).tail(history + recent + targets)
    rows = []
    for user_id, items in window.groupby("user_id", sort=True):
        records = items.loc[:, list(ITEM_FIELDS)].to_dict("records")
        for record in records:
            record["attributes"] = attribute_list(record["attributes"])
        after = records[history:]
        rows.append(
            {
                "user_id": user_id,
                "target": after[-1],
                "recent": after[-recent - 1 : -1],
                "older": records[:history],
                "targets": target_windows(after, recent),
                "n_interactions": int(counts[user_id]),
            }
        )
    return pd.DataFrame(rows)


def plain_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A sample's item as a dict with a plain list of attributes (samples read back from Parquet hold NumPy arrays)."""
    return {**item, "attributes": attribute_list(item.get("attributes"))}


def sample_items(sample: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every item of a sample, some more than once: older, recent, target and each target window's items."""
    windows = sample.get("targets")
    later = [item for w in ([] if windows is None else windows) for item in (*w["recent"], w["target"])]
    return [*sample["older"], *sample["recent"], sample["target"], *later]


def older_history(sample: Mapping[str, Any], history: int) -> list[Mapping[str, Any]]:
    """The last `history` items of a sample's older history, oldest first."""
    older = list(sample["older"])
    if history > len(older):
        raise ValueError(f"user {sample['user_id']} has {len(older)} older items, fewer than H={history}")
    return older[len(older) - history :]


def label_distribution(labels: Sequence[str]) -> dict[str, int]:
    """Counts of each label, in the fixed label order."""
    counts = pd.Series(list(labels)).value_counts()
    return {label: int(counts.get(label, 0)) for label in LABELS}
