"""Facts about a user computed from the older history: rating statistics and attribute preferences.

A 135M generator writes noise from a bare item list; these facts put the user's rating tendency and
their best and worst genres (categories) in the prompt, where even a small model can repeat them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lettingo.data.schema import LABELS, attribute_list


@dataclass(frozen=True)
class RatingStats:
    """Ratings over a history: mean, count per rating value (highest first), share of each label."""

    n: int
    mean: float
    histogram: dict[float, int]
    label_shares: dict[str, float]


@dataclass(frozen=True)
class AttributeScore:
    """Mean rating the user gave the items carrying one attribute, and how many there were."""

    name: str
    mean: float
    count: int


@dataclass(frozen=True)
class AttributePreferences:
    """Attributes (genres, categories) the user rates highest and lowest; disjoint lists."""

    highest: list[AttributeScore]
    lowest: list[AttributeScore]


def rating_stats(items: Sequence[Mapping[str, Any]]) -> RatingStats:
    """Mean rating, histogram over the rating values and label shares of ``items``."""
    if not items:
        raise ValueError("rating statistics need at least one rated item")
    ratings = [float(item["rating"]) for item in items]
    labels = Counter(str(item["label"]) for item in items)
    histogram = dict(sorted(Counter(ratings).items(), reverse=True))
    return RatingStats(
        n=len(ratings),
        mean=sum(ratings) / len(ratings),
        histogram=histogram,
        label_shares={label: labels.get(label, 0) / len(items) for label in LABELS},
    )


def attribute_preferences(items: Sequence[Mapping[str, Any]], min_support: int, top_k: int) -> AttributePreferences:
    """The ``top_k`` attributes with the highest and the lowest mean rating.

    Only attributes on at least ``min_support`` items are ranked. Ties go to the attribute with
    more items, then alphabetically. An attribute listed as highest is not listed as lowest, so a
    user with few attributes gets a shorter lowest list rather than the same names twice.
    """
    if min_support < 1 or top_k < 1:
        raise ValueError(f"min_support={min_support} and top_k={top_k} must both be at least 1")
    ratings: dict[str, list[float]] = defaultdict(list)
    for item in items:
        for attribute in attribute_list(item.get("attributes")):  # each once per item
            ratings[attribute].append(float(item["rating"]))
    scores = [AttributeScore(name, sum(r) / len(r), len(r)) for name, r in ratings.items() if len(r) >= min_support]
    highest = sorted(scores, key=lambda s: (-s.mean, -s.count, s.name))[:top_k]
    rest = [s for s in scores if s not in highest]
    lowest = sorted(rest, key=lambda s: (s.mean, -s.count, s.name))[:top_k]
    return AttributePreferences(highest=highest, lowest=lowest)


LABEL_WORDS = {"like": "liked", "neutral": "neutral", "dislike": "disliked"}


def _stars(value: float) -> str:
    return f"{value:g} star" + ("" if value == 1 else "s")


def describe_rating_stats(stats: RatingStats) -> str:
    """One sentence: ``Average rating 3.6 over 30 items; 5 stars 4 times, ... Liked 53%, ...``."""
    counts = ", ".join(f"{_stars(value)} {count} times" for value, count in stats.histogram.items())
    shares = ", ".join(f"{LABEL_WORDS[label]} {round(100 * share)}%" for label, share in stats.label_shares.items())
    return f"Average rating {stats.mean:.1f} over {stats.n} items; {counts}. {shares[0].upper()}{shares[1:]}."


def describe_attribute_preferences(prefs: AttributePreferences, label: str) -> list[str]:
    """Up to two sentences naming the highest- and lowest-rated attributes with their mean and count."""

    def listing(scores: list[AttributeScore]) -> str:
        return ", ".join(f"{s.name} ({s.mean:.1f} over {s.count})" for s in scores)

    lines = []
    if prefs.highest:
        lines.append(f"Highest rated {label}: {listing(prefs.highest)}.")
    if prefs.lowest:
        lines.append(f"Lowest rated {label}: {listing(prefs.lowest)}.")
    return lines


def user_facts(items: Sequence[Mapping[str, Any]], facts_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt fields computed from ``items`` as switched on in ``facts_cfg``.

    Returns ``stats`` (:class:`RatingStats` or None), ``preferences`` (:class:`AttributePreferences`
    or None) and ``facts``: the enabled facts as ready-made sentences.
    """
    stats = rating_stats(items) if facts_cfg["rating_stats"] else None
    prefs = (
        attribute_preferences(items, int(facts_cfg["min_support"]), int(facts_cfg["top_k"]))
        if facts_cfg["genre_preferences"]
        else None
    )
    facts = [describe_rating_stats(stats)] if stats else []
    if prefs:
        facts += describe_attribute_preferences(prefs, str(facts_cfg["attribute_label"]))
    return {"stats": stats, "preferences": prefs, "facts": facts}
