"""User facts for the prompt, checked against hand-computed values on hand-made histories."""

from __future__ import annotations

import numpy as np
import pytest

from lettingo.profiles.user_facts import (
    AttributeScore,
    attribute_preferences,
    describe_rating_stats,
    rating_stats,
    user_facts,
)

LABEL = {5: "like", 4: "like", 3: "neutral", 2: "dislike", 1: "dislike"}


def item(rating: float, *attributes: str) -> dict:
    return {"item_id": "x", "rating": rating, "title": "t", "attributes": list(attributes), "label": LABEL[int(rating)]}


HISTORY = [
    item(5, "Drama", "War"),
    item(4, "Drama"),
    item(4, "Comedy", "Drama"),
    item(2, "Horror"),
    item(1, "Horror", "Comedy"),
    item(3, "Comedy"),
    item(2, "Horror", "Horror"),  # a repeated attribute counts once for its item
]


def test_rating_stats_mean_histogram_and_shares() -> None:
    stats = rating_stats(HISTORY)
    assert stats.n == 7
    assert stats.mean == pytest.approx(21 / 7)
    assert stats.histogram == {5.0: 1, 4.0: 2, 3.0: 1, 2.0: 2, 1.0: 1}
    assert list(stats.histogram) == [5.0, 4.0, 3.0, 2.0, 1.0]  # highest rating first
    assert stats.label_shares == pytest.approx({"like": 3 / 7, "neutral": 1 / 7, "dislike": 3 / 7})


def test_rating_stats_sentence() -> None:
    sentence = describe_rating_stats(rating_stats(HISTORY[:4]))
    assert sentence == (
        "Average rating 3.8 over 4 items; 5 stars 1 times, 4 stars 2 times, 2 stars 1 times. "
        "Liked 75%, neutral 0%, disliked 25%."
    )


def test_rating_stats_needs_items() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rating_stats([])


def test_attribute_preferences_rank_by_mean_with_support() -> None:
    prefs = attribute_preferences(HISTORY, min_support=2, top_k=1)
    # Drama: 5, 4, 4 -> 4.33 (3); Comedy: 4, 1, 3 -> 2.67 (3); Horror: 2, 1, 2 -> 1.67 (3); War: 1 item.
    assert prefs.highest == [AttributeScore("Drama", pytest.approx(13 / 3), 3)]
    assert prefs.lowest == [AttributeScore("Horror", pytest.approx(5 / 3), 3)]


def test_attribute_preferences_lists_are_disjoint_and_support_filters() -> None:
    prefs = attribute_preferences(HISTORY, min_support=3, top_k=5)
    assert [s.name for s in prefs.highest] == ["Drama", "Comedy", "Horror"]
    assert prefs.lowest == []  # every ranked attribute is already among the highest
    assert "War" not in {s.name for s in prefs.highest}  # one item is below the support
    assert attribute_preferences(HISTORY, min_support=4, top_k=3).highest == []


def test_attribute_preferences_ties_go_to_support_then_name() -> None:
    history = [item(4, "B"), item(4, "A"), item(4, "C"), item(4, "C")]
    assert [s.name for s in attribute_preferences(history, 1, 3).highest] == ["C", "A", "B"]


def test_attribute_preferences_accept_arrays_and_reject_bad_settings() -> None:
    history = [{**it, "attributes": np.array(it["attributes"], dtype=object)} for it in HISTORY]
    assert attribute_preferences(history, 2, 2) == attribute_preferences(HISTORY, 2, 2)
    with pytest.raises(ValueError, match="min_support"):
        attribute_preferences(HISTORY, 0, 2)


@pytest.mark.parametrize(("stats_on", "genres_on"), [(True, True), (True, False), (False, True), (False, False)])
def test_user_facts_switches(stats_on: bool, genres_on: bool) -> None:
    cfg = {"rating_stats": stats_on, "genre_preferences": genres_on, "attribute_label": "genres",
           "min_support": 2, "top_k": 1}
    fields = user_facts(HISTORY, cfg)
    assert (fields["stats"] is not None) == stats_on
    assert (fields["preferences"] is not None) == genres_on
    expected = (["Average rating 3.0 over 7 items"] if stats_on else []) + (
        ["Highest rated genres: Drama (4.3 over 3).", "Lowest rated genres: Horror (1.7 over 3)."] if genres_on else []
    )
    assert len(fields["facts"]) == len(expected)
    for fact, start in zip(fields["facts"], expected, strict=True):
        assert fact.startswith(start)
