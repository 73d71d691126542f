"""Trainable f_Recs on tiny models: a step changes the trainable weights and lowers the loss; checkpoints; data."""

from __future__ import annotations

import copy
import logging
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.data.schema import LABELS
from lettingo.llm.models import resolve_dtype
from lettingo.recommender.base import RecClassifierModule, logged_key
from lettingo.recommender.cases import RecCase, label_codes, shifted_cases
from lettingo.recommender.cross_encoder import CrossEncoderModule
from lettingo.recommender.llm import LoraLLMModule, lora_base_dtype
from lettingo.recommender.training import (
    RecDataModule,
    balanced_class_weights,
    check_select_by,
    fit,
    load_checkpoint,
    split_users,
    training_cases,
)

ITEM_TEXT = {"max_chars": 120, "review_chars": 0}
LABEL_WORDS = {"like": "like", "neutral": "neutral", "dislike": "dislike"}
def item(i: int, rating: float) -> dict:
    label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
    return {"item_id": str(i), "title": f"Movie {i} (1995)", "attributes": ["Drama"], "rating": float(rating),
            "label": label, "text": ""}


def fixed_batch() -> list[RecCase]:
    """Six cases, two of each label, with profiles that name the label."""
    cases = []
    for n, (rating, word) in enumerate([(5, "likes"), (1, "dislikes"), (3, "neutral")] * 2):
        recent = tuple(item(100 * n + j, 1 + (n + j) % 5) for j in range(3))
        cases.append(RecCase(str(n), f"profile {word} drama", recent, item(n, rating)))
    return cases


def make_cross_encoder(folder: Path, max_length: int = 64) -> CrossEncoderModule:
    cfg = OmegaConf.load(f"{CONFIG_DIR}/recommender/cross_encoder.yaml").model
    return CrossEncoderModule(
        name="cross_encoder", model=str(folder), optimizer=partial(torch.optim.AdamW, lr=1e-2), context=cfg.context,
        profile=cfg.profile, empty_profile=cfg.empty_profile, item_text=ITEM_TEXT, max_length=max_length, dropout=0.0,
    )


def make_lora(tmp_path: Path, dtype: str = "float32") -> LoraLLMModule:
    prompt = OmegaConf.load(f"{CONFIG_DIR}/recommender/shared/llm_prompt.yaml")
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    torch.manual_seed(0)
    return LoraLLMModule(name="llm_lora", model="tiny_random", cache_dir=tmp_path, optimizer=partial(
        torch.optim.AdamW, lr=1e-2), lora=lora, prompt=prompt, label_words=LABEL_WORDS, item_text=ITEM_TEXT,
        dtype=dtype)


def trainable(module: RecClassifierModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def step_changes_weights_and_lowers_loss(module: RecClassifierModule) -> None:
    batch = module.collate(fixed_batch())
    before = trainable(module)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    optimizer = module.configure_optimizers()
    module.train()
    with torch.no_grad():
        first = module.loss(batch).item()
    for _ in range(5):
        optimizer.zero_grad()
        module.loss(batch).backward()
        optimizer.step()
    with torch.no_grad():
        last = module.loss(batch).item()
    assert last < first
    after = trainable(module)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.equal(p, dict(module.named_parameters())[n]) for n, p in frozen.items())


def test_cross_encoder_step_changes_weights_and_lowers_loss(tiny_bert) -> None:
    module = make_cross_encoder(tiny_bert)
    assert all(p.requires_grad for p in module.parameters())
    step_changes_weights_and_lowers_loss(module)


def test_cross_encoder_counts_the_pairs_it_cuts_and_warns_once(tiny_bert, caplog) -> None:
    module = make_cross_encoder(tiny_bert, max_length=96)
    assert module.cut_share() is None
    short = fixed_batch()
    lengths = [len(module.tokenizer(*module.texts(c))["input_ids"]) for c in short]
    assert max(lengths) <= 96  # the fixed cases fit
    module.collate(short)
    assert module.cut_share() == 0.0 and "longer than max_length" not in caplog.text
    long = [RecCase(c.user_id, c.profile + " and drama" * 40, c.recent, c.target) for c in short[:2]]
    with caplog.at_level(logging.WARNING, logger="lettingo.recommender.cross_encoder"):
        batch = module.collate(long)
        module.collate(long)
    assert batch["input_ids"].shape[1] == 96
    assert module.pairs_seen == 10 and module.pairs_cut == 4 and module.cut_share() == pytest.approx(0.4)
    warnings = [r.getMessage() for r in caplog.records if "longer than max_length" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("cross_encoder: 2 of 2 pairs of a batch are longer than "
                                                         "max_length=96 tokens"), warnings


def test_cross_encoder_refuses_a_max_length_its_encoder_cannot_read(tiny_bert) -> None:
    cfg = OmegaConf.load(f"{CONFIG_DIR}/recommender/cross_encoder.yaml").model
    with pytest.raises(ValueError, match=r"^recommender.model.max_length=512: this encoder reads 1 to 256 tokens$"):
        CrossEncoderModule(name="cross_encoder", model=str(tiny_bert), optimizer=torch.optim.AdamW,
                           context=cfg.context, profile=cfg.profile, empty_profile=cfg.empty_profile,
                           item_text=ITEM_TEXT, max_length=512)


def test_lora_step_trains_only_the_adapter_and_lowers_loss(tmp_path) -> None:
    module = make_lora(tmp_path)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    step_changes_weights_and_lowers_loss(module)


def test_lora_base_is_bfloat16_where_it_trains_on_cuda_and_its_adapter_float32(tmp_path, monkeypatch) -> None:
    assert OmegaConf.load(f"{CONFIG_DIR}/recommender/llm_lora.yaml").model.dtype == "auto"
    assert lora_base_dtype("float32") == torch.float32 and lora_base_dtype("bfloat16") == torch.bfloat16
    assert lora_base_dtype() == resolve_dtype("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # where Lightning's gpu accelerator trains it
    assert lora_base_dtype() == torch.bfloat16
    module = make_lora(tmp_path, dtype="auto")
    monkeypatch.undo()
    frozen = {p.dtype for p in module.lm.parameters() if not p.requires_grad}
    adapter = {p.dtype for p in module.lm.parameters() if p.requires_grad}
    assert (frozen, adapter) == ({torch.bfloat16}, {torch.float32})  # PEFT upcasts the adapter
    assert next(module.lm.parameters()).device.type == "cpu"  # Lightning moves it
    step_changes_weights_and_lowers_loss(module)  # and it trains (here in bfloat16 on the CPU)


def test_lora_predict_matches_its_training_logits(tmp_path) -> None:
    module = make_lora(tmp_path)
    cases = fixed_batch()
    module.eval()
    with torch.no_grad():
        expected = torch.softmax(module.logits(module.collate(cases)), -1).numpy()
    np.testing.assert_allclose(module.predict(cases), expected, atol=1e-5)


def test_cross_encoder_truncates_the_recent_items_not_the_target(tiny_bert) -> None:
    module = make_cross_encoder(tiny_bert)
    case = fixed_batch()[0]
    long = RecCase(case.user_id, "drama " * 200, tuple(item(j, 4) for j in range(30)), case.target)
    ids = module.collate([long])["input_ids"][0].tolist()
    assert len(ids) == 64
    text = module.tokenizer.decode(ids)
    assert "predict" in text and "movie 0" in text.replace("  ", " ")


def test_fit_keeps_the_best_checkpoint_with_only_trainable_state(tmp_path, tiny_bert) -> None:
    module = make_cross_encoder(tiny_bert)
    cases = fixed_batch()
    data = RecDataModule(cases, cases, module.collate, batch_size=3, balance="class_weights", seed=0)
    make_trainer = partial(L.Trainer, accelerator="cpu", max_epochs=3, enable_progress_bar=False,
                           enable_model_summary=False, default_root_dir=tmp_path, log_every_n_steps=1)
    result = fit(module, data, make_trainer, tmp_path / "ckpt", patience=2)
    assert result.checkpoint == tmp_path / "ckpt" / "best.ckpt" and result.checkpoint.exists()
    assert 0 <= result.val_score <= 1 and result.steps > 0
    restored = make_cross_encoder(tiny_bert)
    load_checkpoint(restored, result.checkpoint)
    np.testing.assert_allclose(restored.predict(cases), module.predict(cases), atol=1e-6)


class ValidationLosses(L.Callback):
    """Records the validation loss of every epoch."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics[logged_key("val", "loss")]))


def test_fit_by_validation_loss_keeps_the_epoch_of_the_lowest_loss(tmp_path, tiny_bert) -> None:
    module = make_cross_encoder(tiny_bert)
    cases = fixed_batch()
    data = RecDataModule(cases, cases, module.collate, batch_size=3, balance="none", seed=0)
    seen = ValidationLosses()

    def make_trainer(callbacks: list, **kwargs) -> L.Trainer:
        return L.Trainer(accelerator="cpu", max_epochs=3, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, log_every_n_steps=1, callbacks=[seen, *callbacks], **kwargs)

    result = fit(module, data, make_trainer, tmp_path / "ckpt", patience=3, select_by="loss")
    assert len(seen.losses) == 3
    assert result.val_score == pytest.approx(min(seen.losses))
    with pytest.raises(ValueError, match="select_by=f1: choose one of macro_f1, accuracy, loss"):
        check_select_by("f1")


def test_lora_checkpoint_holds_the_adapter_not_the_base_model(tmp_path) -> None:
    module = make_lora(tmp_path)
    state = module.trainable_state()
    assert state and all("lora_" in k or k == "class_weights" for k in state)
    fresh = make_lora(tmp_path)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.5)
    fresh.load_trainable_state(copy.deepcopy(module.trainable_state()))
    np.testing.assert_allclose(fresh.predict(fixed_batch()), module.predict(fixed_batch()), atol=1e-6)
    with pytest.raises(ValueError, match="do not belong"):
        fresh.load_trainable_state({"not_a_parameter": torch.zeros(1)})


def sample(user: str, ratings: list[float], recent: int = 3) -> dict:
    items = [item(i, r) for i, r in enumerate(ratings)]
    return {"user_id": user, "older": items[: -recent - 1], "recent": items[-recent - 1 : -1], "target": items[-1]}


def test_shifted_cases_move_the_target_back_without_leaking_it() -> None:
    s = sample("u", [1, 2, 3, 4, 5, 1, 2, 3], recent=3)
    cases = shifted_cases(s, "p", n_targets=10)
    # The real target, then the recent items; never an older item, which the profile may have read.
    assert [c.target["item_id"] for c in cases] == ["7", "6", "5", "4"]
    for case in cases:
        ids = [int(i["item_id"]) for i in case.recent]
        assert ids == list(range(int(case.target["item_id"]) - 3, int(case.target["item_id"])))
    assert len(shifted_cases(s, "p", n_targets=2)) == 2
    short = sample("v", [1, 2, 3, 4, 5], recent=3)  # one older item: K items fit before 2 targets only
    assert [c.target["item_id"] for c in shifted_cases(short, "p", n_targets=10)] == ["4", "3"]


def test_training_cases_empty_profile_rate_and_users_without_profiles() -> None:
    samples = pd.DataFrame([sample(f"u{i}", [1, 2, 3, 4, 5, 4, 3]) for i in range(40)])
    profiles = {f"u{i}": ["a", "b"] for i in range(39)}  # u39 has none
    cases = training_cases(samples, profiles, n_targets=2, empty_profile_rate=0.25, seed=1)
    assert len(cases) == 39 * 2 * 2 + 2
    empty = np.mean([c.profile == "" for c in cases if c.user_id != "u39"])
    assert 0.1 < empty < 0.4
    assert all(c.profile == "" for c in cases if c.user_id == "u39")
    assert training_cases(samples, profiles, 2, 0.25, seed=1) == cases  # seeded
    assert all(c.recent for c in cases)


def test_training_cases_can_drop_the_recent_items_but_never_the_profile_too() -> None:
    samples = pd.DataFrame([sample(f"u{i}", [1, 2, 3, 4, 5, 4, 3]) for i in range(40)])
    profiles = {f"u{i}": ["a"] for i in range(39)}
    cases = training_cases(samples, profiles, 2, empty_profile_rate=0.2, seed=0, empty_recent_rate=0.5)
    no_recent = [c for c in cases if not c.recent]
    assert all(c.profile == "a" for c in no_recent)  # the user is never left without any history
    assert 0.25 < len(no_recent) / len(cases) < 0.55  # about (1 - 0.2) * 0.5 of the cases
    with pytest.raises(ValueError, match="empty_recent_rate"):
        training_cases(samples, profiles, 2, 0.2, 0, empty_recent_rate=1.5)


def test_training_cases_drop_the_recent_items_of_oracle_fact_cases_too() -> None:
    samples = pd.DataFrame([sample(f"u{i}", [1, 2, 3, 4, 5, 4, 3]) for i in range(100)])
    oracle = {f"u{i}": f"facts of u{i}" for i in range(100)}
    cases = training_cases(samples, {}, 2, empty_profile_rate=0.5, seed=0, empty_recent_rate=0.5, oracle=oracle,
                           oracle_profile_rate=0.5)  # no generated profile: oracle facts or nothing
    no_recent = [c for c in cases if not c.recent]
    assert all(c.profile == f"facts of {c.user_id}" for c in no_recent)
    assert 0.15 < len(no_recent) / len(cases) < 0.35  # about 0.5 * 0.5 of the cases
    assert all(c.recent for c in training_cases(samples, {}, 2, 0.5, 0, oracle=oracle, oracle_profile_rate=0.5))


def test_training_cases_mix_generated_oracle_and_empty_profiles() -> None:
    samples = pd.DataFrame([sample(f"u{i}", [1, 2, 3, 4, 5, 4, 3]) for i in range(60)])
    profiles = {f"u{i}": ["generated"] for i in range(59)}  # u59 has no generated profile
    oracle = {f"u{i}": f"facts of u{i}" for i in range(60)}
    cases = training_cases(samples, profiles, 2, empty_profile_rate=0.3, seed=0, oracle=oracle,
                           oracle_profile_rate=0.3)
    kinds = [("empty" if not c.profile else "oracle" if c.profile.startswith("facts") else "generated")
             for c in cases]
    shares = {k: kinds.count(k) / len(cases) for k in ("empty", "oracle", "generated")}
    assert 0.2 < shares["empty"] < 0.4 and 0.2 < shares["oracle"] < 0.4 and 0.3 < shares["generated"] < 0.5
    assert all(c.profile == f"facts of {c.user_id}" for c, k in zip(cases, kinds, strict=True) if k == "oracle")
    assert {c.profile for c in cases if c.user_id == "u59"} <= {"", "facts of u59"}  # never another user's text
    # Without oracle cases the draws, and so the cases, are those of the old two-way mix.
    assert training_cases(samples, profiles, 2, 0.3, 0, oracle=oracle) == training_cases(samples, profiles, 2, 0.3, 0)
    with pytest.raises(ValueError, match="at most 1"):
        training_cases(samples, profiles, 2, 0.6, 0, oracle=oracle, oracle_profile_rate=0.5)
    with pytest.raises(ValueError, match="needs the users' oracle profiles"):
        training_cases(samples, profiles, 2, 0.3, 0, oracle_profile_rate=0.3)


def test_split_users_is_seeded_disjoint_and_complete() -> None:
    users = [f"u{i}" for i in range(10)]
    train, val = split_users(users, 0.2, seed=3)
    assert len(val) == 2 and set(train) | set(val) == set(users) and not set(train) & set(val)
    assert split_users(users, 0.2, seed=3) == (train, val)
    with pytest.raises(ValueError):
        split_users(["only"], 0.2, 0)


def test_class_weights_and_balanced_sampler() -> None:
    cases = [c for c in fixed_batch() if c.label != "neutral"] + [fixed_batch()[0]] * 6
    weights = balanced_class_weights(cases)
    counts = np.bincount(label_codes(cases), minlength=3)
    assert weights[LABELS.index("neutral")] == 0.0
    np.testing.assert_allclose([w * c for w, c in zip(weights, counts, strict=True) if c], len(cases) / 3)
    data = RecDataModule(cases * 50, cases, lambda b: b, batch_size=1000, balance="sampler", seed=0)
    drawn = next(iter(data.train_dataloader()))
    shares = np.bincount(label_codes(drawn), minlength=3) / len(drawn)
    assert abs(shares[0] - shares[2]) < 0.1  # like was 7x as frequent as dislike before balancing
    with pytest.raises(ValueError, match="balance"):
        RecDataModule(cases, cases, lambda b: b, 2, balance="oversample")
