"""Item statistics in the samples come from the users outside the held-out splits, leaving each user out."""

from __future__ import annotations

import pandas as pd

from lettingo.data.item_stats import OTHERS_COUNT, OTHERS_MEAN, ItemStats, annotate_items
from lettingo.recommender.cases import case_from_sample
from lettingo.recommender.text import ItemTextConfig, case_fields


def item(item_id: str, rating: float) -> dict:
    label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
    return {"item_id": item_id, "rating": rating, "label": label, "title": item_id, "attributes": []}


def sample(user: str, split: str, target: dict, recent: list[dict]) -> dict:
    return {"user_id": user, "split": split, "target": target, "recent": recent, "older": []}


def annotated() -> pd.DataFrame:
    samples = pd.DataFrame([
        sample("a", "rec_train", item("shared", 5), [item("x", 4)]),
        sample("b", "rec_train", item("shared", 3), [item("x", 2)]),
        sample("t", "test", item("only_test", 1), [item("shared", 1)]),
    ])
    return annotate_items(samples, ItemStats.from_samples(samples[samples["split"] != "test"]))


def test_a_held_out_users_ratings_never_enter_the_statistics() -> None:
    frame = annotated().set_index("user_id")
    assert frame.loc["t", "target"][OTHERS_COUNT] == 0 and frame.loc["t", "target"][OTHERS_MEAN] is None
    assert frame.loc["t", "recent"][0][OTHERS_COUNT] == 2 and frame.loc["t", "recent"][0][OTHERS_MEAN] == 4.0


def test_a_training_user_is_left_out_of_its_own_item_statistics() -> None:
    frame = annotated().set_index("user_id")
    assert frame.loc["a", "target"][OTHERS_MEAN] == 3.0 and frame.loc["a", "target"][OTHERS_COUNT] == 1
    assert frame.loc["b", "recent"][0][OTHERS_MEAN] == 4.0


def test_the_target_statistics_reach_the_recommender_text() -> None:
    frame = annotated().set_index("user_id", drop=False)
    fields = case_fields(case_from_sample(frame.loc["a"].to_dict()), ItemTextConfig(), "none")
    assert fields["target_stats"] == "other users rate it 3.0 on average (1 ratings)"
    fields = case_fields(case_from_sample(frame.loc["t"].to_dict()), ItemTextConfig(), "none")
    assert fields["target_stats"] == "no other user has rated it"
