"""File helpers shared by the loaders: finding, opening, decoding and parsing raw dataset files.

Every failure is a `DataFormatError` that names the file, the line (1-based, physical line
numbers, blank lines counted) and what was expected.
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from lettingo.data.schema import DataFormatError

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing it when its name ends in `.gz`."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def detect_encoding(path: Path) -> str:
    """`utf-8` when the whole file decodes as UTF-8, else `latin-1` (which decodes any byte)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open_binary(path) as handle:
            while block := handle.read(_BLOCK):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield `(line number, line)` for every non-blank line, without its line ending."""
    try:
        with open_binary(path) as raw:
            for number, line in enumerate(codecs.getreader(encoding)(raw), start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not valid {encoding} text ({exc.reason})") from exc
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(path, f"cannot be read: {exc}") from exc


def parse_json_object(path: Path, number: int, line: str) -> dict[str, Any]:
    """One JSON-lines record, which must be a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"invalid JSON ({exc.msg} at column {exc.colno})", number) from exc
    if not isinstance(record, dict):
        raise DataFormatError(path, f"expected a JSON object, got {type(record).__name__}", number)
    return record


def iter_json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line number, record)` for every non-blank line of a JSON-lines file."""
    for number, line in iter_lines(path):
        yield number, parse_json_object(path, number, line)


def match_format(path: Path, number: int, record: Mapping[str, Any], formats: Mapping[str, Sequence[str]]) -> str:
    """The name of the first format whose required keys the record has; else an "unknown column set" error."""
    for name, keys in formats.items():
        if all(key in record for key in keys):
            return name
    expected = "; or ".join(f"{name}: {', '.join(keys)}" for name, keys in formats.items())
    raise DataFormatError(
        path,
        f"unknown column set {sorted(record)}; expected the keys of {expected}",
        number,
    )


def to_number(path: Path, number: int, field: str, value: object) -> float:
    """A numeric field (a JSON number or a numeric string) as float, else an error naming the field."""
    if not isinstance(value, bool):
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    raise DataFormatError(path, f"{field} must be a number, got {value!r}", number)


@dataclass(frozen=True)
class RatingScale:
    """The closed range ``low``..``high`` of a dataset's ratings."""

    low: float
    high: float

    def contains(self, ratings: ArrayLike) -> np.ndarray:
        """Whether each rating lies on the scale (NaN does not)."""
        values = np.asarray(ratings, dtype=float)
        return (values >= self.low) & (values <= self.high)


#: 1 to 5 stars: MovieLens-100K and -1M, Amazon, Yelp.
STARS = RatingScale(1.0, 5.0)
#: 0.5 to 5 in half stars: MovieLens-10M (its `::` files also hold ML-1M's whole stars).
HALF_STARS = RatingScale(0.5, 5.0)


def _show(value: float) -> str:
    """A number as the file most likely wrote it: ``7`` rather than ``7.0``, never ``1.4e+12``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_rating(path: Path, number: int | None, field: str, value: float, scale: RatingScale) -> float:
    """``value`` when it lies on ``scale``, else an error naming the field, the value and the scale."""
    if not scale.contains(value):
        expected = f"between {scale.low:g} and {scale.high:g}"
        raise DataFormatError(path, f"{field} must be {expected}, got {_show(value)}", number)
    return value


def check_timestamp(path: Path, number: int | None, field: str, value: float, unit: str = "seconds") -> float:
    """``value`` when it is a Unix time at or after 1970 (not negative), else an error naming it."""
    if not value >= 0:
        raise DataFormatError(path, f"{field} must be a non-negative Unix time in {unit}, got {_show(value)}", number)
    return value


def find_file(folder: Path, explicit: str | None, published: Sequence[str], what: str) -> Path:
    """The file to read: `explicit` (relative to `folder`, or absolute), else the first published name present."""
    candidates = [explicit] if explicit is not None else list(published)
    for name in candidates:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise DataFormatError(folder, f"no {what} file found; tried {', '.join(candidates)}")


def chunked_frames(
    rows: Iterable[tuple[Any, ...]],
    columns: Sequence[str],
    chunk_size: int,
    finish: Callable[[pd.DataFrame], pd.DataFrame] = lambda frame: frame,
) -> pd.DataFrame:
    """Build one frame from an iterable of row tuples, `chunk_size` rows at a time.

    Only one chunk of Python objects is alive at once; `finish` runs on each small frame
    (vectorised parsing and checks) before it is kept.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    frames: list[pd.DataFrame] = []
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == chunk_size:
            frames.append(finish(pd.DataFrame.from_records(chunk, columns=list(columns))))
            chunk = []
    if chunk or not frames:
        frames.append(finish(pd.DataFrame.from_records(chunk, columns=list(columns))))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def join_text(heading: object, body: object) -> str:
    """A review's title/summary and its body as one text: `Heading. Body` (either may be missing)."""
    head = str(heading or "").strip()
    rest = str(body or "").strip()
    if head and rest:
        return f"{head} {rest}" if head[-1] in ".!?" else f"{head}. {rest}"
    return head or rest


def join_catalogue(interactions: pd.DataFrame, catalogue: pd.DataFrame, source: object) -> pd.DataFrame:
    """Add `title` and `attributes` from a catalogue indexed by item id (its first row per id counts).

    Items missing from the catalogue keep their id as title and get no attributes (logged).
    """
    catalogue = catalogue.loc[~catalogue.index.duplicated(), ["title", "attributes"]]
    missing = pd.Index(interactions["item_id"].unique()).difference(catalogue.index)
    if len(missing):
        log.warning("%s: %d items have no catalogue entry; their id stands as title", source, len(missing))
        placeholders = pd.DataFrame({"title": missing, "attributes": [[] for _ in missing]}, index=missing)
        catalogue = pd.concat([catalogue, placeholders])
    return interactions.join(catalogue, on="item_id")
