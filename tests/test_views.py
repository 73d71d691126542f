"""Tracker views: reward samples, confusion frames and the distributions the evaluate stage logs."""

from __future__ import annotations

import pandas as pd

from lettingo.evaluation.metrics import classification_metrics
from lettingo.evaluation.views import confusion_frame, log_reward_views, reward_samples
from lettingo.tracking import CsvTracker


def _rewards() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["1", "1", "2", "2", "3"], "backbone": ["a", "b", "a", "b", "a"], "sample_idx": [0, 0, 0, 0, 0],
        "text": ["p1", "p2", "p3", "p4", "p5"], "reward": [0.9, 0.2, 0.5, 0.4, 0.7],
        "correct": [True, False, True, False, True], "completion_tokens": [10, 20, 30, 40, 50],
    })


def test_reward_samples_keeps_every_profile_of_the_first_users() -> None:
    shown = reward_samples(_rewards(), n_users=2)
    assert shown["user_id"].tolist() == ["1", "1", "2", "2"]
    assert shown["reward"].tolist() == [0.9, 0.2, 0.5, 0.4] and "backbone" in shown


def test_confusion_frame_rows_are_true_labels() -> None:
    details = {"DPO": classification_metrics(["like", "like", "dislike"], ["like", "dislike", "dislike"],
                                            ["like", "neutral", "dislike"])}
    frame = confusion_frame(details).set_index("true")
    assert frame.loc["like", "predicted_like"] == 1 and frame.loc["like", "predicted_dislike"] == 1
    assert frame.loc["dislike", "predicted_dislike"] == 1 and frame.loc["neutral"].drop("method").sum() == 0


def test_reward_views_write_samples_and_distributions_over_every_backbone(tmp_path) -> None:
    log_reward_views(CsvTracker(tmp_path), _rewards(), "evaluate")
    tables = tmp_path / "tables"
    # One key per distribution, no backbone name in it (single- and multi-LLM runs share it); the samples
    # table says which backbone wrote each profile.
    assert sorted(p.name for p in tables.iterdir()) == ["evaluate__profile_tokens.csv", "evaluate__reward.csv",
                                                        "evaluate__samples.csv"]
    assert pd.read_csv(tables / "evaluate__profile_tokens.csv")["value"].tolist() == [10, 20, 30, 40, 50]
    assert pd.read_csv(tables / "evaluate__reward.csv")["value"].tolist() == [0.9, 0.2, 0.5, 0.4, 0.7]
    samples = pd.read_csv(tables / "evaluate__samples.csv")
    assert len(samples) == 5 and samples["backbone"].tolist() == ["a", "b", "a", "b", "a"]
