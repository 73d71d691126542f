"""GRPO on the tiny model: advantages and loss by hand, group examples, its config node, a Lightning fit,
and a toy task on which GRPO raises a rule reward of the completions it samples itself."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import lettingo
from lettingo.align.adapters import attach_lora
from lettingo.align.data import AlignDataModule, collate
from lettingo.align.grpo import GrpoModule, group_advantages, group_examples, grpo_loss
from lettingo.llm.decoding import PromptBatch, sample
from lettingo.llm.models import load_causal_lm
from lettingo.llm.padding import pad_sequences

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _model(cache: Path, lora: dict = LORA):
    model, tokenizer = load_causal_lm("tiny_random", cache, dtype="float32")
    torch.manual_seed(0)
    return attach_lora(model, lora), tokenizer


def _render(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def _samples(tokenizer) -> pd.DataFrame:
    rows = [("1", "Toy Story (1995) 5 of 5.", ["Likes animation.", "Toy Story.", "Rates 4.5 on average."],
             [1.0, 0.0, 0.5]),
            ("2", "Alien (1979) 1 of 5, Fargo (1996) 4 of 5.", ["Dislikes horror.", "Fargo", "Likes crime."],
             [0.2, 0.2, 0.2]),
            ("3", "Titanic (1997) 3 of 5.", ["Neutral on romance.", "x", "Titanic Titanic"], [0.9, -1.0, 0.1])]
    return pd.DataFrame([{"user_id": u, "prompt": _render(tokenizer, p), "completion": c, "reward": r}
                         for u, p, completions, rewards in rows for c, r in zip(completions, rewards, strict=True)])


def test_advantages_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [2.0, 2.0, 2.0, 6.0]])
    std = torch.tensor([[(1 / 3) ** 0.5], [2.0]])  # unbiased: sqrt(sum of squares / (G - 1))
    centred = torch.tensor([[0.5, -0.5, 0.5, -0.5], [-1.0, -1.0, -1.0, 3.0]])
    torch.testing.assert_close(group_advantages(rewards), centred / (std + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, "none"), centred)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, "batch")


def test_loss_is_the_token_mean_policy_gradient() -> None:
    """On-policy the loss is -sum(A_i * tokens_i) / tokens, and its gradient -A_i / tokens at each valid token."""
    logps = torch.tensor([[[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]]], requires_grad=True)
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]]])
    advantages = torch.tensor([[1.0, -2.0]])
    loss, metrics = grpo_loss(logps, mask, advantages)
    assert float(loss) == pytest.approx(-(1.0 * 2 - 2.0 * 1) / 3) and metrics == {}
    loss.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[[-1 / 3, -1 / 3, 0.0], [2 / 3, 0.0, 0.0]]]))
    reference = torch.zeros_like(logps)
    with_kl, metrics = grpo_loss(logps, mask, advantages, reference, beta=0.5)
    kl = torch.exp(-logps.detach()) + logps.detach() - 1  # k3 estimate of KL(policy || reference) per token
    assert float(metrics["kl"]) == pytest.approx(float((kl * mask).sum() / 3))
    assert float(with_kl) == pytest.approx(float(loss) + 0.5 * float(metrics["kl"]))
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logps, mask, advantages, beta=0.5)


def test_group_examples_drop_flat_groups_and_refuse_ragged_ones(tmp_path: Path) -> None:
    _, tokenizer = load_causal_lm("tiny_random", tmp_path / "models")
    samples = _samples(tokenizer)
    examples, cut = group_examples(samples, tokenizer, 512, 64)
    assert len(examples) == 2 and cut.examples == 2  # user 2's rewards are all equal: no signal
    assert [e["rewards"] for e in examples] == [[1.0, 0.0, 0.5], [0.9, -1.0, 0.1]]
    assert all(len(e["completions"]) == 3 and e["completions"][0][-1] == tokenizer.eos_token_id for e in examples)
    batch = collate(examples, [0, 1], tokenizer.pad_token_id)
    assert batch["rewards"].shape == (2, 3) and batch["completion_rows"].shape == (2, 3)
    with pytest.raises(ValueError, match="group sizes"):
        group_examples(samples.iloc[:-1], tokenizer, 512, 64)
    with pytest.raises(ValueError, match="non-finite 'reward'"):
        group_examples(samples.assign(reward=[None] + [0.0] * (len(samples) - 1)), tokenizer, 512, 64)
    with pytest.raises(ValueError, match="lack the columns"):
        group_examples(samples.drop(columns="reward"), tokenizer, 512, 64)


def test_config_node_builds_the_module(tmp_path: Path) -> None:
    node = OmegaConf.load(Path(lettingo.__file__).parent / "conf" / "align" / "method" / "grpo.yaml")
    cfg = OmegaConf.create({"align": {"share_prompt": False, "method": {"grpo": node}}})
    assert cfg.align.method.grpo.examples == "group"
    model, _ = _model(tmp_path / "models")
    module = instantiate(cfg.align.method.grpo.module)(model)
    assert isinstance(module, GrpoModule) and module.beta == 0.0 and module.share_prompt is False
    assert isinstance(module.configure_optimizers(), torch.optim.AdamW)


def test_lightning_fit_trains_only_the_adapter(tmp_path: Path) -> None:
    model, tokenizer = _model(tmp_path / "models")
    examples, _ = group_examples(_samples(tokenizer), tokenizer, 512, 64)
    data = AlignDataModule(examples, examples[:1], 1, tokenizer.pad_token_id)
    module = GrpoModule(model, lambda p: torch.optim.Adam(p, lr=5e-2), beta=0.1, sft_weight=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4
    logged = trainer.callback_metrics
    assert {"align/val/loss", "align/val/kl", "align/val/sft_loss", "align/val/reward/mean"} <= set(logged)
    assert float(logged["align/val/kl"]) > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_grpo_raises_a_rule_reward_on_its_own_samples(tmp_path: Path) -> None:
    """Toy task: reward = share of a completion's tokens in a target set (1/8 of the vocabulary). Each round
    samples G completions per prompt from the current adapter and takes one GRPO step on them; the mean
    reward of fresh samples (fixed seeds) and the probability mass of the target set must rise."""
    # Every linear layer adapted: the 2-layer, 16-wide model moves its output distribution slowly through q/v alone.
    model, tokenizer = _model(tmp_path / "models", LORA | {"target_modules": ["q_proj", "v_proj", "o_proj", "up_proj",
                                                                             "down_proj"]})
    target = torch.arange(64, 128)
    prompts = [_render(tokenizer, f"User {u} rated Toy Story (1995) {u} of 5.") for u in range(1, 5)]
    ids, mask = pad_sequences([tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
                              tokenizer.pad_token_id, side="left")
    eos, group, length = tokenizer.eos_token_id, 8, 6

    def rollouts(n: int, seed: int) -> list[list[int]]:
        model.eval()
        return sample(model, PromptBatch(ids, mask), n, range(seed, seed + len(prompts) * n), 1.0, length, [eos])

    def reward(tokens: list[int]) -> float:
        return sum(t in target for t in tokens) / max(1, len(tokens))

    @torch.no_grad()
    def target_mass() -> float:
        model.eval()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        probs = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].softmax(-1)
        return float(probs[:, target].sum(-1).mean())

    def mean_reward() -> float:
        completions = rollouts(16, seed=10_000)
        return sum(map(reward, completions)) / len(completions)

    module = GrpoModule(model, lambda p: torch.optim.Adam(p, lr=1e-1))
    optimizer = module.configure_optimizers()
    before_reward, before_mass = mean_reward(), target_mass()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for round_ in range(12):
        completions = rollouts(group, seed=round_ * 1_000)
        groups = [completions[i * group:(i + 1) * group] for i in range(len(prompts))]
        examples = [{"prompt_ids": ids[i][mask[i].bool()].tolist(),
                     "completions": [c + [eos] if len(c) < length else c for c in g],  # EOS where it stopped
                     "rewards": [reward(c) for c in g]} for i, g in enumerate(groups)]
        examples = [e for e in examples if len(set(e["rewards"])) > 1]
        model.train()
        optimizer.zero_grad()
        module.step(collate(examples, range(len(examples)), tokenizer.pad_token_id))[0].backward()
        optimizer.step()
    assert target_mass() > 2 * before_mass  # measured: 0.077 -> 0.25
    assert mean_reward() > before_reward + 0.05  # measured: 0.125 -> 0.21
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
