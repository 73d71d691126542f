"""The zero-shot label-word f_Rec, scored by any OpenAI-compatible server instead of in-process.

The prompt is the in-process scorer's, built by the same :class:`~lettingo.recommender.llm_scoring.LLMPromptEncoder`
with the model's chat template (so a local tokenizer of the served model is needed, not its weights),
and sent as text (or as its token ids) to ``/v1/completions`` with ``max_tokens=1``, greedy, asking for
the ``top_logprobs`` most likely first tokens. Each label's probability is, as in-process, the softmax
over the three label words' first tokens at the answer position, computed from their log-probabilities.

A label word outside the top ``top_logprobs`` is found by forcing it: ``logit_bias`` lifts label
tokens so that the token the server samples (whose log-probability it always reports) is a label.
The first request lifts all three, so the most likely label is always known (and a server that
reported log-probabilities after the bias would still give the three labels' right shares); a label
still missing gets one request lifting it alone, whose log-probability must be the model's own,
*before* the bias: llama.cpp's servers report those (checked in the tests); one that reports them
after the bias is detected (the forced label would rank above the top ``top_logprobs`` it was not
among) and refused.

Requests go through :class:`~lettingo.llm.openai_http.OpenAIClient`: the retries, total deadline,
rate limits and usage meter of the generation backbones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lettingo.data.schema import LABELS
from lettingo.llm.openai_http import BackendRequestError, OpenAIClient
from lettingo.recommender.cases import RecCase
from lettingo.recommender.llm_scoring import LabelWordScorer, label_probabilities

PROMPT_AS = ("text", "token_ids")


def load_tokenizer(spec: str, cache_dir: str | Path) -> Any:
    """The tokenizer (with its chat template) of model ``spec``: ``bundled:<name>``, ``tiny_random`` or a folder."""
    from transformers import AutoTokenizer

    from lettingo.llm.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(spec, cache_dir))


class ServedLabelScorer:
    """f_Rec through a server: P(like / neutral / dislike) from the label words' log-probabilities.

    The same prompts, label tokens and normalisation as :class:`~lettingo.recommender.llm.ZeroShotLLM`;
    only where the forward pass runs differs.
    """

    def __init__(
        self,
        name: str,
        served_model: str,
        tokenizer: str,
        cache_dir: str | Path,
        prompt: Mapping[str, Any],
        label_words: Mapping[str, str],
        item_text: Mapping[str, Any],
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str | None = None,
        concurrency: int = 8,
        top_logprobs: int = 20,
        label_bias: float = 100.0,
        prompt_as: str = "text",
        **client: Any,
    ) -> None:
        """``served_model``: the model name the server expects; ``tokenizer``: a model spec whose tokenizer
        and chat template match the served model (its weights are not loaded). ``top_logprobs``: first
        tokens asked for per request (OpenAI and vLLM accept at most 20 by default; llama.cpp any number,
        and with more a label is rarely missing, so a case takes one request). ``label_bias``: the
        ``logit_bias`` that forces a label token. ``prompt_as``: ``text`` (the rendered prompt; the server
        tokenizes it) or ``token_ids`` (the local tokenizer's ids, exactly the in-process tokens).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if top_logprobs < 1:
            raise ValueError(f"top_logprobs must be at least 1, got {top_logprobs}")
        if not label_bias > 0:
            raise ValueError(f"label_bias must be positive, got {label_bias}")
        if prompt_as not in PROMPT_AS:
            raise ValueError(f"prompt_as must be one of {PROMPT_AS}, got {prompt_as!r}")
        self.name = name
        self.served_model = served_model
        self.concurrency = concurrency
        self.top_logprobs = top_logprobs
        self.label_bias = label_bias
        self.prompt_as = prompt_as
        self.tokenizer = load_tokenizer(tokenizer, cache_dir)
        self.scorer = LabelWordScorer.from_config(self.tokenizer, prompt, item_text, label_words)
        self.label_tokens = [token_strings(self.tokenizer, i) for i in self.scorer.label_ids]
        if len({t for strings in self.label_tokens for t in strings}) != sum(len(t) for t in self.label_tokens):
            raise ValueError(f"the label words' first tokens {self.label_tokens} read the same; choose other words")
        self.http = OpenAIClient(base_url, api_key_env, **client)
        self.url = self.http.url("/completions")
        self._pool: ThreadPoolExecutor | None = None

    def prompt(self, case: RecCase) -> str | list[int]:
        """What is sent as ``prompt`` for ``case``: the rendered text, or its token ids."""
        if self.prompt_as == "token_ids":
            return self.scorer.encoder.encode(case).ids
        prefix, suffix = self.scorer.encoder.texts(case)
        return prefix + suffix

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        """Label probabilities (n, 3) in LABELS order, ``concurrency`` cases scored at once."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"served-{self.name}")
        return label_probabilities(list(self._pool.map(self.label_logprobs, cases)))

    def label_logprobs(self, case: RecCase) -> list[float]:
        """The model's log-probability of each label's first token after the prompt (LABELS order)."""
        prompt = self.prompt(case)
        tokens = len(prompt) if isinstance(prompt, list) else len(self.scorer.encoder.encode(case).ids)
        found, floor = self._ask(prompt, tokens, list(range(len(LABELS))), self.top_logprobs)
        for i in [i for i in range(len(LABELS)) if i not in found]:
            forced, _ = self._ask(prompt, tokens, [i], 1)
            if i not in forced:
                raise BackendRequestError(
                    f"{self.url} did not sample the token {self.label_tokens[i][0]!r} that logit_bias forced; "
                    f"this server ignores logit_bias: raise top_logprobs until every label is among them"
                )
            if forced[i] > floor + 1e-3:
                raise BackendRequestError(
                    f"{self.url} reports log-probabilities after logit_bias (the forced {self.label_tokens[i][0]!r} "
                    f"got {forced[i]:.3f}, above {floor:.3f}, the least of the log-probabilities shown without it); "
                    f"configure the server to report raw log-probabilities"
                )
            found[i] = forced[i]
        return [found[i] for i in range(len(LABELS))]

    def _ask(self, prompt: str | list[int], tokens: int, biased: list[int], k: int) -> tuple[dict[int, float], float]:
        """One request with the ``biased`` labels forced: {label index: log-prob} of the labels it reveals,
        and the smallest log-probability it shows, an upper bound of every label it does not reveal: such
        a label is neither among the top ``k`` nor above the sampled label (the likeliest lifted one)."""
        body: dict[str, object] = {
            "model": self.served_model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": k,
            "logit_bias": {str(self.scorer.label_ids[i]): self.label_bias for i in biased},
        }
        answer = self.http.post(self.url, body, tokens + 1, lambda reply: (tokens, 1))
        try:
            logprobs = answer.reply["choices"][0]["logprobs"]
            sampled, sampled_logprob = logprobs["tokens"][0], logprobs["token_logprobs"][0]
            top = dict(logprobs["top_logprobs"][0] or {})
        except (KeyError, IndexError, TypeError) as error:
            raise BackendRequestError(
                f"{self.url} answered without the first token's logprobs ({type(error).__name__}: {error}); "
                f"the f_Rec needs a /v1/completions that honours `logprobs`"
            ) from None
        revealed = {i: float(top[t]) for i, strings in enumerate(self.label_tokens) for t in strings if t in top}
        for i, strings in enumerate(self.label_tokens):
            if sampled in strings and sampled_logprob is not None:
                revealed[i] = float(sampled_logprob)
        shown = [float(v) for v in top.values()] + ([float(sampled_logprob)] if sampled_logprob is not None else [])
        return revealed, min(shown, default=0.0)

    def usage(self) -> dict[str, float]:
        """Requests and tokens sent so far (see :meth:`lettingo.llm.rate_limit.UsageMeter.as_dict`)."""
        return self.http.usage()

    def close(self) -> None:
        """Stop the thread pool and close the HTTP connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.http.close()


def token_strings(tokenizer: Any, token_id: int) -> tuple[str, ...]:
    """How a server may name token ``token_id`` in its logprobs: the text it adds after another token
    (llama.cpp's servers; a SentencePiece word keeps its leading space there), then its raw vocabulary
    entry (e.g. ``Ġlike``), where that differs."""
    context = tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    after = tokenizer.decode(context + [token_id])[len(tokenizer.decode(context)) :]
    raw = tokenizer.convert_ids_to_tokens(token_id)
    return (after,) if raw == after else (after, raw)
