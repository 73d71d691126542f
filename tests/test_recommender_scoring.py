"""Label-word scoring of the LLM f_Rec on tiny_random: prompt split, and the same probabilities on every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.llm.models import load_causal_lm
from lettingo.recommender.cases import RecCase
from lettingo.recommender.llm_scoring import LabelWordScorer, PromptTemplate, label_token_ids, score_prompts
from lettingo.recommender.text import ItemTextConfig

LABEL_WORDS = {"like": "like", "neutral": "neutral", "dislike": "dislike"}


def item(i: int, rating: float) -> dict:
    label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
    return {"item_id": str(i), "title": f"Movie {i} (1995)", "attributes": ["Drama", "Comedy"], "rating": rating,
            "label": label, "text": ""}


def user_cases(user: int, profiles: list[str]) -> list[RecCase]:
    recent = tuple(item(10 * user + j, 1 + (j + user) % 5) for j in range(1 + user % 4))
    return [RecCase(str(user), p, recent, item(900 + user, 4)) for p in profiles]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return load_causal_lm("tiny_random", tmp_path_factory.mktemp("models"), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def scorer(tiny) -> LabelWordScorer:
    prompt = OmegaConf.load(f"{CONFIG_DIR}/recommender/shared/llm_prompt.yaml")
    return LabelWordScorer(tiny[1], PromptTemplate(**prompt), ItemTextConfig(), LABEL_WORDS)


def test_profiles_of_a_user_share_the_prefix_and_differ_after_it(scorer) -> None:
    a, b = user_cases(1, ["likes dramas", "hates comedies a lot"])
    ea, eb = scorer.encode([a, b])
    assert ea.prefix == eb.prefix and ea.suffix != eb.suffix
    prefix_text, suffix_text = scorer.encoder.texts(a)
    assert "Movie 901" in prefix_text and "likes dramas" not in prefix_text  # target before, profile after the cut
    assert suffix_text.startswith("likes dramas") and suffix_text.endswith("<|assistant|>\n")
    assert "rated" not in prefix_text.split("Item to predict")[1]  # the target's rating is never shown


def test_empty_profile_is_rendered_as_the_placeholder(scorer) -> None:
    (case,) = user_cases(2, [""])
    assert scorer.encoder.texts(case)[1].startswith("(none)")


def test_batched_one_by_one_and_prefix_reuse_agree(tiny, scorer) -> None:
    model, _ = tiny
    cases = [c for u in range(4) for c in user_cases(u, [f"profile {u} " * k for k in range(1 + u % 3)])]
    encoded = scorer.encode(cases)
    args = (model, encoded, scorer.label_ids, scorer.pad_id)
    batched = score_prompts(*args, batch_size=5, reuse_prefix=False)
    one_by_one = np.concatenate([score_prompts(model, [e], scorer.label_ids, scorer.pad_id, 1, False) for e in encoded])
    reused = score_prompts(*args, batch_size=2, reuse_prefix=True)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(reused, one_by_one, atol=1e-5)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-9)
    # The probabilities are the softmax of the label words' logits at the last prompt position.
    with torch.no_grad():
        logits = model(torch.tensor([encoded[0].ids])).logits[0, -1, scorer.label_ids]
    np.testing.assert_allclose(one_by_one[0], torch.softmax(logits, -1).numpy(), atol=1e-6)
    assert len({tuple(np.round(row, 6)) for row in one_by_one}) > 1  # the scores do depend on the input


def test_label_words_must_start_with_different_tokens(tiny) -> None:
    with pytest.raises(ValueError, match="share a first token"):
        label_token_ids(tiny[1], {"like": "like", "neutral": "like it", "dislike": "dislike"}, leading_space=False)
    with pytest.raises(ValueError, match="lacks"):
        label_token_ids(tiny[1], {"like": "like"}, leading_space=False)


def test_prompt_template_keeps_the_profile_out_of_the_prefix() -> None:
    with pytest.raises(ValueError, match="tail"):
        PromptTemplate(head="{profile} {recent}", tail="{target}")
