"""MovieLens in its published `::` format (ML-1M and ML-10M): `ratings.dat` joined with `movies.dat`.

`ratings.dat`: `UserID::MovieID::Rating::Timestamp` (ML-10M has half stars).
`movies.dat`: `MovieID::Title::Genres`, genres `|`-separated. Each file is decoded as UTF-8 when it
is valid UTF-8, else as latin-1 (ML-1M's titles are latin-1).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from lettingo.data.schema import DataFormatError, attribute_list, finalize_interactions
from lettingo.data.sources._io import (
    HALF_STARS,
    RatingScale,
    check_rating,
    check_timestamp,
    detect_encoding,
    find_file,
    iter_lines,
    join_catalogue,
)

RATINGS_FORMAT = "UserID::MovieID::Rating::Timestamp"
MOVIES_FORMAT = "MovieID::Title::Genres"
#: ML-10M's genre for movies without one.
_NO_GENRES = "(no genres listed)"
#: Rows per pandas chunk: bounds the memory of the wide intermediate frame on ML-10M.
_CHUNK_ROWS = 1_000_000


def _check_rating_line(path: Path, number: int, line: str, scale: RatingScale) -> None:
    fields = line.split("::")
    if len(fields) != 4:
        raise DataFormatError(path, f"expected 4 fields {RATINGS_FORMAT}, got {len(fields)}", number)
    user, movie, rating, timestamp = (field.strip() for field in fields)
    if not user or not movie:
        raise DataFormatError(path, f"empty UserID or MovieID; expected {RATINGS_FORMAT}", number)
    try:
        value = float(rating)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataFormatError(path, f"Rating must be a number, got {rating!r}", number)
    check_rating(path, number, "Rating", value, scale)
    if timestamp.startswith("-") and timestamp[1:].isdigit():
        check_timestamp(path, number, "Timestamp", int(timestamp))
    if not timestamp.isdigit():
        raise DataFormatError(path, f"Timestamp must be whole seconds, got {timestamp!r}", number)


def _locate_bad_rating_line(path: Path, encoding: str, scale: RatingScale) -> DataFormatError:
    """The error for the first bad line of a ratings file that pandas rejected, mis-split or found out of range."""
    for number, line in iter_lines(path, encoding):
        _check_rating_line(path, number, line, scale)
    return DataFormatError(path, f"cannot be parsed as {RATINGS_FORMAT}")


def _valid_chunk(chunk: pd.DataFrame) -> bool:
    """A `:`-split chunk is valid when fields 1, 3, 5 are the empty gaps of `::` and the rest are typed."""
    return (
        chunk.shape[1] == 7
        and chunk[[1, 3, 5]].isna().all().all()
        and chunk[[0, 2, 4, 6]].notna().all().all()
        and pd.api.types.is_numeric_dtype(chunk[4])
        and pd.api.types.is_integer_dtype(chunk[6])
    )


def _parse_ratings(path: Path, encoding: str) -> list[pd.DataFrame] | None:
    """The ratings in chunks as `user_id, item_id, rating, timestamp`, or None when any line is malformed."""
    # The C parser takes one-character separators only: split on `:` and check that every
    # other field is the empty gap inside `::`. The field count comes from the first line;
    # longer lines raise, shorter ones leave gaps that the check catches.
    try:
        reader = pd.read_csv(
            path,
            sep=":",
            header=None,
            encoding=encoding,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_values=[""],  # only the gaps inside `::` are missing; `NA` stays a string
            chunksize=_CHUNK_ROWS,
        )
        chunks = []
        for chunk in reader:
            if not _valid_chunk(chunk):
                return None
            chunks.append(chunk[[0, 2, 4, 6]].set_axis(["user_id", "item_id", "rating", "timestamp"], axis=1))
    except pd.errors.EmptyDataError:
        return []
    except pd.errors.ParserError:
        return None
    return chunks


def _in_range(chunk: pd.DataFrame, scale: RatingScale) -> bool:
    """Whether every rating of a parsed chunk lies on ``scale`` and no timestamp is negative."""
    return bool(scale.contains(chunk["rating"]).all() and (chunk["timestamp"] >= 0).all())


def read_ratings(path: Path, scale: RatingScale = HALF_STARS) -> pd.DataFrame:
    """`ratings.dat` as `user_id, item_id, rating, timestamp` (parsed by pandas, bad lines located by a line pass).

    Ratings off ``scale`` and negative timestamps are bad lines too.
    """
    encoding = detect_encoding(path)
    chunks = _parse_ratings(path, encoding)
    if chunks is None or not all(_in_range(chunk, scale) for chunk in chunks):
        raise _locate_bad_rating_line(path, encoding, scale)
    if not chunks:
        raise DataFormatError(path, f"no ratings; expected lines {RATINGS_FORMAT}")
    ratings = pd.concat(chunks, ignore_index=True)
    return ratings.astype({"user_id": str, "item_id": str, "rating": "float64", "timestamp": "int64"})


def read_movies(path: Path) -> pd.DataFrame:
    """`movies.dat` as a frame indexed by item id with `title` and `attributes` (the genres)."""
    ids: list[str] = []
    titles: list[str] = []
    genres: list[list[str]] = []
    for number, line in iter_lines(path, detect_encoding(path)):
        fields = line.split("::")
        if len(fields) != 3:
            raise DataFormatError(path, f"expected 3 fields {MOVIES_FORMAT}, got {len(fields)}", number)
        ids.append(fields[0].strip())
        titles.append(fields[1].strip())
        genres.append(attribute_list(fields[2], sep="|", drop={_NO_GENRES}))
    return pd.DataFrame({"title": titles, "attributes": genres}, index=pd.Index(ids, name="item_id"))


def load_movielens_dat(
    path: str | Path,
    ratings_file: str | None = None,
    movies_file: str | None = None,
    min_rating: float = HALF_STARS.low,
    max_rating: float = HALF_STARS.high,
) -> pd.DataFrame:
    """MovieLens from a folder holding `ratings.dat` and `movies.dat` (ML-1M or ML-10M as published).

    `ratings_file` / `movies_file` override the published names (relative to `path` or absolute).
    A rating outside `min_rating`..`max_rating` (default ML-10M's 0.5 to 5, which holds ML-1M's
    1 to 5) or a negative timestamp is an error naming its line. Ratings of movies missing from
    the movies file keep the MovieID as title and no genres.
    """
    folder = Path(path)
    ratings_path = find_file(folder, ratings_file, ["ratings.dat"], "ratings")
    movies_path = find_file(folder, movies_file, ["movies.dat"], "movies")
    ratings = read_ratings(ratings_path, RatingScale(min_rating, max_rating))
    movies = read_movies(movies_path)
    frame = join_catalogue(ratings, movies, ratings_path).assign(text="")
    return finalize_interactions(frame, ratings_path)
