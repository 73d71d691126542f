"""DPO and SFT modules on the tiny model: what a step changes, which way the loss and margin move,
and a saved adapter generating exactly what it generated before saving."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from lettingo.align.adapters import adapter_backend, attach_lora, save_adapter
from lettingo.align.data import batch_loader, collate, positive_examples, preference_examples
from lettingo.align.dpo import DpoModule, attach_reference_logps, dpo_loss
from lettingo.align.sft import SftModule
from lettingo.llm.decoding import PromptBatch, sample
from lettingo.llm.models import load_causal_lm

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "models"


def _pairs(tokenizer) -> pd.DataFrame:
    def render(text: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)

    return pd.DataFrame({
        "user_id": ["1", "1", "2", "3"],
        "prompt": [render("Toy Story (1995) 5 of 5. Write a profile.")] * 2
        + [render("Alien (1979) 1 of 5, Fargo (1996) 4 of 5."), render("Titanic (1997) 3 of 5.")],
        "chosen": ["Likes crime dramas.", "Likes crime dramas.", "Dislikes horror.", "Neutral on romance."],
        "rejected": ["Likes horror.", "Star Wars.", "Rates comedies 5 of 5.", "Toy Story Toy Story."],
    })


def _model(cache: Path, seed: int = 0):
    model, tokenizer = load_causal_lm("tiny_random", cache, dtype="float32")
    torch.manual_seed(seed)
    return attach_lora(model, LORA), tokenizer


def _adam(params):
    return torch.optim.Adam(params, lr=5e-2)


def test_dpo_loss_by_hand() -> None:
    policy = torch.tensor([[-3.0, -5.0], [-4.0, -2.0]])
    reference = torch.tensor([[-4.0, -4.0], [-4.0, -4.0]])
    loss, rewards = dpo_loss(policy, reference, beta=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[0.5, -0.5], [0.0, 1.0]]))
    expected = (torch.nn.functional.softplus(torch.tensor(-1.0)) + torch.nn.functional.softplus(torch.tensor(1.0))) / 2
    torch.testing.assert_close(loss, expected)


def test_dpo_step_trains_only_the_adapter_and_widens_the_margin(cache: Path) -> None:
    model, tokenizer = _model(cache)
    examples, _ = preference_examples(_pairs(tokenizer), tokenizer, 512, 64)
    loader = batch_loader(examples, 2, tokenizer.pad_token_id, seed=0, shuffle=False)
    assert attach_reference_logps(model, examples, loader) == len(examples)
    assert attach_reference_logps(model, examples, loader) == 0  # once per dataset
    module = DpoModule(model, _adam, beta=0.1)
    batch = collate(examples, range(len(examples)), tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss, metrics = module.step(batch)
    # A fresh adapter is the identity: policy == reference, margin 0, loss log 2.
    assert float(metrics["rewards/margins"]) == pytest.approx(0.0, abs=1e-5)
    assert float(loss) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    optimizer = module.configure_optimizers()
    for _ in range(3):
        optimizer.zero_grad()
        module.step(batch)[0].backward()
        optimizer.step()
    after_loss, after = module.step(batch)
    assert float(after["rewards/margins"]) > 0.05
    assert float(after_loss) < float(loss)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def _moved_model(cache: Path):
    """The tiny model with an adapter that is no longer the identity (random LoRA B)."""
    model, tokenizer = _model(cache)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return model, tokenizer


def test_reference_on_the_fly_equals_precomputed(cache: Path) -> None:
    model, tokenizer = _moved_model(cache)
    examples, _ = preference_examples(_pairs(tokenizer), tokenizer, 512, 64)
    lazy = DpoModule(model, _adam, beta=0.1, precompute_reference=False)
    batch = collate(examples, range(len(examples)), tokenizer.pad_token_id)
    loss_lazy, metrics_lazy = lazy.step(batch)
    attach_reference_logps(model, examples, batch_loader(examples, 3, tokenizer.pad_token_id, seed=0, shuffle=False))
    loss_pre, metrics_pre = lazy.step(collate(examples, range(len(examples)), tokenizer.pad_token_id))
    torch.testing.assert_close(loss_lazy, loss_pre, atol=1e-5, rtol=0)
    assert float(metrics_lazy["rewards/chosen"]) == pytest.approx(float(metrics_pre["rewards/chosen"]), abs=1e-5)
    assert float(metrics_lazy["rewards/margins"]) != 0.0


def test_dpo_sft_term_adds_the_chosen_profiles_cross_entropy(cache: Path) -> None:
    model, tokenizer = _moved_model(cache)
    examples, _ = preference_examples(_pairs(tokenizer), tokenizer, 512, 64)
    batch = collate(examples, range(len(examples)), tokenizer.pad_token_id)
    plain, _ = DpoModule(model, _adam, beta=0.1, precompute_reference=False).step(batch)
    with_sft, metrics = DpoModule(model, _adam, beta=0.1, precompute_reference=False, sft_weight=0.5).step(batch)
    # The SFT term is SFT's loss on each pair's chosen profile (user 1's two pairs share theirs: counted per pair).
    chosen_only = [{"prompt_ids": e["prompt_ids"], "completions": e["completions"][:1]} for e in examples]
    sft = SftModule(model, _adam).step(collate(chosen_only, range(len(examples)), tokenizer.pad_token_id))[0]
    torch.testing.assert_close(metrics["sft_loss"], sft.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(with_sft, plain + 0.5 * sft, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sft_weight"):
        DpoModule(model, _adam, sft_weight=-1.0)


def test_sft_lowers_its_loss(cache: Path) -> None:
    model, tokenizer = _model(cache)
    examples, _ = positive_examples(_pairs(tokenizer), tokenizer, 512, 64)
    assert len(examples) == 3  # user 1's repeated chosen profile counts once
    module = SftModule(model, _adam)
    batch = collate(examples, range(len(examples)), tokenizer.pad_token_id)
    model.train()
    first = float(module.step(batch)[0])
    optimizer = module.configure_optimizers()
    for _ in range(5):
        optimizer.zero_grad()
        module.step(batch)[0].backward()
        optimizer.step()
    assert float(module.step(batch)[0]) < first - 0.1


def test_saved_adapter_reloads_and_generates_the_same(cache: Path, tmp_path: Path, compose_cfg) -> None:
    model, tokenizer = _model(cache)
    with torch.no_grad():  # a clearly non-identity adapter, so it changes what is generated
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 1.0)
    model.eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Toy Story (1995) 5 of 5."}], tokenize=False,
                                           add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    stop = [tokenizer.eos_token_id]

    def greedy(m) -> str:
        tokens = sample(m, PromptBatch(ids, torch.ones_like(ids)), 1, [0], 0.0, 12, stop)[0]
        return tokenizer.decode(tokens, skip_special_tokens=True)

    before = greedy(model)
    with model.disable_adapter():
        base = greedy(model)
    assert before != base
    folder = save_adapter(model, tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()

    # float32 as the model above; `auto` may pick bfloat16 for generation on CPUs with native bf16
    cfg = compose_cfg(["backbone=tiny_random", f"paths.model_cache={cache}", "backbone.dtype=float32"])
    with adapter_backend(cfg.backbone, folder, dtype="float32") as backend:
        assert backend.render("Toy Story (1995) 5 of 5.") == prompt
        after = backend.generate([prompt], n=1, temperature=0.0, max_new_tokens=12)[0][0].text
    assert after == before


def test_adapter_backend_needs_an_adapter(tmp_path: Path, compose_cfg) -> None:
    cfg = compose_cfg(["backbone=tiny_random"])
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        adapter_backend(cfg.backbone, tmp_path)


@pytest.mark.parametrize(("dtype", "precision"), [("float32", "bf16-mixed"), ("bfloat16", "32-true")])
def test_precomputed_reference_matches_the_untrained_policy(cache: Path, dtype: str, precision: str) -> None:
    """In bfloat16 (autocast or weights) the reference is precomputed in the training batches under the
    training precision, so every first-epoch loss of the still-identity adapter is exactly log 2."""
    import lightning as L

    from lettingo.align.data import AlignDataModule

    model, tokenizer = load_causal_lm("tiny_random", cache, dtype=dtype, device="cpu")
    model = attach_lora(model, LORA)
    examples, _ = preference_examples(_pairs(tokenizer), tokenizer, 512, 64)
    data = AlignDataModule(examples, [], 2, tokenizer.pad_token_id)
    module = DpoModule(model, lambda p: torch.optim.SGD(p, lr=0.0), beta=0.1)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", precision=precision, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Record()])
    trainer.fit(module, datamodule=data)
    assert all("ref_logps" in e for e in examples)
    assert losses == [pytest.approx(0.6931472, abs=1e-6)] * 2
