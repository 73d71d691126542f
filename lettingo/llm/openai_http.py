"""Generation through any OpenAI-compatible HTTP server (OpenAI, a gateway, vLLM or llama.cpp servers).

Uses ``httpx``. Requests run in a thread pool of ``concurrency`` workers; 429, 5xx and connection
errors are retried with exponential backoff (honouring ``Retry-After``); the API key is read from
the environment variable named in the config, so no secret is ever part of a saved config.

httpx's timeouts bound each phase (connect, one read, one write), so a server that trickles bytes
or keeps failing can hold a request for ever; ``request_deadline_s`` bounds the whole of it, all
tries, waits and the reading of the answer included.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from lettingo.llm.base import Generation, GenerationBackend, Progress, sample_seed, validate_request

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb, used only when the server reports no token counts


class BackendUnavailable(RuntimeError):
    """The server could not be reached (or kept failing) after every retry."""


class BackendRequestError(RuntimeError):
    """The server refused a request in a way that retrying cannot fix (4xx other than 408/409/429)."""


class BackendDeadlineExceeded(BackendUnavailable):
    """A request got no complete answer within its total deadline (``request_deadline_s``)."""


class _DeadlinePassed(Exception):
    """Raised inside a request once its deadline has passed or its waiter has given up on it."""


T = TypeVar("T")


@dataclass
class _Deadline:
    """The wall-clock limit of one request, shared by the thread that waits for it and the one that works on it.

    ``tries`` and ``problem`` (the last failure) are kept for the error message.
    """

    seconds: float
    at: float = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)
    tries: int = 0
    problem: str = ""

    def __post_init__(self) -> None:
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Seconds left, 0 once passed."""
        return max(self.at - time.monotonic(), 0.0)

    def check(self) -> None:
        """Raise :class:`_DeadlinePassed` once the deadline has passed or the waiter gave up."""
        if self.stop.is_set() or self.remaining() <= 0:
            raise _DeadlinePassed

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise :class:`_DeadlinePassed` where the deadline comes first."""
        if self.stop.wait(min(seconds, self.remaining())) or self.remaining() <= 0:
            raise _DeadlinePassed

    def timeout(self, per_phase: float) -> httpx.Timeout:
        """httpx's per-phase timeout, cut to the time left so that no single phase outlasts the deadline."""
        return httpx.Timeout(max(min(per_phase, self.remaining()), 1e-3))

    def error(self, url: str) -> BackendDeadlineExceeded:
        """The one-line error for a request to ``url`` that ran out of time."""
        tries = f"{self.tries} {'try' if self.tries == 1 else 'tries'}"
        problem = " ".join(self.problem.split())  # an exception's text may hold line breaks
        last = f", the last failure: {problem}" if problem else ""
        return BackendDeadlineExceeded(
            f"no complete answer from {url} within request_deadline_s={self.seconds:g} s ({tries}{last}); "
            f"the server is stalled or overloaded, or the deadline is too short for max_tokens"
        )


def _within(deadline: _Deadline, work: Callable[[], T]) -> T:
    """``work()`` run in a helper thread and given up on once ``deadline`` passes.

    Then ``deadline.stop`` is set, so ``work`` ends at its next check, and :class:`_DeadlinePassed`
    is raised here at once: a read that httpx would let wait for its whole timeout does not hold it.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome["error"] = error

    helper = threading.Thread(target=run, name="openai-request", daemon=True)
    helper.start()
    helper.join(deadline.remaining())
    if helper.is_alive():
        deadline.stop.set()
        raise _DeadlinePassed
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@dataclass(frozen=True)
class _Request:
    """One HTTP request: ``count`` samples of prompt ``prompt_index``, starting at sample ``first``."""

    prompt_index: int
    first: int
    count: int


class OpenAIBackend(GenerationBackend):
    """A model served behind ``/v1/chat/completions`` (chat) or ``/v1/completions`` (base models)."""

    def __init__(
        self,
        name: str,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        chat: bool = True,
        lead_in: str = "",
        native_n: bool = False,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        request_deadline_s: float = 600.0,
    ) -> None:
        """Configure the client; nothing is sent until :meth:`generate`.

        ``native_n``: ask for all ``n`` samples in one request (the server must honour ``n``);
        otherwise one request per sample, each with its own ``seed`` (see :func:`sample_seed`).
        ``max_retries`` extra tries per request, waiting ``backoff * 2**k`` seconds (at most
        ``max_backoff``) before try ``k + 1``. ``timeout`` bounds each phase of one try (connect,
        one read, one write); ``request_deadline_s`` bounds a request as a whole, from its first try
        to the last byte of its answer, and :class:`BackendDeadlineExceeded` says when it passed.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if not request_deadline_s > 0:
            raise ValueError(f"request_deadline_s must be positive, got {request_deadline_s}")
        self.name = name
        self.model = model
        self.chat = chat
        self.lead_in = lead_in
        self.native_n = native_n
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.request_deadline_s = request_deadline_s
        self.api_key_env = api_key_env
        self.url = base_url.rstrip("/") + ("/chat/completions" if chat else "/completions")
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self._lock = threading.Lock()  # guards the shared random source of the backoff jitter
        self._jitter = random.Random(0)

    def render(self, instruction: str) -> str:
        """The server applies the chat template itself, so chat prompts are the instruction as is."""
        return instruction if self.chat else instruction + self.lead_in

    def count_tokens(self, text: str) -> int:
        """An estimate (characters / 4): the server's tokenizer is not available here."""
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        """See :meth:`GenerationBackend.generate`; ``progress`` is called after each request."""
        validate_request(n, temperature, max_new_tokens)
        if self.native_n:
            requests = [_Request(i, 0, n) for i in range(len(prompts))]
        else:
            requests = [_Request(i, j, 1) for i in range(len(prompts)) for j in range(n)]
        slots: list[list[Generation | None]] = [[None] * n for _ in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {
                pool.submit(self._complete, prompts[r.prompt_index], r, temperature, max_new_tokens, seed): r
                for r in requests
            }
            try:
                for future in as_completed(futures):
                    request = futures[future]
                    generations = future.result()
                    slots[request.prompt_index][request.first : request.first + request.count] = generations
                    if progress is not None:
                        progress(len(generations), sum(g.completion_tokens for g in generations))
            except BaseException:
                for pending in futures:
                    pending.cancel()
                raise
        return [[g for g in row if g is not None] for row in slots]

    def _complete(
        self, prompt: str, request: _Request, temperature: float, max_new_tokens: int, seed: int
    ) -> list[Generation]:
        """Send one request (with retries) and turn its choices into generations."""
        body: dict[str, object] = {
            "model": self.model,
            "temperature": temperature,
            "max_tokens": max_new_tokens,
            "seed": sample_seed(seed, prompt, request.first),
        }
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if request.count > 1:
            body["n"] = request.count
        began = time.perf_counter()
        reply = self._post(body)
        seconds = (time.perf_counter() - began) / request.count
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != request.count:
            raise BackendRequestError(
                f"{self.url} returned {len(choices)} choices for n={request.count}; set native_n: false for this server"
            )
        usage = reply.get("usage") or {}
        texts = [(c["message"]["content"] if self.chat else c["text"]) or "" for c in choices]
        prompt_tokens = usage.get("prompt_tokens") or self.count_tokens(prompt)
        single = request.count == 1 and usage.get("completion_tokens") is not None
        return [
            Generation(text, prompt_tokens, usage["completion_tokens"] if single else self.count_tokens(text), seconds)
            for text in texts
        ]

    def _post(self, body: dict[str, object]) -> dict:
        """POST ``body`` with retries, all within ``request_deadline_s``; the answer's JSON."""
        deadline = _Deadline(self.request_deadline_s)
        try:
            return _within(deadline, lambda: self._post_with_retries(body, deadline))
        except _DeadlinePassed:
            raise deadline.error(self.url) from None

    def _post_with_retries(self, body: dict[str, object], deadline: _Deadline) -> dict:
        """POST ``body``, retrying 429/5xx/connection errors with exponential backoff until ``deadline``."""
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            deadline.check()
            deadline.tries += 1
            try:
                status, headers, content = self._send(body, deadline)
            except httpx.TransportError as error:
                deadline.check()  # a phase cut short by the deadline is the deadline's failure
                deadline.problem = f"{type(error).__name__}: {error}"
                if last:
                    raise BackendUnavailable(
                        f"no OpenAI-compatible server answered at {self.url} after {attempt + 1} tries "
                        f"({type(error).__name__}: {error}); is it running, and is base_url right?"
                    ) from error
                self._wait(attempt, None, deadline.problem, deadline)
                continue
            if status in RETRY_STATUS and not last:
                deadline.problem = f"HTTP {status}"
                self._wait(attempt, headers.get("Retry-After"), deadline.problem, deadline)
                continue
            if status in (401, 403):
                raise BackendRequestError(
                    f"{self.url} refused the request (HTTP {status}); "
                    f"put the API key in the environment variable {self.api_key_env!r}"
                )
            if status >= 400:
                text = content[:500].decode("utf-8", errors="replace")
                raise BackendRequestError(f"{self.url} answered HTTP {status}: {text}")
            return json.loads(content)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, body: dict[str, object], deadline: _Deadline) -> tuple[int, httpx.Headers, bytes]:
        """One POST: status, headers and body, the body read chunk by chunk so the deadline also bounds it."""
        content = bytearray()
        with self._client.stream("POST", self.url, json=body, timeout=deadline.timeout(self.timeout)) as response:
            for chunk in response.iter_bytes():
                deadline.check()
                content += chunk
        return response.status_code, response.headers, bytes(content)

    def _backoff_delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before try ``attempt + 2``: ``Retry-After`` if the server gave seconds, else
        ``backoff * 2**attempt`` with jitter (between half and all of it); never above ``max_backoff``."""
        if retry_after is not None and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), self.max_backoff)
        with self._lock:
            jitter = self._jitter.uniform(0.5, 1.0)
        return min(self.backoff * 2**attempt, self.max_backoff) * jitter

    def _wait(self, attempt: int, retry_after: str | None, reason: str, deadline: _Deadline) -> None:
        """Sleep before the next try (see :meth:`_backoff_delay`), unless the deadline comes first."""
        delay = self._backoff_delay(attempt, retry_after)
        log.warning(
            "%s from %s; retrying in %.2f s (try %d of %d)", reason, self.url, delay, attempt + 2, self.max_retries + 1
        )
        deadline.sleep(delay)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()
