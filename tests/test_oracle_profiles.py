"""The oracle-facts profile: the prompt's user-fact sentences as the profile, from the last H older items only."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from lettingo.profiles.oracle import oracle_profile, oracle_profiles
from lettingo.profiles.prompts import build_instruction

H = 4


def item(item_id: str, rating: float, *genres: str) -> dict:
    label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
    return {"item_id": item_id, "title": f"Film {item_id}", "attributes": np.array(genres, dtype=object),
            "rating": float(rating), "label": label, "text": ""}


def sample(user: str = "u") -> dict:
    older = [item("o0", 1, "Horror"), item("o1", 5, "Drama"), item("o2", 4, "Drama"), item("o3", 2, "Horror"),
             item("o4", 5, "Comedy"), item("o5", 3, "Drama")]
    recent = [item("r0", 1, "Comedy"), item("r1", 2, "Comedy")]
    return {"user_id": user, "older": older, "recent": recent, "target": item("t", 5, "Comedy")}


@pytest.fixture
def prompt_cfg(compose_cfg):
    cfg = compose_cfg(["prompt.facts.min_support=1"])
    return cfg.prompt, cfg.dataset.item_text


def test_the_profile_is_the_prompt_facts(prompt_cfg) -> None:
    prompt, item_text = prompt_cfg
    profile = oracle_profile(sample(), H, prompt.facts)
    lines = profile.splitlines()
    assert lines[0].startswith("Average rating 3.5 over 4 items")  # o2..o5: 4, 2, 5, 3
    assert any(line.startswith("Highest rated genres:") for line in lines)
    instruction = build_instruction(sample(), prompt, H, item_text)
    assert profile in instruction  # the very sentences the prompt shows, in its order


def test_the_profile_reads_only_the_last_h_older_items(prompt_cfg) -> None:
    prompt, _ = prompt_cfg
    reference = oracle_profile(sample(), H, prompt.facts)
    changed = sample()
    changed["recent"] = [item("r0", 5, "Horror"), item("r1", 5, "Drama")]
    changed["target"] = item("t", 1, "Horror")
    changed["older"][0] = item("o0", 5, "Western")  # before the last H
    assert oracle_profile(changed, H, prompt.facts) == reference
    newest_older = copy.deepcopy(sample())
    newest_older["older"][-1] = item("o5", 1, "Drama")
    assert oracle_profile(newest_older, H, prompt.facts) != reference


def test_profiles_of_samples_and_errors(prompt_cfg) -> None:
    prompt, _ = prompt_cfg
    samples = pd.DataFrame([sample("a"), sample("b")])
    assert oracle_profiles(samples, H, prompt.facts) == dict.fromkeys(["a", "b"], oracle_profile(sample(), H,
                                                                                                 prompt.facts))
    off = OmegaConf.merge(prompt.facts, {"rating_stats": False, "genre_preferences": False})
    with pytest.raises(ValueError, match="at least one fact"):
        oracle_profile(sample(), H, off)
    with pytest.raises(ValueError, match="fewer than H"):
        oracle_profile(sample(), 7, prompt.facts)
