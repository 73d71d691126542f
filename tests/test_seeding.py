"""derive_seed: the one seed derivation of backbones, samples and per-user pair draws, pinned to the
values that runs before it was shared wrote (so artifacts and resumed runs keep their seeds)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from lettingo.feedback.pairs import build_pairs
from lettingo.llm.base import sample_seed
from lettingo.seeding import derive_seed


def blake2b_top_bits(text: str, bits: int) -> int:
    """The formula each module used to write out for itself."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> (64 - bits)


def test_seeds_are_the_ones_earlier_runs_used() -> None:
    # Literal values: the same in every process, Python version and machine.
    assert derive_seed(0, 0, "hello") == sample_seed(0, "hello", 0) == 7995177714872947625
    assert derive_seed(42, "smollm2_135m") == 7196924477412590181  # a backbone's seed (explore)
    assert derive_seed(7, "u1", bits=64) == 5203946508516752575  # a user's pair draw (pairs)


@pytest.mark.parametrize("parts", [(3, 0, "prompt with ü and \x00 inside"), (12345678901234, "backbone"), (-1, "u")])
def test_derive_seed_is_blake2b_of_the_parts_joined_by_nul(parts: tuple) -> None:
    text = "\x00".join(str(p) for p in parts)
    assert derive_seed(*parts) == blake2b_top_bits(text, 63) < 2**63
    assert derive_seed(*parts, bits=64) == blake2b_top_bits(text, 64)
    assert derive_seed(*parts, bits=8) == blake2b_top_bits(text, 8) < 2**8


def test_bits_out_of_range_are_refused() -> None:
    for bits in (0, 65):
        with pytest.raises(ValueError, match="bits"):
            derive_seed(1, bits=bits)


def test_pair_draws_use_the_users_own_64_bit_stream() -> None:
    # Four correct x four wrong profiles give 16 candidate pairs; two are drawn with the user's stream.
    rewards = pd.DataFrame({
        "user_id": "u1", "prompt_name": "p", "history_len": 4, "prompt": "P", "backbone": "b",
        "sample_idx": range(8), "text": [f"t{i}" for i in range(8)], "correct": [True] * 4 + [False] * 4,
        "p_true": np.linspace(0.9, 0.1, 8), "label": "like",
    })
    pairs = build_pairs(rewards, rule="all", max_pairs_per_user=2, seed=7)
    keep = sorted(np.random.default_rng(blake2b_top_bits("7\x00u1", 64)).choice(16, 2, replace=False))
    expected = [(c, w) for c in range(4) for w in range(4, 8)]
    drawn = list(zip(pairs["chosen_sample_idx"], pairs["rejected_sample_idx"], strict=True))
    assert drawn == [expected[i] for i in keep] and len(drawn) == 2
