"""A fake `vllm` module for the tests of the vLLM generation backend and the vLLM f_Rec: it records every
engine built, every `generate` call (with its sampling parameters) and every shutdown, writes scripted
completions, and answers `logprob_token_ids` requests with scripted log-probabilities.

It refuses what vLLM 0.33.0 refuses, with its error texts, as ``vllm.exceptions.VLLMValidationError`` (an
``Exception``, not a ``ValueError``: vllm/exceptions.py:10-56), at the moment vLLM does (vllm/sampling_params.py):

- when ``SamplingParams`` is built (``_verify_args``, lines 634-767, and ``_verify_greedy_sampling``, 769-773): ``n``
  below 1, a temperature outside [0, 2], ``max_tokens`` below 1, ``logprobs`` below 0 other than -1, ``n`` > 1 at
  temperature 0;
- when ``LLM.generate`` takes the request (``SamplingParams.verify`` from the input processor,
  vllm/v1/engine/input_processor.py:157; ``_validate_logprobs``, sampling_params.py:922-968): ``logprobs`` above
  the engine's ``max_logprobs`` (20 by default, vllm/config/model.py:286), more than ``MAX_LOGPROB_TOKEN_IDS``
  = 128 ``logprob_token_ids`` (sampling_params.py:35), an id outside [0, vocab_size) of the model's config, and
  ``logprobs`` set to anything but the length of ``logprob_token_ids``.
"""

from __future__ import annotations

import json
import math
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lettingo.llm import vllm_backend
from lettingo.llm.vllm_backend import EngineRegistry

#: vllm/sampling_params.py:35 and the default ``max_logprobs`` of vllm/config/model.py:286 (vLLM 0.33.0).
MAX_LOGPROB_TOKEN_IDS = 128
MAX_LOGPROBS = 20


class VLLMValidationError(Exception):
    """vllm.exceptions.VLLMValidationError: the message, then the parameter and value it names."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter, self.value = parameter, value

    def __str__(self) -> str:
        extras = [f"{k}={v}" for k, v in (("parameter", self.parameter), ("value", self.value)) if v is not None]
        return f"{super().__str__()} ({', '.join(extras)})" if extras else super().__str__()


def verify_request(params: Any, vocab_size: int) -> None:
    """What ``SamplingParams._validate_logprobs`` refuses when the engine takes a request
    (sampling_params.py:922-968)."""
    asked = vocab_size if params.logprobs == -1 else params.logprobs
    if asked and asked > MAX_LOGPROBS:
        raise VLLMValidationError(f"Requested sample logprobs of {asked}, which is greater than max allowed: "
                                  f"{MAX_LOGPROBS}", parameter="logprobs", value=asked)
    ids = params.logprob_token_ids
    if ids is None:
        return
    if len(ids) > MAX_LOGPROB_TOKEN_IDS:
        raise VLLMValidationError(f"Requested logprob_token_ids of length {len(ids)}, which is greater than max "
                                  f"allowed: {MAX_LOGPROB_TOKEN_IDS}", parameter="logprob_token_ids", value=len(ids))
    invalid = [token for token in ids if token < 0 or token >= vocab_size]
    if invalid:
        raise VLLMValidationError(f"token_id(s) {invalid} in logprob_token_ids contain out-of-vocab token ids. "
                                  f"Vocabulary size: {vocab_size}", parameter="logprob_token_ids", value=invalid)
    if params.logprobs is not None and params.logprobs != len(ids):
        raise VLLMValidationError("When both logprobs and logprob_token_ids are set, logprobs must equal "
                                  f"len(logprob_token_ids). Got logprobs={params.logprobs}, "
                                  f"len(logprob_token_ids)={len(ids)}.", parameter="logprob_token_ids", value=len(ids))


def scripted_logprob(prompt: Sequence[int], token: int) -> float:
    """The fake model's log-probability of ``token`` after ``prompt``: at most -1.2, so three sum below one,
    and different for most prompts and tokens (the hash of a tuple of ints is the same in every process)."""
    return -1.2 - 0.3 * (hash((tuple(prompt), token)) % 11)


@dataclass
class Recorder:
    """What the fake vllm saw: every engine built (its kwargs), every generate call, every shutdown."""

    engines: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    shutdowns: list[str] = field(default_factory=list)
    logprob: Callable[[Sequence[int], int], float] = scripted_logprob


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """A `vllm` module (LLM, SamplingParams, lora.request.LoRARequest) that records calls; a fresh registry."""
    from transformers import AutoTokenizer

    seen = Recorder()

    class SamplingParams:
        """The fields lettingo sets, checked as ``SamplingParams.__post_init__`` checks them (lines 559-631)."""

        def __init__(self, n: int = 1, temperature: float = 1.0, max_tokens: int | None = 16,
                     seed: int | None = None, logprobs: int | None = None,
                     logprob_token_ids: list[int] | None = None, detokenize: bool = True) -> None:
            self.n, self.temperature, self.max_tokens, self.seed = n, temperature, max_tokens, seed
            self.logprobs, self.logprob_token_ids, self.detokenize = logprobs, logprob_token_ids, detokenize
            if not isinstance(n, int):
                raise VLLMValidationError(f"n must be an int, but is of type {type(n)}")
            if n < 1:
                raise VLLMValidationError(f"n must be at least 1, got {n}.")
            if not math.isfinite(temperature):
                raise VLLMValidationError(f"temperature must be a finite number, got {temperature}.",
                                          parameter="temperature", value=temperature)
            if temperature < 0.0:
                raise VLLMValidationError(f"temperature must be non-negative, got {temperature}.",
                                          parameter="temperature", value=temperature)
            if temperature > 2.0:
                raise VLLMValidationError(f"temperature must be in [0, 2], got {temperature}.",
                                          parameter="temperature", value=temperature)
            if max_tokens is not None and max_tokens < 1:
                raise VLLMValidationError(f"max_tokens must be at least 1, got {max_tokens}.",
                                          parameter="max_tokens", value=max_tokens)
            if logprobs is not None and logprobs != -1 and logprobs < 0:
                raise VLLMValidationError(f"logprobs must be non-negative or -1, got {logprobs}.",
                                          parameter="logprobs", value=logprobs)
            if temperature < 1e-5 and n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {n}.")

    @dataclass(frozen=True)
    class LoRARequest:
        lora_name: str
        lora_int_id: int
        lora_path: str

    def completion(prompt: list[int], p: SamplingParams, lora: int | None) -> types.SimpleNamespace:
        if not p.logprob_token_ids:
            return types.SimpleNamespace(text=f"seed={p.seed} lora={lora}", token_ids=[1, 2, 3], logprobs=None)
        asked = {t: seen.logprob(prompt, t) for t in p.logprob_token_ids}
        sampled = max(asked, key=asked.__getitem__)  # greedy (the fake vocabulary's other tokens are far below)
        return types.SimpleNamespace(text="", token_ids=[sampled], logprobs=[
            {t: types.SimpleNamespace(logprob=lp, rank=None, decoded_token=None) for t, lp in asked.items()}])

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            seen.engines.append(kwargs)
            self.model = kwargs["model"]
            self.tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"])
            self.vocab_size = json.loads((Path(self.model) / "config.json").read_text())["vocab_size"]

        def get_tokenizer(self) -> Any:
            return self.tokenizer

        def generate(self, inputs, params, lora_request=None, use_tqdm=True):
            params = params if isinstance(params, list) else [params] * len(inputs)
            assert len(inputs) == len(params) and not use_tqdm
            for p in params:  # every request is verified before any runs
                verify_request(p, self.vocab_size)
            seen.calls.append({"model": self.model, "sequences": len(inputs), "lora": lora_request, "params": params,
                               "prompts": [item["prompt_token_ids"] for item in inputs],
                               "seeds": [p.seed for p in params], "n": {p.n for p in params}})
            lora = None if lora_request is None else lora_request.lora_int_id
            return [types.SimpleNamespace(prompt_token_ids=item["prompt_token_ids"],
                                          outputs=[completion(list(item["prompt_token_ids"]), p, lora)])
                    for item, p in zip(inputs, params, strict=True)]

        def shutdown(self) -> None:
            seen.shutdowns.append(self.model)

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    exceptions = types.ModuleType("vllm.exceptions")
    exceptions.VLLMValidationError = VLLMValidationError
    vllm.exceptions = exceptions
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in {"vllm": vllm, "vllm.exceptions": exceptions, "vllm.lora": lora,
                         "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    # An H100's compute capability: `dtype: auto` resolves as on the GPU machines, whatever this one has.
    monkeypatch.setattr(vllm_backend, "ENGINES", EngineRegistry(capability=lambda: (9, 0)))
    return seen
