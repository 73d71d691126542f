"""Tokenization, truncation, batching and log-probabilities of the alignment data path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from lettingo.align.data import (
    check_pairs,
    collate,
    completion_batch,
    length_buckets,
    positive_examples,
    preference_examples,
    prompt_token_ids,
    select_pairs,
    split_by_user,
    tokenize_examples,
)
from lettingo.align.logprobs import completion_logps, completion_token_logps
from lettingo.align.training import accumulation_steps, device_count, generator_pairs
from lettingo.artifacts import adapter_artifact
from lettingo.llm.models import load_causal_lm
from lettingo.schemas import ConfigError, validate_config
from lettingo.stages import BY_NAME


@pytest.fixture
def tiny(tmp_path: Path):
    return load_causal_lm("tiny_random", tmp_path / "models", dtype="float32")


def _render(tokenizer, text: str) -> str:
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_truncation_keeps_the_end_of_the_prompt_and_the_start_of_profiles(tiny) -> None:
    _, tokenizer = tiny
    long_prompt = _render(tokenizer, "Toy Story (1995) rated 5 of 5. " * 20)
    short_prompt = _render(tokenizer, "Fargo")
    full = prompt_token_ids(tokenizer, long_prompt)
    profile = "They enjoy classic films, strong characters and clever plots."
    examples, cut = tokenize_examples(tokenizer, [long_prompt, short_prompt], [[profile], ["Fargo"]], 40, 6)
    assert examples[0]["prompt_ids"] == full[-40:]  # the generation prompt at the end survives
    assert examples[1]["prompt_ids"] == prompt_token_ids(tokenizer, short_prompt)
    completion = tokenizer(profile, add_special_tokens=False)["input_ids"]
    assert examples[0]["completions"] == [completion[:6]]  # profile start kept, EOS cut with the end
    assert examples[1]["completions"][0][-1] == tokenizer.eos_token_id
    assert (cut.examples, cut.prompts_cut, cut.completions_cut) == (2, 1, 1)


def test_chat_prompts_get_no_second_bos(tiny) -> None:
    _, tokenizer = tiny
    ids = prompt_token_ids(tokenizer, _render(tokenizer, "Fargo"))
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def _pairs(tokenizer) -> pd.DataFrame:
    a, b = _render(tokenizer, "Toy Story (1995) 5 of 5"), _render(tokenizer, "Alien (1979) 1 of 5")
    return pd.DataFrame({"user_id": ["1", "1", "1", "2"], "prompt": [a, a, a, b],
                         "chosen": ["Likes crime.", "Likes crime.", "Likes drama.", "Dislikes horror."],
                         "rejected": ["Likes horror.", "Star Wars.", "Likes horror.", "Toy Story."]})


def test_collate_runs_each_prompt_and_profile_once(tiny) -> None:
    _, tokenizer = tiny
    examples, _ = preference_examples(_pairs(tokenizer), tokenizer, 512, 64)
    batch = collate(examples, [7, 8, 9, 10], tokenizer.pad_token_id)
    assert batch["prompt_ids"].shape[0] == 2
    assert batch["completion_ids"].shape[0] == 6  # 8 completions; user 1's "Likes crime." and "Likes horror." twice
    assert batch["completion_rows"].tolist() == [[0, 1], [0, 2], [3, 1], [4, 5]]
    assert batch["completion_prompt"].tolist() == [0, 0, 0, 0, 1, 1]
    assert batch["index"].tolist() == [7, 8, 9, 10]
    # Prompts padded on the left, completions on the right, masks matching the token counts.
    lengths = [len(e["prompt_ids"]) for e in examples]
    assert batch["prompt_mask"].sum(-1).tolist() == [lengths[0], lengths[3]]
    assert bool(batch["prompt_mask"][:, -1].all()) and bool(batch["completion_mask"][:, 0].all())


def test_sft_examples_are_the_distinct_correct_profiles(tiny) -> None:
    _, tokenizer = tiny
    examples, _ = positive_examples(_pairs(tokenizer), tokenizer, 512, 64)
    decoded = [tokenizer.decode(e["completions"][0], skip_special_tokens=True) for e in examples]
    assert sorted(decoded) == ["Dislikes horror.", "Likes crime.", "Likes drama."]


@pytest.mark.parametrize("share_prompt", [True, False])
def test_completion_logps_score_only_completion_tokens(tiny, share_prompt: bool) -> None:
    model, tokenizer = tiny
    examples, _ = preference_examples(_pairs(tokenizer), tokenizer, 512, 64)
    batch = collate(examples, range(4), tokenizer.pad_token_id)
    logps = completion_logps(model, completion_batch(batch), share_prompt)
    tokens = completion_token_logps(model, completion_batch(batch), share_prompt)
    assert bool((tokens[batch["completion_mask"] == 0] == 0).all())
    for e, example in enumerate(examples):
        for k, completion in enumerate(example["completions"]):
            ids = torch.tensor([example["prompt_ids"] + completion])
            with torch.no_grad():
                full = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
            expected = full[-len(completion):].sum()
            torch.testing.assert_close(logps[batch["completion_rows"][e, k]].detach(), expected, atol=1e-5, rtol=0)


def test_split_by_user_is_disjoint_and_seeded() -> None:
    pairs = pd.DataFrame({"user_id": [str(u) for u in range(10) for _ in range(3)], "prompt": "p", "chosen": "c",
                          "rejected": "r"})
    train, val = split_by_user(pairs, 0.2, seed=3)
    assert set(train["user_id"]).isdisjoint(val["user_id"])
    assert val["user_id"].nunique() == 2 and len(train) + len(val) == 30
    again_train, _ = split_by_user(pairs, 0.2, seed=3)
    assert train.equals(again_train)
    assert len(split_by_user(pairs, 0.0, seed=3)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_user(pairs, 1.0, seed=0)


def test_select_pairs_spreads_over_users() -> None:
    pairs = pd.DataFrame({"user_id": ["a"] * 6 + ["b"] * 2 + ["c"], "prompt": "p", "chosen": "c", "rejected": "r"})
    chosen = select_pairs(pairs, 4, seed=0)
    assert len(chosen) == 4 and set(chosen["user_id"]) == {"a", "b", "c"}
    assert len(select_pairs(pairs, None, seed=0)) == 9


def test_length_buckets_cover_every_example_once() -> None:
    keys = [(n % 7, 0, 0) for n in range(23)]
    batches = length_buckets(keys, 4, seed=1, window=2)
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert all(len(b) == 4 for b in batches if len(b) != 3) and sum(len(b) == 3 for b in batches) == 1
    assert batches == length_buckets(keys, 4, seed=1, window=2)


def test_accumulation_from_the_global_batch() -> None:
    assert accumulation_steps(16, 4, 1) == 4
    assert accumulation_steps(16, 4, 2) == 2
    with pytest.raises(ValueError, match="multiple"):
        accumulation_steps(10, 4, 1)
    assert device_count(OmegaConf.create({"accelerator": "cpu", "devices": 1})) == 1
    assert device_count(OmegaConf.create({"accelerator": "gpu", "devices": [0, 1], "num_nodes": 2})) == 4


def test_methods_and_bad_pairs(compose_cfg) -> None:
    def adapters(*overrides: str) -> list[str]:
        return BY_NAME["align"].makes(compose_cfg(list(overrides)))

    assert adapters() == [adapter_artifact("dpo"), adapter_artifact("sft")]  # DPO, then the paper's SFT baseline
    assert adapters("align.methods=[sft]") == [adapter_artifact("sft")]
    with pytest.raises(ConfigError, match="align.methods"):
        validate_config(compose_cfg(["align.methods=[ppo]"]))
    with pytest.raises(ValueError, match="lacks the columns"):
        check_pairs(pd.DataFrame({"user_id": ["1"], "prompt": ["p"]}))
    with pytest.raises(ValueError, match="empty 'chosen'"):
        check_pairs(pd.DataFrame({"user_id": ["1"], "prompt": ["p"], "chosen": [""], "rejected": ["r"]}))


def test_generator_pairs_use_the_generators_own_prompt() -> None:
    pairs = pd.DataFrame({"user_id": ["1", "2"], "prompt_name": "lettingo", "history_len": 30,
                          "prompt": ["gemma prompt 1", "smol prompt 2"], "chosen": "c", "rejected": "r"})
    profiles = pd.DataFrame({"user_id": ["1", "1", "2"], "prompt_name": "lettingo", "history_len": 30,
                             "backbone": ["gemma", "smol", "gemma"], "prompt": ["gemma prompt 1", "smol prompt 1",
                                                                                "gemma prompt 2"]})
    own = generator_pairs(pairs, profiles, "smol")
    assert own["prompt"].tolist() == ["smol prompt 1"]  # user 2 has no SmolLM2 prompt: dropped


def test_shared_prompt_is_exact_with_sliding_window_layers() -> None:
    """Gemma 3 mixes sliding-window and full attention; prompts longer than the window still score exactly."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=0)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    examples = [{"prompt_ids": [2, 5, 6, 7, 8, 9, 10, 11], "completions": [[12, 13, 14, 1], [15, 1]]},
                {"prompt_ids": [2, 20, 21], "completions": [[22, 23, 24, 25, 26, 1], [27, 1]]}]
    batch = completion_batch(collate(examples, [0, 1], pad_id=0))
    with torch.no_grad():
        torch.testing.assert_close(completion_logps(model, batch, True), completion_logps(model, batch, False),
                                   atol=1e-5, rtol=0)
