"""The zero-shot label-word f_Rec scored in this process by vLLM's offline engine (``recommender=llm_vllm``).

The prompt tokens, label tokens and normalisation are :class:`~lettingo.recommender.llm.ZeroShotLLM`'s
(:class:`~lettingo.recommender.llm_scoring.LabelWordScorer`,
:func:`~lettingo.recommender.llm_scoring.label_probabilities`); only the forward pass moves to vLLM.
The engine is the process's shared one (:func:`lettingo.llm.vllm_backend.open_engine`): where a generator
(``backbone=vllm``) on the same model has a live engine of the same dtype (``auto`` resolved) and at least this
f_Rec's context length, the f_Rec runs on it, whatever its other settings (``share=True``); otherwise it starts
one with its own. The scorer asks the registry for its engine at every ``predict``, so after
:func:`~lettingo.llm.vllm_backend.close_engines` (the end of a stage's generation) it starts it again
rather than failing.

How the three label log-probabilities are read: each case is one request, its prompt given as token ids
(exactly the in-process tokens; vLLM's prefix caching shares the prefix of one user's profiles), with
``SamplingParams(max_tokens=1, temperature=0, logprobs=3, logprob_token_ids=[like, neutral, dislike],
detokenize=False)``. The vLLM facts this rests on:

- ``SamplingParams.logprob_token_ids`` (vLLM >= 0.20, vllm-project/vllm#34539) returns the log-probabilities
  of exactly these token ids at each generated position, whatever their rank, besides the sampled token's;
  when ``logprobs`` is set too it must equal the list's length (``SamplingParams._validate_logprobs``).
- The V1 sampler's log-probabilities are the model's own: with the default ``logprobs_mode=raw_logprobs``
  they are the full-vocabulary log-softmax of the logits before the allowed-token whitelist, logit bias,
  penalties and temperature (the order in the docstring of ``vllm.v1.sample.sampler.Sampler``). Some
  versions gather ``logprob_token_ids`` from the logits after the logits processors instead; a greedy
  request without ``allowed_token_ids``, ``logit_bias`` or penalties leaves those equal to the raw ones,
  so this request sets none of them.

One request per case and three numbers back. The alternatives are worse: top-``k`` ``logprobs`` misses
labels outside the top ``k`` (``max_logprobs`` is 20 by default; the served scorer's problem);
``allowed_token_ids=[label]`` with ``logprobs=0`` is exact too (raw log-probabilities come before the
whitelist) but takes three requests per case; ``prompt_logprobs`` of the prompt with each label appended
takes three sequences per case and turns prefix-cache reads off for them (``skip_reading_prefix_cache``);
``logprobs=-1`` ships the whole vocabulary per case. As a guard, probabilities of three distinct tokens
cannot sum above 1: an answer where they do (log-probabilities taken after some mask) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lettingo.llm.vllm_backend import EngineRegistry, EngineSettings, open_engine
from lettingo.recommender.cases import RecCase
from lettingo.recommender.llm_scoring import LabelWordScorer, label_probabilities

NEEDS_LOGPROB_TOKEN_IDS = "recommender=llm_vllm needs vLLM >= 0.20 (SamplingParams.logprob_token_ids)"


class VLLMLabelScorer:
    """f_Rec on the shared vLLM engine: P(like / neutral / dislike) from the label tokens' log-probabilities."""

    def __init__(
        self,
        name: str,
        model: str,
        cache_dir: str | Path,
        prompt: Mapping[str, Any],
        label_words: Mapping[str, str],
        item_text: Mapping[str, Any],
        cases_per_call: int = 4096,
        registry: EngineRegistry | None = None,
        **engine: Any,
    ) -> None:
        """Get (or start) the engine of ``model`` under the ``engine`` settings (the fields of
        :class:`~lettingo.llm.vllm_backend.EngineSettings`, as in ``backbone=vllm``); a live generator engine of
        the same model that covers them serves instead. ``cases_per_call``: cases handed to vLLM's ``generate``
        at once. Raises ``ImportError`` with instructions where vLLM is not installed.
        """
        if cases_per_call < 1:
            raise ValueError(f"cases_per_call must be at least 1, got {cases_per_call}")
        self.name = name
        self.cases_per_call = cases_per_call
        self.settings = EngineSettings.from_values(**engine)
        self.registry, self.path, started = open_engine(model, cache_dir, self.settings, registry, share=True)
        self.scorer = LabelWordScorer.from_config(started.tokenizer, prompt, item_text, label_words)

    def sampling_params(self) -> Any:
        """One greedy token, reporting the log-probabilities of exactly the three label tokens."""
        from vllm import SamplingParams

        ids = list(self.scorer.label_ids)
        try:
            return SamplingParams(n=1, max_tokens=1, temperature=0.0, logprobs=len(ids), logprob_token_ids=ids,
                                  detokenize=False)
        except TypeError as error:  # an older SamplingParams has no logprob_token_ids field
            raise ImportError(f"{NEEDS_LOGPROB_TOKEN_IDS}; this one says: {error}") from None

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        """Label probabilities (n, 3) in LABELS order, ``cases_per_call`` cases per call of vLLM."""
        llm = self.registry.acquire(self.path, self.settings, share=True).llm
        params = self.sampling_params()
        rows: list[list[float]] = []
        for start in range(0, len(cases), self.cases_per_call):
            chunk = cases[start : start + self.cases_per_call]
            inputs = [{"prompt_token_ids": prompt.ids} for prompt in self.scorer.encode(chunk)]
            outputs = llm.generate(inputs, params, use_tqdm=False)
            rows.extend(self.label_logprobs(output) for output in outputs)
        return label_probabilities(rows)

    def label_logprobs(self, output: Any) -> list[float]:
        """The label tokens' log-probabilities (LABELS order) in one ``vllm.RequestOutput``."""
        try:
            first = output.outputs[0].logprobs[0]
            found = [float(first[token].logprob) for token in self.scorer.label_ids]
        except (AttributeError, IndexError, KeyError, TypeError) as error:
            raise RuntimeError(f"{self.name}: vLLM answered without the label tokens' log-probabilities "
                               f"({type(error).__name__}: {error}); {NEEDS_LOGPROB_TOKEN_IDS}") from None
        total = sum(math.exp(lp) for lp in found)
        if total > 1.0 + 1e-3:
            raise RuntimeError(f"{self.name}: the three label tokens got probabilities summing to {total:.3f} > 1, so "
                               "vLLM reported log-probabilities after a mask, not the model's; start the engine "
                               "with logprobs_mode=raw_logprobs (vLLM's default)")
        return found
