"""The common interaction schema every dataset loader returns, and rating-to-label mapping."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

#: Columns of the common interaction table, in order.
INTERACTION_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "rating",
    "timestamp",
    "title",
    "attributes",
    "text",
)

#: The three sentiment classes, in the fixed order used for indices everywhere.
LABELS: tuple[str, ...] = ("like", "neutral", "dislike")


class DataFormatError(ValueError):
    """Bad input data: names the file, the line (when known) and what was expected."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class LabelThresholds:
    """Rating -> label: rating >= like_min is `like`, rating <= dislike_max is `dislike`, else `neutral`."""

    like_min: float = 4.0
    dislike_max: float = 2.0

    def __post_init__(self) -> None:
        if not self.dislike_max < self.like_min:
            raise ValueError(
                f"label thresholds overlap: dislike_max={self.dislike_max} must be below "
                f"like_min={self.like_min}"
            )

    def labels(self, ratings: ArrayLike) -> np.ndarray:
        """The sentiment label of each rating, as an array of strings (the one place the rule is written)."""
        values = np.asarray(ratings, dtype=float)
        return np.select([values >= self.like_min, values <= self.dislike_max], ["like", "dislike"], "neutral")

    def label(self, rating: float) -> str:
        """The sentiment label of one rating."""
        return str(self.labels([rating])[0])


def attribute_list(value: object, sep: str | None = None, drop: Collection[str] = ()) -> list[str]:
    """Attributes (genres, categories) as a plain list of distinct, stripped, non-empty strings, in order.

    ``value`` is None or NaN (no attributes); a string, split on ``sep`` (one attribute when ``sep``
    is None); or a list, tuple or NumPy array (what samples read back from Parquet hold), nested
    lists flattened (Amazon 2014 nests category paths). Names in ``drop`` (a dataset's stand-in for
    "none", e.g. ML-10M's ``(no genres listed)``) are left out.
    """
    if isinstance(value, str):
        value = value.split(sep) if sep is not None else [value]
    names: list[str] = []
    stack = [value]
    while stack:
        current = stack.pop()
        if current is None or (isinstance(current, float) and math.isnan(current)):
            continue
        if isinstance(current, str):
            names.append(current)
        elif isinstance(current, list | tuple | np.ndarray):
            stack.extend(reversed(list(current)))
        else:
            names.append(str(current))
    return [name for name in dict.fromkeys(n.strip() for n in names) if name and name not in drop]


def _attribute_column(values: pd.Series) -> list[list[str]]:
    """:func:`attribute_list` of every row, computed once per distinct object.

    Loaders join one catalogue list per item onto every rating of it, so a column of millions of
    rows holds only as many distinct objects as there are items. Each row still gets its own list.
    """
    # Keyed by id(); holding each value keeps its id from being reused by another object meanwhile.
    done: dict[int, tuple[object, list[str]]] = {}
    out = []
    for value in values:
        if id(value) not in done:
            done[id(value)] = (value, attribute_list(value))
        out.append(list(done[id(value)][1]))
    return out


def to_common_schema(frame: pd.DataFrame) -> pd.DataFrame:
    """Order and type the columns of a loader's output as the common schema.

    `user_id` and `item_id` become strings, `rating` float, `timestamp` int (seconds),
    `attributes` a list of distinct strings (:func:`attribute_list`) and `text` a string (empty where
    the dataset has none).
    """
    missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"loader output lacks columns {missing}")
    out = frame.loc[:, list(INTERACTION_COLUMNS)].copy()
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["rating"] = out["rating"].astype(float)
    out["timestamp"] = out["timestamp"].astype("int64")
    out["title"] = out["title"].fillna("").astype(str)
    out["text"] = out["text"].fillna("").astype(str)
    out["attributes"] = _attribute_column(out["attributes"])
    return out.reset_index(drop=True)


def drop_duplicate_interactions(frame: pd.DataFrame, source: object) -> pd.DataFrame:
    """Keep only the latest row of each (user, item) pair and log how many were dropped."""
    ordered = frame.sort_values(["user_id", "item_id", "timestamp"], kind="stable")
    deduped = ordered.drop_duplicates(["user_id", "item_id"], keep="last")
    dropped = len(frame) - len(deduped)
    if dropped:
        log.warning("%s: dropped %d duplicated (user, item) rows, kept the latest of each", source, dropped)
    return deduped.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def finalize_interactions(frame: pd.DataFrame, source: object) -> pd.DataFrame:
    """The last step of every loader: common schema, duplicates dropped, a non-empty table."""
    if frame.empty:
        raise DataFormatError(source, "no interactions were read")
    return drop_duplicate_interactions(to_common_schema(frame), source)
