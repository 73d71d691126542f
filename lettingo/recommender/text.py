"""f_Rec's input as text: the fields every recommender template can use, built from one case.

Fields: ``recent`` (numbered items, oldest first, with the user's rating and sentiment),
``recent_newest_first`` (the same, newest first: for encoders that truncate the end),
``target`` (the item to predict, without its rating), ``target_stats`` (how the training users other
than this one rated the target: mean and count) and ``profile`` (the profile text, or
``empty_profile`` when the case has none). Items become text only through
:func:`lettingo.data.item_text.item_text`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lettingo.data.item_stats import OTHERS_COUNT, OTHERS_MEAN
from lettingo.data.item_text import item_text
from lettingo.recommender.cases import RecCase


@dataclass(frozen=True)
class ItemTextConfig:
    """How items are clipped in f_Rec's input (the dataset's ``item_text`` config)."""

    max_chars: int = 120
    review_chars: int = 0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ItemTextConfig:
        """From a config node with ``max_chars`` and ``review_chars``."""
        return cls(int(cfg["max_chars"]), int(cfg["review_chars"]))


def numbered_items(items: Sequence[Mapping[str, Any]], cfg: ItemTextConfig, with_rating: bool = True) -> str:
    """One line per item, ``1. title | attributes | rated r (label)``, in the given order."""
    return "\n".join(
        f"{n}. {item_text(item, cfg.max_chars, cfg.review_chars, with_rating)}" for n, item in enumerate(items, 1)
    )


def raw_history_profile(older: Sequence[Mapping[str, Any]], cfg: ItemTextConfig) -> str:
    """The raw older history pasted where a profile goes (the 10H + raw H baseline)."""
    return "Earlier ratings of this user, oldest first:\n" + numbered_items(older, cfg)


def item_stats_text(item: Mapping[str, Any]) -> str:
    """An item's rating statistics among the other training users, as a phrase."""
    count = int(item.get(OTHERS_COUNT) or 0)
    if count == 0:
        return "no other user has rated it"
    return f"other users rate it {float(item[OTHERS_MEAN]):.1f} on average ({count} ratings)"


def case_fields(case: RecCase, cfg: ItemTextConfig, empty_profile: str) -> dict[str, str]:
    """The template fields of one case (see the module docstring)."""
    return {
        "recent": numbered_items(case.recent, cfg),
        "recent_newest_first": numbered_items(case.recent[::-1], cfg),
        "target": item_text(case.target, cfg.max_chars, cfg.review_chars, with_rating=False),
        "target_stats": item_stats_text(case.target),
        "profile": case.profile.strip() or empty_profile,
    }


def fill(template: str, fields: Mapping[str, str], where: str) -> str:
    """``template.format(**fields)`` with a clear error for an unknown field."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as error:
        raise ValueError(f"{where}: unknown template field {error}; known: {sorted(fields)}") from error
