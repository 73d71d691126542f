"""Every prompt template renders with every dataset's item text, through the real composed configs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from omegaconf import OmegaConf

from lettingo.data.item_text import item_text
from lettingo.profiles.prompts import build_instruction

PROMPTS = ["lettingo", "palr", "rlmrec", "kar"]
DATASETS = ["ml100k", "ml1m", "ml10m", "amazon_books", "yelp"]
EXTERNAL = {"ml10m", "amazon_books", "yelp"}  # read from `dataset.path` (required); the others are embedded
LABEL = {5: "like", 4: "like", 3: "neutral", 2: "dislike", 1: "dislike"}
# Each family's item shape: title, attributes and review text as its source writes them.
SHAPES = {
    "ml": ("Movie {i} ({year})", ["Drama", "Comedy", "Horror"], ""),
    "amazon_books": ("The Book Number {i}: A Novel", ["Books", "Literature & Fiction", "Mystery"],
                     "Review {i}: a gripping read that kept me up all night, though the ending dragged a little."),
    "yelp": ("Cafe {i}", ["Restaurants", "Coffee & Tea", "Breakfast & Brunch"],
             "Review {i}: friendly staff, great espresso, but the tables were sticky and it got loud."),
}


def family(dataset: str) -> str:
    return "ml" if dataset.startswith("ml") else dataset


def make_sample(dataset: str, count: int = 40) -> dict:
    title, attributes, review = SHAPES[family(dataset)]
    older = []
    for i in range(count):
        rating = [5, 4, 3, 2, 1, 4, 4][i % 7]
        older.append({
            "item_id": str(i), "rating": float(rating), "timestamp": 1000 + i,
            "title": title.format(i=i, year=1950 + i), "attributes": attributes[: 1 + i % 3],
            "text": review.format(i=i), "label": LABEL[rating],
        })
    return {"user_id": "u1", "older": older, "split": "profile_train_h30"}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_template_renders_history_facts_and_request(compose_cfg, prompt: str, dataset: str) -> None:
    path = ["dataset.path=/data/not-used"] if dataset in EXTERNAL else []
    cfg = compose_cfg([f"prompt={prompt}", f"dataset={dataset}", *path])
    sample = make_sample(dataset)
    history_len = int(cfg.history.length)
    text = build_instruction(sample, cfg.prompt, history_len, cfg.dataset.item_text)

    shown = sample["older"][-history_len:]
    expected = [f"{k}. {item_text(it, **cfg.dataset.item_text)}" for k, it in enumerate(shown, 1)]
    lines = text.splitlines()
    positions = [lines.index(line) for line in expected]
    assert positions == sorted(positions) and len(positions) == history_len  # oldest first, one line each
    assert sample["older"][-history_len - 1]["title"] not in text  # nothing older than H
    assert "Average rating" in text and f"Highest rated {cfg.dataset.attribute_label}" in text
    assert text.endswith(" ".join(str(cfg.prompt.request).split()))
    assert "{{" not in text and "{%" not in text and "\n\n\n" not in text
    if cfg.dataset.item_text.review_chars > 0:
        assert 'review: "Review' in text
    else:
        assert "review" not in text.lower()


def test_fixed_format_prompts_ask_for_their_format(compose_cfg) -> None:
    sample = make_sample("ml100k")
    texts = {}
    for prompt in PROMPTS:
        cfg = compose_cfg([f"prompt={prompt}"])
        texts[prompt] = build_instruction(sample, cfg.prompt, 30, cfg.dataset.item_text)
        assert cfg.prompt.name == prompt
    assert len(set(texts.values())) == len(PROMPTS)
    assert "keyword" in texts["palr"] and "support" in texts["palr"]
    assert "JSON" in texts["rlmrec"] and "100 words" in texts["rlmrec"] and '"reasoning"' in texts["rlmrec"]
    assert "explain" in texts["kar"]
    assert "like" in texts["lettingo"] and "dislike" in texts["lettingo"]


def test_facts_switch_off(compose_cfg) -> None:
    cfg = compose_cfg(["prompt.facts.rating_stats=false", "prompt.facts.genre_preferences=false"])
    text = build_instruction(make_sample("ml100k"), cfg.prompt, 30, cfg.dataset.item_text)
    assert "Average rating" not in text and "Highest rated" not in text
    assert re.search(r"^30\. ", text, re.MULTILINE)


def test_samples_read_back_from_parquet_render_the_same(compose_cfg) -> None:
    """Parquet turns the lists of a sample into NumPy arrays; the prompt must not change."""
    cfg = compose_cfg()
    sample = make_sample("ml100k")
    as_arrays = {**sample, "older": np.array(
        [{**it, "attributes": np.array(it["attributes"], dtype=object)} for it in sample["older"]], dtype=object
    )}
    assert build_instruction(as_arrays, cfg.prompt, 30, cfg.dataset.item_text) == build_instruction(
        sample, cfg.prompt, 30, cfg.dataset.item_text
    )


def test_bad_template_and_short_history_raise(compose_cfg) -> None:
    cfg = compose_cfg()
    broken = OmegaConf.merge(cfg.prompt, {"template": "{{ no_such_field }}"})
    with pytest.raises(ValueError, match="prompt 'lettingo'.*no_such_field"):
        build_instruction(make_sample("ml100k"), broken, 30, cfg.dataset.item_text)
    with pytest.raises(ValueError, match="fewer than H=30"):
        build_instruction(make_sample("ml100k", count=10), cfg.prompt, 30, cfg.dataset.item_text)


def test_compact_prompt_lists_the_newest_items_without_attributes_but_facts_over_all_h(compose_cfg) -> None:
    cfg = compose_cfg(["prompt.listed_items=5", "prompt.item_attributes=false"])
    sample = make_sample("ml1m")
    history_len = int(cfg.history.length)
    text = build_instruction(sample, cfg.prompt, history_len, cfg.dataset.item_text)
    full = build_instruction(sample, compose_cfg([]).prompt, history_len, cfg.dataset.item_text)
    listed = [line for line in text.splitlines() if re.match(r"\d+\. ", line)]
    newest = sample["older"][-5:]
    assert listed == [f"{k}. {it['title']} | rated {it['rating']:g} ({it['label']})" for k, it in enumerate(newest, 1)]
    assert sample["older"][-6]["title"] not in text
    facts = [line for line in full.splitlines() if line.startswith(("Average rating", "Highest", "Lowest"))]
    assert facts and all(line in text.splitlines() for line in facts)  # the same facts, computed over all H
    assert len(text) < len(full) / 2
    with pytest.raises(ValueError, match="listed_items"):
        build_instruction(sample, compose_cfg(["prompt.listed_items=-1"]).prompt, history_len, cfg.dataset.item_text)
