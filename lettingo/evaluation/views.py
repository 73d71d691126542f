"""Frames and distributions that stages send to the tracker for browsing (W&B tables and histograms)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # only the interface; importing tracking would pull lightning into report scripts
    from lettingo.tracking import Tracker

SAMPLE_USERS = 5  # users whose every profile is shown in a samples table


def reward_samples(rewards: pd.DataFrame, source: str = "backbone", n_users: int = SAMPLE_USERS) -> pd.DataFrame:
    """Every profile of the first ``n_users`` users with its reward (`evaluate.reward`) and, when f_Rec judged it,
    whether f_Rec was right on the real target.

    ``source`` names the column that says who wrote the profile (`backbone`, or `method` in the test stage).
    """
    shown = rewards[rewards["user_id"].isin(rewards["user_id"].unique()[:n_users])]
    columns = ["user_id", source, "sample_idx", "text", "reward", *(["correct"] if "correct" in rewards else [])]
    return shown.loc[:, columns].reset_index(drop=True)


def confusion_frame(details: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (method, true label): the counts of each predicted label, from ``classification_metrics``."""
    rows = []
    for method, metrics in details.items():
        labels: Sequence[str] = metrics["labels"]
        for true, counts in zip(labels, metrics["confusion_matrix"], strict=True):
            rows.append({"method": method, "true": true, **{f"predicted_{p}": int(c) for p, c in
                                                            zip(labels, counts, strict=True)}})
    return pd.DataFrame(rows)


def log_reward_views(tracker: Tracker, rewards: pd.DataFrame, prefix: str) -> None:
    """Sample profiles with rewards (column `backbone`), and the profile-length and reward distributions over
    every backbone's profiles (keys without backbone names, so single- and multi-LLM runs share them)."""
    tracker.log_table(f"{prefix}/samples", reward_samples(rewards))
    tracker.log_histogram(f"{prefix}/profile_tokens", rewards["completion_tokens"].astype(float).tolist())
    tracker.log_histogram(f"{prefix}/reward", rewards["reward"].astype(float).tolist())
