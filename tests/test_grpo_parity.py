"""Our GRPO module against TRL's GRPOTrainer (loss_type="dapo", on-policy): same tiny model, LoRA weights,
prompts, completions and rewards -> same advantages, loss and gradients, step after step, with and
without the shared-prompt forward and with TRL's KL term. TRL is handed our fixed completions through
its public ``rollout_func`` and scores them with a reward function that returns our rewards, so its own
code normalises the advantages, pads, and computes the loss. Prompts of different lengths (left
padding) and a completion repeated within a group (scored once by us, counted twice) are included."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from fixtures_llm import parity_lora_model

from lettingo.align.data import collate
from lettingo.align.grpo import GrpoModule, group_advantages, group_examples
from lettingo.llm.models import load_causal_lm

GROUPS = {  # user -> (what the prompt says, [(completion, reward)] * G)
    "1": ("Toy Story (1995) 5 of 5", [("Likes animation.", 1.0), ("Star Wars Star Wars", 0.0),
                                      ("Likes animation.", 1.0), ("Rates films 4 of 5 on average.", 0.5)]),
    "2": ("Alien (1979) 2 of 5, Titanic (1997) 4 of 5", [("Dislikes horror.", 0.9), ("Fargo", 0.1),
                                                         ("Mean rating 3.0; likes romance", 0.4), ("", 0.2)]),
    "3": ("Fargo (1996)", [("Crime.", -1.0), ("Likes crime dramas and thrillers, rates comedies low.", 2.0),
                           ("x", 0.0), ("Neutral.", 0.5)]),
}
G = 4
STEPS = 3
LR = 0.05  # plain SGD on both sides: later steps start from clearly different weights


@pytest.fixture
def samples(tmp_path: Path) -> pd.DataFrame:
    _, tokenizer = load_causal_lm("tiny_random", tmp_path / "models")
    rows = []
    for user, (rated, completions) in GROUPS.items():
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"The user rated {rated}. Profile?"}],
                                               tokenize=False, add_generation_prompt=True)
        rows += [{"user_id": user, "prompt": prompt, "completion": c, "reward": r} for c, r in completions]
    return pd.DataFrame(rows)


def _trl_trainer(model, tokenizer, examples: list[dict], beta: float, tmp: Path):
    """A GRPOTrainer whose "generation" returns ``examples``' completions and whose reward is theirs."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def rollout(prompts: list[str], trainer) -> dict[str, list]:
        # Row i is sample i % G of group i // G: the generation batch lists each group's prompt G times in a row.
        picked = [examples[i // G] for i in range(len(prompts))]
        return {"prompt_ids": [e["prompt_ids"] for e in picked],
                "completion_ids": [e["completions"][i % G] for i, e in enumerate(picked)], "logprobs": None}

    def reward(prompts: list[str], completions: list[str], reward: list[float], **kwargs) -> list[float]:
        return reward

    # bf16=False: GRPOConfig's default autocasts the loss's forward to bfloat16, even on CPU.
    args = GRPOConfig(str(tmp / "trl"), loss_type="dapo", beta=beta, num_generations=G,
                      per_device_train_batch_size=G * len(examples), gradient_accumulation_steps=1, use_cpu=True,
                      bf16=False, report_to="none", save_strategy="no", seed=0)
    dataset = Dataset.from_dict({"prompt": [str(i) for i in range(len(examples))]})
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, rollout_func=rollout)
    if "ref" in trainer.model.peft_config:
        # TRL copies a handed PeftModel's adapter into a frozen "ref"; without it the reference is the base with the
        # adapter disabled, as ours (the two agree whenever the adapter starts as the identity).
        trainer.model.delete_adapter("ref")
    trainer.current_gradient_accumulation_steps = 1  # what `train()` sets for a step of one micro-batch
    return trainer


def _grads(model) -> dict[str, torch.Tensor]:
    return {n.replace(".default", ""): p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("share_prompt", "beta"), [(True, 0.0), (False, 0.0), (True, 0.2)])
def test_grpo_matches_trl_for_several_steps(tmp_path: Path, samples: pd.DataFrame, share_prompt: bool,
                                            beta: float) -> None:
    cache = tmp_path / "models"
    trl_model, tokenizer = parity_lora_model(cache)
    examples, _ = group_examples(samples, tokenizer, 4096, 4096)
    assert len(examples) == 3 and all(len(e["completions"]) == G for e in examples)
    trainer = _trl_trainer(trl_model, tokenizer, examples, beta, tmp_path)
    generation_batch = [{"prompt": str(i), "reward": r} for i, e in enumerate(examples) for r in e["rewards"]]

    model, _ = parity_lora_model(cache)
    module = GrpoModule(model, optimizer=lambda p: torch.optim.SGD(p, lr=LR), beta=beta, share_prompt=share_prompt)
    batch = collate(examples, range(len(examples)), tokenizer.pad_token_id)
    assert batch["prompt_ids"].shape[0] == 3 and batch["completion_ids"].shape[0] == 11  # one repeat scored once
    ours_opt = module.configure_optimizers()
    trl_opt = torch.optim.SGD([p for p in trainer.model.parameters() if p.requires_grad], lr=LR)
    trainer.model.train()
    model.train()

    for step in range(STEPS):
        inputs = trainer._generate_and_score_completions(generation_batch)
        torch.testing.assert_close(inputs["advantages"].view(-1, G), group_advantages(batch["rewards"]))
        trl_opt.zero_grad()
        trl_loss = trainer.compute_loss(trainer.model, inputs)
        trl_loss.backward()
        ours_opt.zero_grad()
        loss, metrics = module.step(batch)
        loss.backward()

        torch.testing.assert_close(loss.detach(), trl_loss.detach(), atol=1e-6, rtol=0, msg=f"step {step}")
        if beta:
            assert float(metrics["kl"]) == pytest.approx(trainer._metrics["train"]["kl"][-1], rel=1e-5)
            assert float(metrics["kl"]) > 1e-3  # the adapter is far from the base: a KL worth comparing
        ours, theirs = _grads(model), _grads(trainer.model)
        assert ours.keys() == theirs.keys()
        assert any(g.abs().max() > 1e-2 for g in ours.values())  # a gradient worth comparing
        for name, grad in ours.items():
            torch.testing.assert_close(grad, theirs[name], atol=1e-5, rtol=1e-4, msg=f"step {step}: {name}")
        trl_opt.step()
        ours_opt.step()
    moved = [(p - q).abs().max() for p, q in zip(
        (p for p in model.parameters() if p.requires_grad),
        (p for p in parity_lora_model(cache)[0].parameters() if p.requires_grad), strict=True)]
    assert max(moved) > 1e-2  # later steps compared at weights the earlier ones changed
