"""A few DPO steps on the bundled SmolLM2 with two real-ish pairs of one ML-100K-style user (slow)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lettingo.align.adapters import attach_lora
from lettingo.align.data import batch_loader, collate, preference_examples
from lettingo.align.dpo import DpoModule, attach_reference_logps
from lettingo.llm.models import load_causal_lm

INSTRUCTION = """Items a user rated, oldest first.
1. Star Wars (1977) | Action, Adventure, Romance, Sci-Fi, War | rated 5 (like)
2. Fargo (1996) | Crime, Drama, Thriller | rated 5 (like)
3. Toy Story (1995) | Animation, Children's, Comedy | rated 2 (dislike)
4. Scream (1996) | Horror, Thriller | rated 1 (dislike)
5. Casablanca (1942) | Drama, Romance, War | rated 4 (like)
Average rating 3.4 over 5 items.

Write a short profile of this user. Say anything that helps predict whether they will like, feel neutral about, or
dislike a new item."""
CHOSEN = "This user loves classic dramas, crime thrillers and war films, and dislikes horror and children's movies."
REJECTED = ["The user enjoys animated family comedies and horror films.", "Toy Story Toy Story Toy Story Toy Story"]


@pytest.mark.slow
def test_dpo_steps_on_smollm2_widen_the_margin(bundled_model_cache) -> None:  # noqa: F811
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm("bundled:smollm2_135m", bundled_model_cache, dtype="float32", device="cpu")
    model = attach_lora(model, {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": INSTRUCTION}], tokenize=False,
                                           add_generation_prompt=True)
    pairs = pd.DataFrame({"user_id": ["1", "1"], "prompt": [prompt] * 2, "chosen": [CHOSEN] * 2, "rejected": REJECTED})
    examples, _ = preference_examples(pairs, tokenizer, 1024, 64)
    attach_reference_logps(model, examples, batch_loader(examples, 2, tokenizer.pad_token_id, seed=0, shuffle=False))
    module = DpoModule(model, lambda p: torch.optim.AdamW(p, lr=1e-3), beta=0.1)
    batch = collate(examples, [0, 1], tokenizer.pad_token_id)
    assert batch["prompt_ids"].shape[0] == 1  # the user's prompt runs once for both pairs
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n and "layers.0." in n}
    model.train()
    first_loss, first = module.step(batch)
    optimizer = module.configure_optimizers()
    for _ in range(3):
        optimizer.zero_grad()
        module.step(batch)[0].backward()
        optimizer.step()
    loss, after = module.step(batch)
    assert float(first["rewards/margins"]) == pytest.approx(0.0, abs=1e-4)
    assert float(after["rewards/margins"]) > 0.5 and float(after["rewards/accuracies"]) == 1.0
    assert float(loss) < float(first_loss)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
