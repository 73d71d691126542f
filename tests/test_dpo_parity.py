"""Our DPO module against TRL's DPOTrainer: same tiny model, LoRA weights and pairs -> same loss,
rewards and gradients (sigmoid loss, same beta), with and without the shared-prompt forward.
Two pairs share a user's prompt and chosen profile, so the de-duplicated batch is checked too."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from fixtures_llm import parity_lora_model

from lettingo.align.data import collate, completion_token_ids, preference_examples, prompt_token_ids
from lettingo.align.dpo import DpoModule
from lettingo.align.trl_engine import dpo_trainer, trl_prompt
from lettingo.llm.models import load_causal_lm

BETA = 0.3
PROFILES = [
    ("Likes crime dramas and thrillers, rates comedies low.", "Toy Story."),
    ("Likes crime dramas and thrillers, rates comedies low.", "Star Wars (1977) Star Wars (1977)"),
    ("They enjoy classic films.", "User profile: likes horror, mean rating 4."),
    ("Dislikes children's films; high ratings to Star Wars (1977).", "Fargo"),
]


@pytest.fixture
def pairs(tmp_path: Path) -> pd.DataFrame:
    _, tokenizer = load_causal_lm("tiny_random", tmp_path / "models")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"The user rated {t}. Write a profile."}],
                                             tokenize=False, add_generation_prompt=True)
               for t in ("Toy Story (1995) 5 of 5", "Toy Story (1995) 5 of 5",
                         "Alien (1979) 2 of 5, Titanic (1997) 4 of 5", "Fargo (1996)")]
    return pd.DataFrame({"user_id": ["1", "1", "2", "3"], "prompt": prompts, "chosen": [c for c, _ in PROFILES],
                         "rejected": [r for _, r in PROFILES]})


def _trl_side(cache: Path, pairs: pd.DataFrame, tmp: Path):
    model, tokenizer = parity_lora_model(cache)
    trainer = dpo_trainer(model, tokenizer, pairs, None, tmp / "trl", beta=BETA, lr=1e-3, weight_decay=0.0,
                          micro_batch_size=len(pairs), accumulate=1, epochs=1, max_steps=-1, max_prompt_tokens=None,
                          max_completion_tokens=None,
                          precompute_reference=False, max_grad_norm=1.0, seed=0)
    # Handed a PeftModel, TRL's reference is a frozen copy of its adapter ("ref"); drop it so the reference is the
    # base with the adapter disabled, as in our module (the two agree whenever the adapter starts as the identity).
    trainer.model.delete_adapter("ref")
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    grads = {n.replace(".default", ""): p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, loss.detach(), metrics, grads


@pytest.mark.parametrize("share_prompt", [True, False])
def test_dpo_matches_trl(tmp_path: Path, pairs: pd.DataFrame, share_prompt: bool) -> None:
    cache = tmp_path / "models"
    trainer, trl_loss, trl_metrics, trl_grads = _trl_side(cache, pairs, tmp_path)

    model, tokenizer = parity_lora_model(cache)
    examples, _ = preference_examples(pairs, tokenizer, 4096, 4096)
    # Same tokens on both sides: TRL's prompt/chosen/rejected ids equal ours.
    for example, row in zip(examples, trainer.train_dataset, strict=True):
        assert row["prompt_ids"] == example["prompt_ids"]
        assert [row["chosen_ids"], row["rejected_ids"]] == example["completions"]
    module = DpoModule(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), beta=BETA, share_prompt=share_prompt,
                       precompute_reference=False)
    model.train()
    batch = collate(examples, range(len(examples)), tokenizer.pad_token_id)
    assert batch["prompt_ids"].shape[0] == 3 and batch["completion_ids"].shape[0] == 7  # shared prompt and profile
    loss, metrics = module.step(batch)
    loss.backward()

    torch.testing.assert_close(loss.detach(), trl_loss, atol=1e-5, rtol=0)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert float(metrics[key]) == pytest.approx(trl_metrics[key], abs=1e-5), key
    ours = {n.replace(".default", ""): p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert ours.keys() == trl_grads.keys()
    assert any(g.abs().max() > 1e-3 for g in ours.values())  # a gradient worth comparing
    for name, grad in ours.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=0, msg=name)


def test_trl_would_double_the_bos_of_a_chat_prompt(tmp_path: Path, pairs: pd.DataFrame) -> None:
    """Why we hand TRL a prompt without its leading BOS: TRL adds the tokenizer's special tokens."""
    _, tokenizer = load_causal_lm("tiny_random", tmp_path / "models")
    prompt = pairs["prompt"][0]
    ours = prompt_token_ids(tokenizer, prompt)
    assert ours[0] == tokenizer.bos_token_id and ours[1] != tokenizer.bos_token_id
    assert tokenizer(prompt)["input_ids"] == [tokenizer.bos_token_id, *ours]
    assert tokenizer(trl_prompt(tokenizer, prompt))["input_ids"] == ours
    assert completion_token_ids(tokenizer, "Fargo")[-1] == tokenizer.eos_token_id
