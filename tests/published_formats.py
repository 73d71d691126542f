"""Small synthetic datasets written in the published file formats of ML-10M, Amazon Books (2018 5-core)
and the Yelp Open Dataset, for end-to-end runs that must not download anything.

Every writer draws the same kind of data from a seed: ``users`` users with ``per_user``
interactions each (in time order) over a catalogue of ``items`` items, ratings spread over the
whole scale so that the like, neutral and dislike labels all appear.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Western")
BOOK_CATEGORIES = ("Mystery", "History", "Science Fiction", "Romance", "Biographies", "Cookbooks")
YELP_CATEGORIES = ("Mexican", "Pizza", "Coffee & Tea", "Bars", "Sushi Bars", "Bakeries", "Burgers")
START = 1_100_000_000  # first timestamp (2004-11-09), seconds
STEP = 3_600  # seconds between a user's consecutive interactions


@dataclass(frozen=True)
class Interaction:
    """One synthetic rating: user and item indices, the rating, its time in seconds."""

    user: int
    item: int
    rating: float
    timestamp: int


def interactions(users: int, per_user: int, items: int, ratings: tuple[float, ...], seed: int) -> list[Interaction]:
    """``per_user`` distinct items per user in time order, each rating drawn uniformly from ``ratings``."""
    if per_user > items:
        raise ValueError(f"per_user ({per_user}) cannot exceed items ({items})")
    rng = random.Random(seed)
    rows = []
    for user in range(users):
        for step, item in enumerate(rng.sample(range(items), per_user)):
            rows.append(Interaction(user, item, rng.choice(ratings), START + user * 17 + step * STEP))
    return rows


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pick(rng: random.Random, choices: tuple[str, ...]) -> list[str]:
    return rng.sample(choices, rng.randint(1, 3))


def write_ml10m(folder: Path, users: int = 14, per_user: int = 90, items: int = 120, seed: int = 0) -> Path:
    """ML-10M's ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, half stars) and ``movies.dat``
    (``MovieID::Title (Year)::Genre|Genre``) in ``folder``."""
    half_stars = tuple(x / 2 for x in range(1, 11))
    rows = interactions(users, per_user, items, half_stars, seed)
    _write(folder / "ratings.dat",
           [f"{r.user + 1}::{r.item + 1}::{r.rating:g}::{r.timestamp}" for r in rows])
    rng = random.Random(seed + 1)
    _write(folder / "movies.dat",
           [f"{i + 1}::Movie {i + 1} ({1950 + i % 60})::{'|'.join(_pick(rng, GENRES))}" for i in range(items)])
    return folder


def write_amazon_books(folder: Path, users: int = 14, per_user: int = 90, items: int = 120, seed: int = 0) -> Path:
    """Amazon Books 2018 5-core: ``Books_5.json`` reviews (JSON lines) and ``meta_Books.json`` in ``folder``."""
    rows = interactions(users, per_user, items, (1.0, 2.0, 3.0, 4.0, 5.0), seed)
    asin = [f"B{i:09d}" for i in range(items)]
    reviews = []
    for r in rows:
        when = datetime.fromtimestamp(r.timestamp, UTC)
        reviews.append(json.dumps({
            "overall": r.rating, "verified": True, "reviewTime": when.strftime("%m %d, %Y"),
            "reviewerID": f"A{r.user:05d}", "asin": asin[r.item], "style": {"Format:": " Paperback"},
            "reviewerName": f"reader {r.user}", "reviewText": f"Rated {r.rating:g}.",
            "summary": f"{int(r.rating)} Stars", "unixReviewTime": r.timestamp,
        }))
    _write(folder / "Books_5.json", reviews)
    rng = random.Random(seed + 1)
    _write(folder / "meta_Books.json", [
        json.dumps({"category": ["Books", *_pick(rng, BOOK_CATEGORIES)], "title": f"Book {i}", "asin": asin[i],
                    "also_buy": [asin[(i + 1) % items]], "brand": f"Author {i % 30}"})
        for i in range(items)
    ])
    return folder


def write_yelp(folder: Path, users: int = 14, per_user: int = 90, items: int = 120, seed: int = 0) -> Path:
    """``yelp_academic_dataset_review.json`` and ``yelp_academic_dataset_business.json`` in ``folder``."""
    rows = interactions(users, per_user, items, (1.0, 2.0, 3.0, 4.0, 5.0), seed)
    business = [f"B{i:021d}" for i in range(items)]  # 22 characters, like the published ids
    reviews = [
        json.dumps({
            "review_id": f"r{n:06d}", "user_id": f"user{r.user:03d}", "business_id": business[r.item],
            "stars": int(r.rating), "useful": 0, "funny": 0, "cool": 0, "text": f"Gave it {int(r.rating)} stars.",
            "date": datetime.fromtimestamp(r.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        })
        for n, r in enumerate(rows)
    ]
    _write(folder / "yelp_academic_dataset_review.json", reviews)
    rng = random.Random(seed + 1)
    _write(folder / "yelp_academic_dataset_business.json", [
        json.dumps({"business_id": business[i], "name": f"Place {i}", "city": "Tucson", "state": "AZ",
                    "stars": 3.5, "review_count": per_user, "is_open": 1,
                    "categories": None if i % 10 == 9 else ", ".join(["Restaurants", *_pick(rng, YELP_CATEGORIES)])})
        for i in range(items)
    ])
    return folder
