"""The real bundled models as f_Rec on a couple of ML-100K-like cases (slow: loads SmolLM2 and MiniLM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from lettingo.recommender.cases import RecCase

pytestmark = pytest.mark.slow


def item(i: int, title: str, genres: list[str], rating: float) -> dict:
    label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
    return {"item_id": str(i), "title": title, "attributes": genres, "rating": rating, "label": label, "text": ""}


RECENT = (item(1, "Star Wars (1977)", ["Action", "Sci-Fi"], 5), item(2, "Fargo (1996)", ["Crime", "Drama"], 4),
          item(3, "Scream (1996)", ["Horror"], 1))
CASES = [
    RecCase("u1", "Loves science fiction and crime dramas; hates horror.", RECENT,
            item(4, "Alien (1979)", ["Horror", "Sci-Fi"], 2)),
    RecCase("u1", "Average rating 4.1; rates most films highly.", RECENT, item(4, "Alien (1979)", ["Horror"], 2)),
    RecCase("u2", "", RECENT[:2], item(5, "Heat (1995)", ["Action", "Crime"], 4)),
]


def test_smollm2_zero_shot_scores_label_words_the_same_with_and_without_prefix_reuse(compose_cfg) -> None:
    torch.set_num_threads(2)
    cfg = compose_cfg(["recommender=llm_zero_shot", "recommender.model.dtype=float32"])
    recommender = instantiate(cfg.recommender.model)
    reused = recommender.predict(CASES)
    recommender.reuse_prefix = False
    whole = recommender.predict(CASES)
    np.testing.assert_allclose(reused, whole, atol=1e-5)
    np.testing.assert_allclose(reused.sum(axis=1), 1.0, atol=1e-9)
    assert not np.allclose(reused[0], reused[1])  # the profile changes the answer


def test_minilm_cross_encoder_predicts_and_trains(compose_cfg) -> None:
    torch.set_num_threads(2)
    module = instantiate(compose_cfg(["recommender=cross_encoder"]).recommender.model)
    assert module.encoder.config.hidden_size == 384
    probabilities = module.predict(CASES)
    assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
    batch = module.collate(CASES)
    optimizer = module.configure_optimizers()
    module.train()
    with torch.no_grad():
        first = module.loss(batch).item()
    for _ in range(3):
        optimizer.zero_grad()
        module.loss(batch).backward()
        optimizer.step()
    with torch.no_grad():
        assert module.loss(batch).item() < first
