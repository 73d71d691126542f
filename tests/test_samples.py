"""Samples never leak the target or recent items into the older history; splits are disjoint and seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lettingo.data.prepare import SampleSpec, make_samples, summarize_data
from lettingo.data.samples import add_labels, build_samples, older_history, plain_item
from lettingo.data.schema import DataFormatError, LabelThresholds, attribute_list, finalize_interactions
from lettingo.data.splits import UNUSED, assign_splits


def synthetic_interactions(n_users: int = 30, per_user: int = 20, seed: int = 0) -> pd.DataFrame:
    """Users with shuffled timestamps, so time order differs from file order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        times = rng.permutation(per_user + u % 5) * 100 + 1_000
        for i, t in enumerate(times):
            rows.append({"user_id": f"u{u}", "item_id": f"i{u}_{i}", "rating": float(rng.integers(1, 6)),
                         "timestamp": int(t), "title": f"Item {i}", "attributes": ["Drama"], "text": ""})
    return finalize_interactions(pd.DataFrame(rows), "synthetic")


def test_target_and_recent_are_the_latest_and_never_in_older() -> None:
    inter = synthetic_interactions()
    samples = build_samples(inter, LabelThresholds(), recent=4, history=8)
    assert len(samples) == 30  # every user has >= 20 >= 8 + 4 + 1 interactions
    for row in samples.itertuples():
        user = inter[inter.user_id == row.user_id].sort_values("timestamp")
        expected = user["item_id"].tolist()
        assert row.target["item_id"] == expected[-1]
        assert [r["item_id"] for r in row.recent] == expected[-5:-1]
        assert [r["item_id"] for r in row.older] == expected[-13:-5]
        later = {row.target["item_id"], *(r["item_id"] for r in row.recent)}
        assert not later & {r["item_id"] for r in row.older}
        assert max(r["timestamp"] for r in row.older) < min(r["timestamp"] for r in row.recent)
        assert [r["item_id"] for r in older_history(row._asdict(), 3)] == expected[-8:-5]


def test_labels_follow_thresholds() -> None:
    thresholds = LabelThresholds(like_min=4.0, dislike_max=2.5)
    assert [thresholds.label(r) for r in (5, 4, 3.5, 3, 2.5, 1)] == [
        "like", "like", "neutral", "neutral", "dislike", "dislike"]
    samples = build_samples(synthetic_interactions(), thresholds, recent=2, history=3)
    for target in samples["target"]:
        assert target["label"] == thresholds.label(target["rating"])


def test_one_rule_labels_single_ratings_and_whole_columns() -> None:
    thresholds = LabelThresholds(like_min=4.0, dislike_max=2.5)
    ratings = [5, 4, 3.99, 3, 2.51, 2.5, 0.5, float("nan")]
    expected = ["like", "like", "neutral", "neutral", "neutral", "dislike", "dislike", "neutral"]
    assert thresholds.labels(ratings).tolist() == expected
    assert [thresholds.label(r) for r in ratings] == expected
    frame = pd.DataFrame({"rating": ratings[:4]}, index=[7, 3, 9, 1])  # labels follow the index, not positions
    assert add_labels(frame, thresholds)["label"].to_dict() == {7: "like", 3: "like", 9: "neutral", 1: "neutral"}


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        ("Action|Sci-Fi| Action |", {"sep": "|"}, ["Action", "Sci-Fi"]),
        ("Coffee & Tea, Cafes,,Coffee & Tea", {"sep": ","}, ["Coffee & Tea", "Cafes"]),
        ("Animation Children's unknown", {"sep": " ", "drop": {"unknown"}}, ["Animation", "Children's"]),
        ("(no genres listed)", {"sep": "|", "drop": {"(no genres listed)"}}, []),
        ("Literature & Fiction", {}, ["Literature & Fiction"]),  # no sep: a string is one attribute
        ([["Books", "Fiction"], ["Books", "Mystery"]], {}, ["Books", "Fiction", "Mystery"]),  # Amazon 2014 nesting
        (np.array(["Drama", "Comedy"], dtype=object), {}, ["Drama", "Comedy"]),  # read back from Parquet
        (("a", 3), {}, ["a", "3"]),
        (None, {}, []),
        (float("nan"), {}, []),
    ],
)
def test_attribute_lists_are_plain_distinct_stripped_strings(value: object, kwargs: dict, expected: list) -> None:
    assert attribute_list(value, **kwargs) == expected


def test_items_and_interactions_get_plain_attribute_lists() -> None:
    item = plain_item({"item_id": "1", "attributes": np.array(["Drama", "Drama"], dtype=object)})
    assert item == {"item_id": "1", "attributes": ["Drama"]} and type(item["attributes"]) is list
    shared = ["Drama ", "Crime"]
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [5, 5], "rating": [4, 2], "timestamp": [1, 2],
                          "title": ["T", "T"], "attributes": [shared, shared], "text": ["", ""]})
    common = finalize_interactions(frame, "test")
    assert common["attributes"].tolist() == [["Drama", "Crime"], ["Drama", "Crime"]]
    assert common["attributes"][0] is not common["attributes"][1]  # each row owns its list


def test_overlapping_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        LabelThresholds(like_min=3.0, dislike_max=3.0)


def test_no_eligible_user_is_a_clear_error() -> None:
    with pytest.raises(DataFormatError, match="no user has the 41 interactions"):
        build_samples(synthetic_interactions(per_user=5), LabelThresholds(), recent=10, history=30)


def test_duplicates_keep_latest() -> None:
    frame = pd.DataFrame([
        {"user_id": 1, "item_id": 7, "rating": 2, "timestamp": 10, "title": "t", "attributes": [], "text": ""},
        {"user_id": 1, "item_id": 7, "rating": 5, "timestamp": 20, "title": "t", "attributes": [], "text": ""},
    ])
    out = finalize_interactions(frame, "dup.csv")
    assert len(out) == 1 and out.loc[0, "rating"] == 5.0


def test_splits_disjoint_sized_and_reproducible() -> None:
    users = [f"u{i}" for i in range(100)]
    sizes = {"test": 30, "rec_train": 20, "profile_train_h30": 10, "profile_train_h50": 10}
    first = assign_splits(users, sizes, seed=3)
    assert first == assign_splits(list(reversed(users)), sizes, seed=3)
    assert first != assign_splits(users, sizes, seed=4)
    counts = pd.Series(first).value_counts()
    assert counts.to_dict() == {"test": 30, UNUSED: 30, "rec_train": 20, "profile_train_h30": 10,
                                "profile_train_h50": 10}


def test_splits_scale_down_when_users_are_few() -> None:
    split = assign_splits([f"u{i}" for i in range(10)], {"test": 10, "rec_train": 10}, seed=0)
    assert pd.Series(split).value_counts().to_dict() == {"test": 5, "rec_train": 5}


def test_make_samples_and_summary() -> None:
    inter = synthetic_interactions()
    spec = SampleSpec(recent=2, histories=[3, 20], split_sizes={"test": 5, "rec_train": 5}, split_seed=0,
                      thresholds=LabelThresholds())
    samples = make_samples(inter, spec)
    summary = summarize_data(inter, samples, spec)
    # per_user is 20 + u % 5, so users with u % 5 >= 3 have >= 23 = 20 + 2 + 1 interactions.
    assert summary["eligible_users_per_H"] == {"3": 30, "20": 12}
    assert len(samples) == 12 and all(len(o) == 20 for o in samples["older"])
    assert summary["split_sizes"] == {"rec_train": 5, "test": 5, "unused": 2}
    assert sum(summary["label_distribution_all"].values()) == len(inter)
