"""Model loading: tiny_random is reproducible and loadable by path, bad names fail clearly, the cache
builds a folder once and atomically, and (slow) each bundled model loads from its cache and generates."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lettingo.llm import bundled
from lettingo.llm.cache import materialize
from lettingo.llm.local import LocalBackend
from lettingo.llm.models import load_causal_lm, resolve_dtype, resolve_model_path, training_device


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tiny_random_is_the_same_for_a_seed_and_differs_across_seeds(tmp_path: Path) -> None:
    a, tok = load_causal_lm("tiny_random", tmp_path / "a")
    b, _ = load_causal_lm("tiny_random:0", tmp_path / "b")
    c, _ = load_causal_lm("tiny_random:1", tmp_path / "a")
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.layers.0.mlp.up_proj.weight"], wc["model.layers.0.mlp.up_proj.weight"])
    assert a.config.num_hidden_layers == 2 and a.config.hidden_size == 16
    assert tok.pad_token_id is not None and tok.padding_side == "left" and tok.chat_template


def test_tiny_random_loads_by_path_and_is_trainable(tmp_path: Path) -> None:
    path = resolve_model_path("tiny_random", tmp_path)
    assert path == tmp_path / "tiny_random-0" and (path / "config.json").is_file()
    model, tokenizer = load_causal_lm(str(path), tmp_path / "unused", dtype="float32")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    batch = tokenizer(["Toy Story 5/5", "Fargo"], return_tensors="pt", padding=True)
    before = model.lm_head.weight.detach().clone()
    model.train()
    loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.lm_head.weight)


def test_dtype_can_be_chosen(tmp_path: Path) -> None:
    model, _ = load_causal_lm("tiny_random", tmp_path, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_causal_lm("tiny_random", tmp_path, dtype="float99")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32)],
)
def test_auto_dtype_follows_native_bfloat16(monkeypatch, avx512_bf16: bool, amx: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cuda")) == torch.float16
    assert resolve_dtype(torch.float64, torch.device("cpu")) == torch.float64


def test_auto_dtype_is_what_load_causal_lm_loads(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    model, _ = load_causal_lm("tiny_random", tmp_path, device="cpu")
    assert model.dtype == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model, _ = load_causal_lm("tiny_random", tmp_path, device="cpu")
    assert model.dtype == torch.float32


@pytest.mark.parametrize(("accelerator", "gpu_visible", "expected"), [
    ("cpu", True, "cpu"), ("gpu", True, "cuda"), ("auto", True, "cuda"), ("cuda", False, "cpu"), ("auto", False, "cpu"),
])
def test_training_device_follows_the_accelerator(monkeypatch, accelerator: str, gpu_visible: bool, expected: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_visible)
    assert training_device(accelerator).type == expected


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        ("bundled:nope", ValueError, "unknown bundled model"),
        ("tiny_random:x", ValueError, "seed"),
        ("/no/such/folder", FileNotFoundError, "config.json"),
        ("a/b/c", FileNotFoundError, "nor a Hub id org/name"),  # Hub ids: tests/test_hub_models.py
    ],
)
def test_bad_model_names_fail_clearly(tmp_path: Path, model: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_model_path(model, tmp_path)


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def build(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        materialize(tmp_path / "model", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.lock"]


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    builds: list[int] = []

    def build(folder: Path) -> None:
        builds.append(1)
        time.sleep(0.2)
        (folder / "config.json").write_text("{}")

    threads = [threading.Thread(target=materialize, args=(tmp_path / "model", build)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and (tmp_path / "model" / "config.json").read_text() == "{}"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "chat"), [("smollm2_135m", True), ("gemma3_270m", False)])
def test_bundled_model_loads_from_its_cache_and_generates(
    bundled_model_cache: Path, name: str, chat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend(name, f"bundled:{name}", bundled_model_cache, lead_in="\n\nUser profile:\n")
    assert backend.chat == chat

    def cached_only(folder: Path, build: Callable[[Path], None]) -> Path:
        assert folder.is_dir(), f"{folder} is built (converted) again instead of loaded from the cache"
        return materialize(folder, build)

    monkeypatch.setattr(bundled, "materialize", cached_only)
    model, _ = load_causal_lm(f"bundled:{name}", bundled_model_cache)  # now from the converted folder
    assert model.dtype == resolve_dtype("auto", torch.device("cpu"))  # bfloat16 only where this CPU has it natively
    prompt = backend.render("The user rated Toy Story (1995) 5/5, Fargo (1996) 4/5 and Scream (1996) 1/5.")
    assert prompt.endswith("<|im_start|>assistant\n") if chat else prompt.endswith("User profile:\n")
    result = backend.generate([prompt], n=2, max_new_tokens=8, seed=0)
    assert all(1 <= g.completion_tokens <= 8 and g.text.strip() for g in result[0])
    assert texts_equal(result, backend.generate([prompt], n=2, max_new_tokens=8, seed=0))


def texts_equal(a: list, b: list) -> bool:
    return [[g.text for g in row] for row in a] == [[g.text for g in row] for row in b]


def test_random_init_builds_the_folders_config_with_random_weights(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    from lettingo.llm.tiny import tiny_random_dir

    tiny = tiny_random_dir(tmp_path / "cache")
    folder = tmp_path / "shape"
    LlamaConfig(vocab_size=600, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny / name).read_bytes())
    model, tokenizer = load_causal_lm(f"random_init:{folder}", "", dtype="float32", device="cpu")
    assert model.config.vocab_size == 600 and model.model.embed_tokens.weight.dtype == torch.float32
    assert not list(folder.glob("*.safetensors")) and tokenizer.pad_token is not None
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'none'}/config.json not found: 'random_init:"):
        resolve_model_path(f"random_init:{tmp_path / 'none'}", "")
