"""The one place that turns an interaction into the text prompts show: `title | attributes | rating`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lettingo.data.schema import attribute_list


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 3, 0)].rstrip() + "..."


def item_text(
    item: Mapping[str, Any],
    max_chars: int = 160,
    review_chars: int = 0,
    with_rating: bool = True,
    with_attributes: bool = True,
) -> str:
    """Describe one interaction as `title (year) | attributes | rating r (label)`.

    ML titles already carry their year. With `review_chars > 0` and review text present, a snippet
    of the review follows. The description without the review is clipped to `max_chars`.
    `with_rating=False` leaves the rating out (for the target item, whose rating is the answer);
    `with_attributes=False` leaves the attributes out (a shorter line).
    """
    parts = [str(item["title"]).strip() or str(item["item_id"])]
    attributes = attribute_list(item.get("attributes"))  # a NumPy array when read back from Parquet
    if attributes and with_attributes:
        parts.append(", ".join(attributes))
    if with_rating:
        rating = float(item["rating"])
        label = item.get("label")
        parts.append(f"rated {rating:g}" + (f" ({label})" if label else ""))
    text = _clip(" | ".join(parts), max_chars)
    review = str(item.get("text") or "")
    if with_rating and review_chars > 0 and review.strip():
        text += f' | review: "{_clip(review, review_chars)}"'
    return text
