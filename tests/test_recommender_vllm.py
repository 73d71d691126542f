"""VLLMLabelScorer (`recommender=llm_vllm`): the zero-shot label-word f_Rec on the shared vLLM engine.

Fast: against the fake `vllm` module of fixtures_vllm.py over tiny_random: one engine for a generator and
the f_Rec on the same model, exactly the in-process prompt tokens and the three label token ids asked
greedily for one token, the probabilities normalised over the three labels in case order, chunks of
`cases_per_call`, a restart after `close_engines`, and the refusals (log-probabilities after a mask, a vLLM
without `logprob_token_ids`, no vLLM). Slow, on a machine with vLLM and a GPU: agreement with ZeroShotLLM.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_vllm import Recorder, scripted_logprob
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_recommender_served import RECENT, item
from transformers import AutoTokenizer

from lettingo.llm import vllm_backend
from lettingo.llm.models import resolve_model_path
from lettingo.llm.vllm_backend import EngineSettings, close_engines
from lettingo.recommender.base import Recommender
from lettingo.recommender.cases import RecCase
from lettingo.recommender.llm_scoring import LabelWordScorer
from lettingo.recommender.loading import build_recommender
from lettingo.recommender.vllm_scorer import VLLMLabelScorer

HAS_VLLM = importlib.util.find_spec("vllm") is not None


CASES = [RecCase("u1", "Loves science fiction.", RECENT, item(3, "Alien (1979)", 2)),
         RecCase("u1", "", RECENT, item(3, "Alien (1979)", 2)),
         RecCase("u2", "Hates horror.", RECENT[:1], item(4, "Heat (1995)", 4)),
         RecCase("u3", "Westerns only.", RECENT, item(5, "Unforgiven (1992)", 3)),
         RecCase("u3", "Anything with Clint Eastwood.", RECENT, item(5, "Unforgiven (1992)", 3))]


@pytest.fixture
def fcfg(compose_cfg, tiny_model_cache: Path):
    """The composed `recommender=llm_vllm` on tiny_random (its `recommender` node), with overrides."""

    def _compose(*overrides: str):
        return compose_cfg(["recommender=llm_vllm", "recommender.model.model=tiny_random",
                            f"paths.model_cache={tiny_model_cache}", *overrides]).recommender

    return _compose


def in_process_scorer(rcfg, cache: Path) -> LabelWordScorer:
    """What ZeroShotLLM builds from the same config: the model folder's own tokenizer, prompt and label words."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny_random", cache))
    model = OmegaConf.to_container(rcfg.model, resolve=True)
    return LabelWordScorer.from_config(tokenizer, model["prompt"], model["item_text"], model["label_words"])


def softmax(row: list[float]) -> list[float]:
    weights = [math.exp(v - max(row)) for v in row]
    return [w / sum(weights) for w in weights]


def test_the_config_builds_an_f_rec_on_the_engine_a_generator_of_the_same_model_uses(
    fake_vllm: Recorder, fcfg, compose_cfg, tiny_model_cache: Path
) -> None:
    rcfg = fcfg()
    backbone = compose_cfg(["backbone=vllm", "backbone.model=tiny_random", f"paths.model_cache={tiny_model_cache}"])
    generator = instantiate(backbone.backbone)
    model = build_recommender(rcfg.model)
    assert isinstance(model, VLLMLabelScorer) and isinstance(model, Recommender) and rcfg.trainable is False
    assert len(fake_vllm.engines) == 1 and vllm_backend.ENGINES.created == 1
    assert vllm_backend.ENGINES.acquire(model.path, model.settings) is generator.engine
    generator.generate(["x"], n=1)
    model.predict(CASES[:2])
    assert [call["model"] for call in fake_vllm.calls] == [fake_vllm.engines[0]["model"]] * 2
    close_engines()


def test_the_f_rec_runs_on_the_live_engine_of_a_generator_of_the_same_model_and_dtype(
    fake_vllm: Recorder, fcfg, compose_cfg, tiny_model_cache: Path
) -> None:
    """The paper's generator names its dtype and a longer context (bfloat16, 8192); the f_Rec's defaults (auto,
    4096) resolve to the same dtype, and the longer context serves its prompts: one engine, the generator's."""
    backbone = compose_cfg(["backbone=vllm", "backbone.model=tiny_random", f"paths.model_cache={tiny_model_cache}",
                            "backbone.dtype=bfloat16", "backbone.max_model_len=8192", "backbone.max_loras=4"])
    generator = instantiate(backbone.backbone)
    model = instantiate(fcfg().model)
    model.predict(CASES[:1])
    assert len(fake_vllm.engines) == 1 and fake_vllm.engines[0]["max_model_len"] == 8192
    assert vllm_backend.ENGINES.acquire(model.path, model.settings, share=True) is generator.engine
    close_engines()


def test_the_f_rec_starts_its_own_engine_beside_a_shorter_context_or_another_dtype(
    fake_vllm: Recorder, fcfg, compose_cfg, tiny_model_cache: Path
) -> None:
    for override in ("backbone.max_model_len=1024", "backbone.dtype=float16"):
        backbone = compose_cfg(["backbone=vllm", "backbone.model=tiny_random",
                                f"paths.model_cache={tiny_model_cache}", override])
        instantiate(backbone.backbone)
        instantiate(fcfg().model)
    assert [(e["max_model_len"], e["dtype"]) for e in fake_vllm.engines] == [
        (1024, "bfloat16"), (4096, "bfloat16"), (4096, "float16"), (4096, "bfloat16")]
    assert len(fake_vllm.shutdowns) == 3  # one engine at a time
    close_engines()


def test_each_case_asks_greedily_for_one_token_and_the_three_label_token_ids(fake_vllm: Recorder, fcfg,
                                                                             tiny_model_cache: Path) -> None:
    rcfg = fcfg()
    model = instantiate(rcfg.model)
    model.predict(CASES)
    reference = in_process_scorer(rcfg, tiny_model_cache)
    (call,) = fake_vllm.calls
    assert call["lora"] is None and call["sequences"] == len(CASES)
    assert call["prompts"] == [p.ids for p in reference.encode(CASES)]  # exactly the in-process tokens
    for params in call["params"]:
        assert (params.n, params.max_tokens, params.temperature, params.detokenize) == (1, 1, 0.0, False)
        assert params.logprob_token_ids == reference.label_ids and params.logprobs == 3
    close_engines()


def test_probabilities_are_the_labels_shares_of_the_three_in_case_order(fake_vllm: Recorder, fcfg,
                                                                        tiny_model_cache: Path) -> None:
    rcfg = fcfg()
    model = instantiate(rcfg.model)
    reference = in_process_scorer(rcfg, tiny_model_cache)
    expected = [softmax([scripted_logprob(p.ids, t) for t in reference.label_ids]) for p in reference.encode(CASES)]
    probabilities = model.predict(CASES)
    assert probabilities.shape == (len(CASES), 3) and probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities, expected, rtol=1e-12)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert len({tuple(row) for row in expected}) > 1  # the cases differ, so the order is checked
    np.testing.assert_allclose(model.predict(CASES[::-1]), expected[::-1], rtol=1e-12)
    assert model.predict([]).shape == (0, 3)
    close_engines()


def test_cases_go_to_vllm_in_chunks_of_cases_per_call(fake_vllm: Recorder, fcfg) -> None:
    model = instantiate(fcfg("recommender.model.cases_per_call=2").model)
    whole = instantiate(fcfg().model).predict(CASES)
    fake_vllm.calls.clear()
    np.testing.assert_allclose(model.predict(CASES), whole)
    assert [call["sequences"] for call in fake_vllm.calls] == [2, 2, 1]
    with pytest.raises(Exception, match="cases_per_call must be at least 1"):  # Hydra wraps the ValueError
        instantiate(fcfg("recommender.model.cases_per_call=0").model)
    close_engines()


def test_after_close_engines_the_f_rec_starts_its_engine_again(fake_vllm: Recorder, fcfg) -> None:
    model = instantiate(fcfg().model)
    first = model.predict(CASES)
    close_engines()  # the end of a stage's generation
    np.testing.assert_allclose(model.predict(CASES), first)
    assert len(fake_vllm.engines) == 2 and len(fake_vllm.shutdowns) == 1
    close_engines()


def test_the_engine_settings_are_the_backbones(fake_vllm: Recorder, fcfg) -> None:
    instantiate(fcfg("recommender.model.max_model_len=1024", "recommender.model.dtype=bfloat16").model)
    kwargs = fake_vllm.engines[0]
    assert (kwargs["max_model_len"], kwargs["dtype"], kwargs["enable_lora"]) == (1024, "bfloat16", True)
    assert kwargs["enable_prefix_caching"] is True
    close_engines()
    with pytest.raises(TypeError, match=r"unknown vLLM engine settings \['max_lora'\]"):
        EngineSettings.from_values(max_lora=3)
    assert EngineSettings.from_values(max_model_len="1024", max_num_seqs=None) == EngineSettings(max_model_len=1024)


def test_log_probabilities_taken_after_a_mask_are_refused(fake_vllm: Recorder, fcfg) -> None:
    fake_vllm.logprob = lambda prompt, token: 0.0  # every asked token certain: not the model's distribution
    with pytest.raises(RuntimeError, match="summing to 3.000 > 1"):
        instantiate(fcfg().model).predict(CASES[:1])
    close_engines()


def test_a_vllm_without_logprob_token_ids_is_refused(fake_vllm: Recorder, fcfg, monkeypatch) -> None:
    class OldSamplingParams:
        def __init__(self, n: int = 1, temperature: float = 1.0, max_tokens: int = 16, logprobs: int | None = None,
                     detokenize: bool = True) -> None:
            pass

    model = instantiate(fcfg().model)
    monkeypatch.setattr(sys.modules["vllm"], "SamplingParams", OldSamplingParams)
    with pytest.raises(ImportError, match=r"needs vLLM >= 0\.20"):
        model.predict(CASES[:1])
    close_engines()


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here, so there is no missing-package error to check")
def test_without_vllm_construction_explains_what_to_do(fcfg) -> None:
    with pytest.raises(Exception, match=r"needs the `vllm` package"):  # Hydra wraps the ImportError
        instantiate(fcfg().model)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (GPU machines: pip install 'lettingo[vllm]')")
def test_vllm_agrees_with_the_in_process_scorer(fcfg, tiny_model_cache: Path) -> None:
    from lettingo.recommender.llm import ZeroShotLLM

    rcfg = fcfg("recommender.model.gpu_memory_utilization=0.3", "recommender.model.max_model_len=1024",
                "recommender.model.enable_lora=false", "recommender.model.dtype=float32")
    try:
        on_vllm = instantiate(rcfg.model).predict(CASES)
    finally:
        close_engines()
    model = OmegaConf.to_container(rcfg.model, resolve=True)
    local = ZeroShotLLM("local", "tiny_random", tiny_model_cache, model["prompt"], model["label_words"],
                        model["item_text"], dtype="float32", device="cpu")
    np.testing.assert_allclose(on_vllm, local.predict(CASES), atol=1e-3)
