"""Amazon Books reviews (McAuley lab, 2014 / 2018 5-core and 2023 releases) joined with the item metadata.

Reviews are JSON lines: 2014 and 2018 records `reviewerID, asin, overall, unixReviewTime,
reviewText, summary`; 2023 records `user_id, parent_asin, rating, timestamp` (milliseconds),
`title` (of the review), `text`. Metadata: 2014 lines are Python dict literals (`categories` is a
list of lists), 2018 lines are JSON (`category`), 2023 lines are JSON keyed by `parent_asin`
(`categories`). Files may be gzipped.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from lettingo.data.schema import DataFormatError, attribute_list, finalize_interactions
from lettingo.data.sources._io import (
    STARS,
    check_rating,
    check_timestamp,
    chunked_frames,
    find_file,
    iter_json_records,
    iter_lines,
    join_catalogue,
    join_text,
    match_format,
    to_number,
)

REVIEW_FILES: tuple[str, ...] = (
    "reviews_Books_5.json.gz",
    "reviews_Books_5.json",
    "Books_5.json.gz",
    "Books_5.json",
    "Books.jsonl.gz",
    "Books.jsonl",
)
META_FILES: tuple[str, ...] = ("meta_Books.json.gz", "meta_Books.json", "meta_Books.jsonl.gz", "meta_Books.jsonl")

_REVIEWS_2014_2018 = "2014/2018 reviews"
_REVIEWS_2023 = "2023 reviews"
REVIEW_FORMATS: dict[str, tuple[str, ...]] = {
    _REVIEWS_2014_2018: ("reviewerID", "asin", "overall", "unixReviewTime"),
    _REVIEWS_2023: ("user_id", "parent_asin", "rating", "timestamp"),
}
_META_2023 = "2023 meta"
META_FORMATS: dict[str, tuple[str, ...]] = {_META_2023: ("parent_asin",), "2014/2018 meta": ("asin",)}

_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "text")
_CHUNK_ROWS = 100_000
#: The item id of a metadata line, found without parsing it (JSON or dict-literal quoting).
_META_ID = re.compile(r"""["'](?:parent_asin|asin)["']\s*:\s*["']([^"']+)["']""")


def _review_rows(path: Path) -> Iterator[tuple[Any, ...]]:
    for number, record in iter_json_records(path):
        if match_format(path, number, record, REVIEW_FORMATS) == _REVIEWS_2014_2018:
            user, item = record["reviewerID"], record["asin"]
            rating = check_rating(path, number, "overall", to_number(path, number, "overall", record["overall"]), STARS)
            seconds = to_number(path, number, "unixReviewTime", record["unixReviewTime"])
            check_timestamp(path, number, "unixReviewTime", seconds)
            text = join_text(record.get("summary"), record.get("reviewText"))
        else:
            user, item = record["user_id"], record["parent_asin"]
            rating = check_rating(path, number, "rating", to_number(path, number, "rating", record["rating"]), STARS)
            millis = to_number(path, number, "timestamp", record["timestamp"])
            seconds = check_timestamp(path, number, "timestamp", millis, unit="milliseconds") // 1000
            text = join_text(record.get("title"), record.get("text"))
        yield str(user), str(item), rating, int(seconds), text


def read_reviews(path: Path) -> pd.DataFrame:
    """The review file as `user_id, item_id, rating, timestamp, text`, built chunk by chunk."""
    return chunked_frames(_review_rows(path), _COLUMNS, _CHUNK_ROWS)


def _parse_meta_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line)  # the 2014 metadata is Python dict literals
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise DataFormatError(
                path, f"invalid JSON (or Python dict literal, as in the 2014 metadata): {exc}", number
            ) from None
    if not isinstance(record, dict):
        raise DataFormatError(path, f"expected an object, got {type(record).__name__}", number)
    return record


def read_meta(path: Path, wanted: set[str]) -> pd.DataFrame:
    """Title and categories of the `wanted` items, indexed by item id.

    Lines whose id (found by a regular expression) is not wanted are skipped unparsed: the
    metadata files hold millions of items, most without a review in the 5-core subset.
    """
    ids: list[str] = []
    titles: list[str] = []
    attributes: list[list[str]] = []
    for number, line in iter_lines(path):
        found = _META_ID.search(line)
        if found and found.group(1) not in wanted:
            continue
        record = _parse_meta_line(path, number, line)
        key = "parent_asin" if match_format(path, number, record, META_FORMATS) == _META_2023 else "asin"
        item = str(record[key])
        if item not in wanted:
            continue
        ids.append(item)
        titles.append(str(record.get("title") or "").strip() or item)
        # 2014 nests the categories as lists of category paths; attribute_list flattens them.
        attributes.append(attribute_list(record.get("categories", record.get("category"))))
    return pd.DataFrame({"title": titles, "attributes": attributes}, index=pd.Index(ids, dtype=str))


def load_amazon_books(path: str | Path, reviews_file: str | None = None, meta_file: str | None = None) -> pd.DataFrame:
    """Amazon Books reviews from a folder, with item titles and categories from the metadata file.

    The first published file name present is read (see `REVIEW_FILES`, `META_FILES`);
    `reviews_file` / `meta_file` override them (relative to `path` or absolute). Text is the
    review summary (2023: review title) followed by the review. Items without metadata keep
    their ASIN as title and no categories.
    """
    folder = Path(path)
    reviews_path = find_file(folder, reviews_file, REVIEW_FILES, "Amazon Books reviews")
    meta_path = find_file(folder, meta_file, META_FILES, "Amazon Books metadata")
    reviews = read_reviews(reviews_path)
    meta = read_meta(meta_path, set(reviews["item_id"]))
    return finalize_interactions(join_catalogue(reviews, meta, meta_path), reviews_path)
