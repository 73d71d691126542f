"""The Yelp Open Dataset: reviews joined with business names and categories.

`yelp_academic_dataset_review.json`: JSON lines `user_id, business_id, stars, date, text`, with
`date` as `YYYY-MM-DD HH:MM:SS` (local time of the business, read as UTC seconds).
`yelp_academic_dataset_business.json`: `business_id, name, categories` (a comma-separated string or
null). The review file (several GB) is streamed: lines are parsed into small frames of
`chunk_size` rows, never read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lettingo.data.schema import DataFormatError, attribute_list, finalize_interactions
from lettingo.data.sources._io import (
    STARS,
    check_rating,
    chunked_frames,
    find_file,
    iter_json_records,
    join_catalogue,
    match_format,
    to_number,
)

REVIEW_FILE = "yelp_academic_dataset_review.json"
BUSINESS_FILE = "yelp_academic_dataset_business.json"
REVIEW_FORMATS: dict[str, tuple[str, ...]] = {"Yelp review": ("user_id", "business_id", "stars", "date")}
BUSINESS_FORMATS: dict[str, tuple[str, ...]] = {"Yelp business": ("business_id", "name")}

_COLUMNS = ("line", "user_id", "item_id", "rating", "date", "text")
_EPOCH = pd.Timestamp(0)


def _review_rows(path: Path) -> Iterator[tuple[Any, ...]]:
    for number, record in iter_json_records(path):
        match_format(path, number, record, REVIEW_FORMATS)
        rating = check_rating(path, number, "stars", to_number(path, number, "stars", record["stars"]), STARS)
        text = record.get("text") or ""
        yield number, str(record["user_id"]), str(record["business_id"]), rating, record["date"], text


def _reject_first(path: Path, chunk: pd.DataFrame, bad: np.ndarray, expected: str) -> None:
    """Raise for the first row of ``chunk`` flagged in ``bad``, naming its line and its date."""
    if bad.any():
        first = int(bad.argmax())
        line = int(chunk["line"].iloc[first])
        raise DataFormatError(path, f"date must be {expected}, got {chunk['date'].iloc[first]!r}", line)


def _timestamps(path: Path, chunk: pd.DataFrame) -> pd.DataFrame:
    """Parse one chunk's dates into seconds; a bad date, or one before 1970, is reported with its line."""
    dates = pd.to_datetime(chunk["date"].astype(str), format="ISO8601", errors="coerce")
    _reject_first(path, chunk, dates.isna().to_numpy(), "'YYYY-MM-DD HH:MM:SS'")
    seconds = (dates - _EPOCH) // pd.Timedelta(seconds=1)
    _reject_first(path, chunk, (seconds < 0).to_numpy(), "1970-01-01 or later (a non-negative Unix time)")
    return chunk.drop(columns=["line", "date"]).assign(timestamp=seconds.astype("int64"))


def read_reviews(path: Path, chunk_size: int) -> pd.DataFrame:
    """The review file as `user_id, item_id, rating, text, timestamp`, streamed in chunks."""
    return chunked_frames(_review_rows(path), _COLUMNS, chunk_size, lambda chunk: _timestamps(path, chunk))


def read_businesses(path: Path) -> pd.DataFrame:
    """Business names (as `title`) and categories (as `attributes`), indexed by business id."""
    ids: list[str] = []
    names: list[str] = []
    categories: list[list[str]] = []
    for number, record in iter_json_records(path):
        match_format(path, number, record, BUSINESS_FORMATS)
        listed = record.get("categories")
        if listed is not None and not isinstance(listed, str):
            raise DataFormatError(path, f"categories must be a comma-separated string or null, got {listed!r}", number)
        ids.append(str(record["business_id"]))
        names.append(str(record["name"]))
        categories.append(attribute_list(listed, sep=","))
    return pd.DataFrame({"title": names, "attributes": categories}, index=pd.Index(ids, dtype=str))


def load_yelp(
    path: str | Path,
    review_file: str | None = None,
    business_file: str | None = None,
    chunk_size: int = 100_000,
) -> pd.DataFrame:
    """Yelp reviews from a folder, with business names as titles and categories as attributes.

    `review_file` / `business_file` override the published names (relative to `path` or
    absolute). Reviews of businesses missing from the business file keep the id as title.
    """
    folder = Path(path)
    review_path = find_file(folder, review_file, [REVIEW_FILE], "Yelp review")
    business_path = find_file(folder, business_file, [BUSINESS_FILE], "Yelp business")
    reviews = read_reviews(review_path, chunk_size)
    businesses = read_businesses(business_path)
    return finalize_interactions(join_catalogue(reviews, businesses, business_path), review_path)
