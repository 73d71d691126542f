"""VLLMBackend: one shared engine per model, LoRA adapters per request, chunked calls (against the fake
`vllm` module of fixtures_vllm.py, which records what it is asked), a clear error where vLLM is not
installed, and on a machine with vLLM (and a GPU) a real run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import Recorder, VLLMValidationError
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lettingo import runtime
from lettingo.llm import vllm_backend
from lettingo.llm.base import sample_seed
from lettingo.llm.models import resolve_model_path
from lettingo.llm.pool import BackendPool, engine_key, shared_engine_order
from lettingo.llm.vllm_backend import VLLMBackend, close_engines, engine_dtype

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def adapter_folder(root: Path, name: str) -> str:
    """A folder shaped like a PEFT adapter (the fake engine never reads it)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return str(folder)


@pytest.fixture
def generator_configs(compose_cfg, tiny_model_cache: Path, tmp_path: Path) -> dict[str, Any]:
    """What the test stage builds for backbone=vllm: the base, +dpo and +sft (the base merged with an adapter)."""
    cfg = compose_cfg(["backbone=vllm", "backbone.model=tiny_random", "backbone.name=gen",
                       f"paths.model_cache={tiny_model_cache}"])
    base = cfg.backbone
    adapters = {f"gen+{m}": OmegaConf.merge(base, {"name": f"gen+{m}", "adapter": adapter_folder(tmp_path, m)})
                for m in ("dpo", "sft")}
    return {"gen": base, **adapters}


def test_base_two_adapters_and_three_fixed_formats_share_one_engine(fake_vllm: Recorder, generator_configs) -> None:
    fixed_formats = ("palr", "rlmrec", "kar")
    with BackendPool(generator_configs) as pool:
        for name in fixed_formats:  # each fixed-format explore call: the base generator only
            backend = pool.subset(["gen"])["gen"]
            backend.generate([backend.render(f"{name} prompt")], n=1, temperature=0.0)
        lettingo_prompt = pool.subset(shared_engine_order(generator_configs))
        for name in lettingo_prompt:
            backend = lettingo_prompt[name]
            backend.generate([backend.render("user likes Toy Story")], n=2)
        assert fake_vllm.shutdowns == []  # switching views never stops the engine
    assert len(fake_vllm.engines) == 1 and vllm_backend.ENGINES.created == 1
    assert fake_vllm.shutdowns == [fake_vllm.engines[0]["model"]]  # leaving the pool frees the GPU
    loras = [call["lora"] for call in fake_vllm.calls]
    assert loras[:4] == [None, None, None, None]  # three fixed formats, then the base: no adapter
    dpo, sft = loras[4], loras[5]
    assert (dpo.lora_name, dpo.lora_int_id, Path(dpo.lora_path).name) == ("gen+dpo", 1, "dpo")
    assert (sft.lora_name, sft.lora_int_id, Path(sft.lora_path).name) == ("gen+sft", 2, "sft")
    assert [call["sequences"] for call in fake_vllm.calls] == [1, 1, 1, 2, 2, 2]


def test_engine_gets_lora_support_prefix_caching_and_the_configured_sizes(fake_vllm: Recorder,
                                                                         generator_configs) -> None:
    config = OmegaConf.merge(generator_configs["gen"], {"max_loras": 3, "max_lora_rank": 16, "dtype": "bfloat16"})
    instantiate(config)
    kwargs = fake_vllm.engines[0]
    assert kwargs["enable_lora"] is True and kwargs["enable_prefix_caching"] is True
    assert (kwargs["max_loras"], kwargs["max_lora_rank"], kwargs["dtype"]) == (3, 16, "bfloat16")
    assert kwargs["model"] == kwargs["tokenizer"] and Path(kwargs["model"]).is_dir()
    assert "max_num_seqs" not in kwargs  # null: vLLM's own default
    close_engines()


def test_prompts_go_in_chunks_of_sequences_per_call_with_per_sample_seeds(fake_vllm: Recorder,
                                                                           generator_configs) -> None:
    backend = instantiate(OmegaConf.merge(generator_configs["gen+dpo"], {"sequences_per_call": 5}))
    prompts = [backend.render(f"user {i}") for i in range(3)]
    result = backend.generate(prompts, n=4, seed=7)
    assert [call["sequences"] for call in fake_vllm.calls] == [5, 5, 2]
    assert all(call["n"] == {1} and call["lora"].lora_int_id == 1 for call in fake_vllm.calls)
    expected = [sample_seed(7, p, j) for p in prompts for j in range(4)]
    assert [s for call in fake_vllm.calls for s in call["seeds"]] == expected
    assert [[g.text for g in row] for row in result] == [
        [f"seed={sample_seed(7, p, j)} lora=1" for j in range(4)] for p in prompts]
    assert all(g.prompt_tokens == backend.count_tokens(p) for p, row in zip(prompts, result, strict=True) for g in row)
    close_engines()


def test_another_model_replaces_the_live_engine_and_the_order_groups_each_model(
    fake_vllm: Recorder, generator_configs, compose_cfg, tiny_model_cache: Path
) -> None:
    other = compose_cfg(["backbone=vllm", "backbone.model=tiny_random:1", "backbone.name=other",
                         f"paths.model_cache={tiny_model_cache}"]).backbone
    api = compose_cfg(["backbone=openai"]).backbone
    configs = {"gen": generator_configs["gen"], "other": other, "api": api,
               "gen+dpo": generator_configs["gen+dpo"], "gen+sft": generator_configs["gen+sft"]}
    order = shared_engine_order(configs)
    assert order == ["gen", "gen+dpo", "gen+sft", "other", "api"]
    with BackendPool({name: configs[name] for name in order if name != "api"}) as pool:
        for name in pool:
            pool[name].generate(["x"], n=1)
    assert [Path(kwargs["model"]).name for kwargs in fake_vllm.engines] == ["tiny_random-0", "tiny_random-1"]
    assert [Path(model).name for model in fake_vllm.shutdowns] == ["tiny_random-0", "tiny_random-1"]


def test_a_view_is_cheap_and_dead_after_close_engines(fake_vllm: Recorder, generator_configs) -> None:
    first = instantiate(generator_configs["gen"])
    again = instantiate(generator_configs["gen+sft"])
    assert first.engine is again.engine and len(fake_vllm.engines) == 1
    first.close()
    assert fake_vllm.shutdowns == [] and again.generate(["x"], n=1)[0][0].text == "seed=" + str(
        sample_seed(0, "x", 0)) + " lora=1"
    close_engines()
    with pytest.raises(RuntimeError, match="engine was shut down"):
        again.generate(["x"])


def test_an_adapter_needs_an_engine_with_lora_support(fake_vllm: Recorder, generator_configs) -> None:
    with pytest.raises(Exception, match="enable_lora: true"):
        instantiate(OmegaConf.merge(generator_configs["gen+dpo"], {"enable_lora": False}))
    assert "max_loras" not in fake_vllm.engines[0] and fake_vllm.engines[0]["enable_lora"] is False
    close_engines()


def test_auto_and_the_dtype_it_resolves_to_share_one_engine_and_one_place_in_the_order(
    fake_vllm: Recorder, generator_configs
) -> None:
    auto = generator_configs["gen"]
    named = OmegaConf.merge(generator_configs["gen+dpo"], {"dtype": "bfloat16"})
    assert auto.dtype == "auto" and engine_key(auto) == engine_key(named)
    assert shared_engine_order({"gen": auto, "other": OmegaConf.merge(auto, {"dtype": "float16"}),
                                "gen+dpo": named}) == ["gen", "gen+dpo", "other"]
    assert instantiate(auto).engine is instantiate(named).engine
    # the float32 checkpoint of tiny_random runs in bfloat16 on the H100 of the fixture, and vLLM is told so
    assert len(fake_vllm.engines) == 1 and fake_vllm.engines[0]["dtype"] == "bfloat16"
    close_engines()


def write_config(folder: Path, **config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("checkpoint", "capability", "expected"), [
    ({"torch_dtype": "bfloat16"}, (9, 0), "bfloat16"),  # the checkpoint's own dtype
    ({"dtype": "float16"}, (8, 0), "float16"),
    ({"dtype": "float32"}, (9, 0), "bfloat16"),  # float32 checkpoints are downcast to the first supported dtype
    ({}, (8, 6), "bfloat16"),  # no dtype named: float32
    ({"torch_dtype": "bfloat16"}, (7, 5), "float16"),  # Turing has no bfloat16: vLLM falls back
    ({"text_config": {"dtype": "bfloat16"}}, None, "bfloat16"),  # without CUDA: vLLM's CPU platform
])
def test_auto_resolves_as_vllm_resolves_it(tmp_path: Path, checkpoint: dict, capability, expected: str) -> None:
    folder = write_config(tmp_path / "model", **checkpoint)
    assert engine_dtype("auto", folder, capability) == expected
    assert engine_dtype("half", folder, capability) == "float16"
    assert engine_dtype("BFloat16", folder, None) == "bfloat16"
    with pytest.raises(ValueError, match=r"^dtype: unknown vLLM dtype 'fp8'; known: auto, half"):
        engine_dtype("fp8", folder, capability)


def test_a_missing_model_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"^{tmp_path}/config.json: cannot read the model's config"):
        engine_dtype("auto", tmp_path, (9, 0))


def test_an_engine_start_first_frees_the_accelerator(fake_vllm: Recorder, generator_configs,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(runtime, "_RELEASERS", [lambda: calls.append("released")])
    monkeypatch.setattr(runtime, "free_accelerator_cache", lambda: calls.append("freed"))
    instantiate(generator_configs["gen"])
    assert calls == ["released", "freed"] and len(fake_vllm.engines) == 1
    instantiate(generator_configs["gen+dpo"])  # the live engine: nothing to free
    assert calls == ["released", "freed"]
    close_engines()


def test_release_accelerator_memory_shuts_the_engines_down(fake_vllm: Recorder, generator_configs) -> None:
    backend = instantiate(generator_configs["gen"])
    runtime.release_accelerator_memory()  # what the runner calls at the end of each stage
    assert fake_vllm.shutdowns == [fake_vllm.engines[0]["model"]] and backend.engine.llm is None
    runtime.release_accelerator_memory()  # nothing left: a no-op
    assert len(fake_vllm.shutdowns) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": 2.5}, r"^temperature must be in \[0, 2\], got 2.5. \(parameter=temperature, value=2.5\)$"),
    ({"temperature": -0.1}, r"^temperature must be non-negative, got -0.1."),
    ({"max_tokens": 0}, r"^max_tokens must be at least 1, got 0."),
    ({"n": 0}, r"^n must be at least 1, got 0.$"),
    ({"n": 2, "temperature": 0.0}, r"^n must be 1 when using greedy sampling, got 2.$"),
    ({"logprobs": -2}, r"^logprobs must be non-negative or -1, got -2."),
])
def test_the_fake_refuses_the_sampling_params_vllm_refuses(fake_vllm: Recorder, kwargs: dict, message: str) -> None:
    with pytest.raises(VLLMValidationError, match=message):
        sys.modules["vllm"].SamplingParams(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"logprobs": 2, "logprob_token_ids": [1, 2, 3]},
     r"^When both logprobs and logprob_token_ids are set, logprobs must equal len\(logprob_token_ids\)\. "
     r"Got logprobs=2, len\(logprob_token_ids\)=3\."),
    ({"logprob_token_ids": list(range(129))},
     r"^Requested logprob_token_ids of length 129, which is greater than max allowed: 128"),
    ({"logprobs": 2, "logprob_token_ids": [5, 512]},
     r"^token_id\(s\) \[512\] in logprob_token_ids contain out-of-vocab token ids\. Vocabulary size: 512"),
    ({"logprob_token_ids": [-1]}, r"^token_id\(s\) \[-1\] in logprob_token_ids contain out-of-vocab"),
    ({"logprobs": 21}, r"^Requested sample logprobs of 21, which is greater than max allowed: 20"),
    ({"logprobs": -1}, r"^Requested sample logprobs of 512, which is greater than max allowed: 20"),
])
def test_the_fake_engine_refuses_the_requests_vllm_refuses(fake_vllm: Recorder, tiny_model_cache: Path,
                                                           kwargs: dict, message: str) -> None:
    vllm = sys.modules["vllm"]
    path = str(resolve_model_path("tiny_random", tiny_model_cache))  # vocab_size 512
    llm = vllm.LLM(model=path, tokenizer=path)
    params = vllm.SamplingParams(max_tokens=1, **kwargs)  # accepted when built, refused when the engine takes it
    with pytest.raises(VLLMValidationError, match=message):
        llm.generate([{"prompt_token_ids": [1, 2]}], params, use_tqdm=False)
    assert fake_vllm.calls == []
    llm.generate([{"prompt_token_ids": [1, 2]}], vllm.SamplingParams(max_tokens=1, logprobs=3,
                                                                      logprob_token_ids=[0, 7, 511]), use_tqdm=False)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here, so there is no missing-package error to check")
def test_without_vllm_construction_explains_what_to_do(tiny_model_cache) -> None:  # noqa: F811
    with pytest.raises(ImportError, match=r"backbone=vllm needs the `vllm` package"):
        VLLMBackend("vllm", "tiny_random", tiny_model_cache)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (GPU machines: pip install 'lettingo[vllm]')")
def test_vllm_generates_seeded_samples_in_order(tiny_model_cache) -> None:  # noqa: F811
    backend = VLLMBackend("vllm", "tiny_random", tiny_model_cache, gpu_memory_utilization=0.3, max_model_len=512,
                          enable_lora=False)
    try:
        prompts = [backend.render(f"user {i} likes Toy Story") for i in range(3)]
        first = backend.generate(prompts, n=2, max_new_tokens=6, seed=4)
        assert [len(row) for row in first] == [2, 2, 2]
        assert all(g.prompt_tokens == backend.count_tokens(p)
                   for p, row in zip(prompts, first, strict=True) for g in row)
        again = backend.generate(prompts[::-1], n=2, max_new_tokens=6, seed=4)[::-1]
        assert [[g.text for g in row] for row in again] == [[g.text for g in row] for row in first]
    finally:
        close_engines()
