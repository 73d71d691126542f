"""A fake `vllm` module for the tests of the vLLM generation backend and the vLLM f_Rec: it records every
engine built, every `generate` call (with its sampling parameters) and every shutdown, writes scripted
completions, and answers `logprob_token_ids` requests with scripted log-probabilities."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from lettingo.llm import vllm_backend
from lettingo.llm.vllm_backend import EngineRegistry


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
        def __init__(self, n: int = 1, temperature: float = 1.0, max_tokens: int = 16, seed: int | None = None,
                     logprobs: int | None = None, logprob_token_ids: list[int] | None = None,
                     detokenize: bool = True) -> None:
            self.n, self.temperature, self.max_tokens, self.seed = n, temperature, max_tokens, seed
            self.logprobs, self.logprob_token_ids, self.detokenize = logprobs, logprob_token_ids, detokenize

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

        def get_tokenizer(self) -> Any:
            return self.tokenizer

        def generate(self, inputs, params, lora_request=None, use_tqdm=True):
            params = params if isinstance(params, list) else [params] * len(inputs)
            assert len(inputs) == len(params) and not use_tqdm
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
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_backend, "ENGINES", EngineRegistry())
    return seen
