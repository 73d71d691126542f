"""Realistic profile-writing prompts (~300 tokens) built from MovieLens-style titles with ratings."""

from __future__ import annotations

import random

MOVIES = [
    ("Toy Story (1995)", "Animation|Children's|Comedy"),
    ("GoldenEye (1995)", "Action|Adventure|Thriller"),
    ("Four Rooms (1995)", "Thriller"),
    ("Get Shorty (1995)", "Action|Comedy|Drama"),
    ("Copycat (1995)", "Crime|Drama|Thriller"),
    ("Twelve Monkeys (1995)", "Drama|Sci-Fi"),
    ("Babe (1995)", "Children's|Comedy|Drama"),
    ("Dead Man Walking (1995)", "Drama"),
    ("Richard III (1995)", "Drama|War"),
    ("Seven (Se7en) (1995)", "Crime|Thriller"),
    ("Usual Suspects, The (1995)", "Crime|Thriller"),
    ("Mighty Aphrodite (1995)", "Comedy"),
    ("Postino, Il (1994)", "Drama|Romance"),
    ("Mr. Holland's Opus (1995)", "Drama"),
    ("French Twist (1995)", "Comedy|Romance"),
    ("From Dusk Till Dawn (1996)", "Action|Comedy|Crime|Horror"),
    ("Braveheart (1995)", "Action|Drama|War"),
    ("Taxi Driver (1976)", "Drama|Thriller"),
    ("Apollo 13 (1995)", "Action|Drama|Thriller"),
    ("Batman Forever (1995)", "Action|Adventure|Comedy"),
    ("Crimson Tide (1995)", "Drama|Thriller|War"),
    ("Desperado (1995)", "Action|Romance|Thriller"),
    ("Free Willy 2 (1995)", "Adventure|Children's|Drama"),
    ("Mad Love (1995)", "Drama|Romance"),
    ("Star Wars (1977)", "Action|Adventure|Romance|Sci-Fi|War"),
    ("Pulp Fiction (1994)", "Crime|Drama"),
    ("Shawshank Redemption, The (1994)", "Drama"),
    ("Forrest Gump (1994)", "Comedy|Romance|War"),
    ("Lion King, The (1994)", "Animation|Children's|Musical"),
    ("Mask, The (1994)", "Comedy|Crime|Fantasy"),
    ("Fargo (1996)", "Crime|Drama|Thriller"),
    ("Heat (1995)", "Action|Crime|Thriller"),
    ("Sense and Sensibility (1995)", "Drama|Romance"),
    ("Jurassic Park (1993)", "Action|Adventure|Sci-Fi"),
    ("Blade Runner (1982)", "Film-Noir|Sci-Fi"),
    ("Fugitive, The (1993)", "Action|Thriller"),
    ("Terminator 2: Judgment Day (1991)", "Action|Sci-Fi|Thriller"),
    ("Groundhog Day (1993)", "Comedy|Romance"),
    ("Silence of the Lambs, The (1991)", "Drama|Thriller"),
    ("Aladdin (1992)", "Animation|Children's|Comedy"),
    ("Godfather, The (1972)", "Action|Crime|Drama"),
    ("Casablanca (1942)", "Drama|Romance|War"),
    ("Princess Bride, The (1987)", "Action|Adventure|Comedy|Romance"),
    ("Alien (1979)", "Action|Horror|Sci-Fi"),
    ("Raiders of the Lost Ark (1981)", "Action|Adventure"),
    ("Titanic (1997)", "Action|Drama|Romance"),
    ("Scream (1996)", "Horror|Thriller"),
    ("Contact (1997)", "Drama|Sci-Fi"),
    ("Independence Day (ID4) (1996)", "Action|Sci-Fi|War"),
    ("English Patient, The (1996)", "Drama|Romance|War"),
    ("Liar Liar (1997)", "Comedy"),
    ("Air Force One (1997)", "Action|Thriller"),
]

INSTRUCTION = (
    "Here are the movies a user rated, oldest first, each with its genres and the user's rating out of 5:\n"
    "{items}\n"
    "The user's mean rating is {mean:.2f}.\n"
    "Write a short profile of this user's tastes: what they like and dislike, and how generous their ratings "
    "are, so that someone could predict how they would rate a new movie."
)


def profile_instructions(count: int, items: int = 20, seed: int = 0) -> list[str]:
    """``count`` different instructions, each listing ``items`` rated movies (about 300 tokens rendered)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        picked = rng.sample(MOVIES, items)
        ratings = [rng.choice([1, 2, 3, 3, 4, 4, 4, 5, 5]) for _ in picked]
        lines = "\n".join(f"{title} [{genres}]: {r}/5" for (title, genres), r in zip(picked, ratings, strict=True))
        out.append(INSTRUCTION.format(items=lines, mean=sum(ratings) / len(ratings)))
    return out
