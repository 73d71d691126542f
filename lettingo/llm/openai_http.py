"""Generation through any OpenAI-compatible HTTP server (OpenAI, a gateway, vLLM or llama.cpp servers).

Uses ``httpx``. :class:`OpenAIClient` is the part any caller of such a server shares (the
generation backend here, the served f_Rec in :mod:`lettingo.recommender.served`): 429, 5xx and
connection errors are retried with exponential backoff (honouring ``Retry-After`` in seconds or as
an HTTP date, and ``retry-after-ms``); a :class:`~lettingo.llm.rate_limit.RateLimiter` keeps
requests and tokens per minute within the configured limits and pauses when the server's
``x-ratelimit-remaining-*`` headers reach 0; a :class:`~lettingo.llm.rate_limit.UsageMeter` adds
up the exact token counts of ``usage`` and their cost. The API key is read from the environment
variable named in the config, so no secret is ever part of a saved config.

httpx's timeouts bound each phase (connect, one read, one write), so a server that trickles bytes
or keeps failing can hold a request for ever; ``request_deadline_s`` bounds the whole of it, all
tries, waits and the reading of the answer included. The deadline's clock and its sleep are
injectable (``clock``, ``sleep``), as the rate limiter's are, so tests check it without waiting.

:class:`OpenAIBackend` keeps ``concurrency`` requests in flight in one thread pool that lives as
long as the backend: a generate call queues all its requests at once, so the pool never drains
inside a call.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from lettingo.llm.base import Generation, GenerationBackend, Progress, sample_seed, validate_request
from lettingo.llm.rate_limit import Clock, Permit, RateLimiter, Sleep, UsageMeter, retry_after_seconds

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
    """The time limit of one request, shared by the thread that waits for it and the one that works on it.

    ``clock`` gives monotonic seconds; ``pause(seconds)`` waits between tries (``None``: on ``stop``,
    so a wait ends as soon as the waiter gives up). ``tries`` and ``problem`` (the last failure) are
    kept for the error message.
    """

    seconds: float
    clock: Clock = time.monotonic
    pause: Sleep | None = None
    at: float = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)
    tries: int = 0
    problem: str = ""

    def __post_init__(self) -> None:
        self.at = self.clock() + self.seconds

    def remaining(self) -> float:
        """Seconds left, 0 once passed."""
        return max(self.at - self.clock(), 0.0)

    def check(self) -> None:
        """Raise :class:`_DeadlinePassed` once the deadline has passed or the waiter gave up."""
        if self.stop.is_set() or self.remaining() <= 0:
            raise _DeadlinePassed

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; where the deadline comes first, sleep until it and raise :class:`_DeadlinePassed`.

        Also raised once the waiter has given up.
        """
        left = self.remaining()
        wait = self.stop.wait if self.pause is None else self.pause
        wait(min(seconds, left))
        if self.stop.is_set() or seconds >= left:
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
    Time is read from the deadline's clock: an injected clock that does not move keeps this waiting for ``work``.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome["error"] = error

    helper = threading.Thread(target=run, name="openai-request", daemon=True)
    helper.start()
    while helper.is_alive() and deadline.remaining() > 0:
        helper.join(deadline.remaining())
    if helper.is_alive():
        deadline.stop.set()
        raise _DeadlinePassed
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` by OpenAI's rule of thumb (characters / 4), where no tokenizer or ``usage`` is at hand."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def split_total(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split over ``len(weights)`` parts in proportion to ``weights``, as integers that add up to it.

    Largest remainders get the leftover units (ties: the earlier part); all-zero weights split evenly.
    """
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    shares = [total * w / sum(weights) for w in weights]
    parts = [math.floor(s) for s in shares]
    for i in sorted(range(len(shares)), key=lambda i: parts[i] - shares[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


@dataclass(frozen=True)
class Answer:
    """The JSON of one answered request and its token counts (from ``usage``, else ``estimated``)."""

    reply: dict
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


class OpenAIClient:
    """POSTs JSON to one OpenAI-compatible server: retries, the total deadline, rate limits, usage and cost.

    Thread-safe: every thread of a caller's pool shares one client, hence one rate limiter and one meter.
    """

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        request_deadline_s: float = 600.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        price_per_million_input: float = 0.0,
        price_per_million_output: float = 0.0,
        rate_limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        """``rate_limiter`` replaces the one built from ``requests_per_minute`` / ``tokens_per_minute``
        (tests inject one with a fake clock; callers of one API key may share one). ``clock`` (monotonic
        seconds) and ``sleep`` time ``request_deadline_s`` and the waits between tries; tests inject fakes.
        ``sleep=None`` waits in a way that ends early once the caller has given up on the request."""
        if not request_deadline_s > 0:
            raise ValueError(f"request_deadline_s must be positive, got {request_deadline_s}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.request_deadline_s = request_deadline_s
        self.limiter = rate_limiter or RateLimiter(requests_per_minute, tokens_per_minute)
        self.clock, self.sleep = clock, sleep
        self.meter = UsageMeter(price_per_million_input, price_per_million_output)
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self._lock = threading.Lock()  # guards the shared random source of the backoff jitter
        self._jitter = random.Random(0)

    def url(self, path: str) -> str:
        """The full URL of endpoint ``path`` (e.g. ``/completions``)."""
        return self.base_url + path

    def usage(self) -> dict[str, float]:
        """What this client has sent so far: see :meth:`UsageMeter.as_dict`."""
        return self.meter.as_dict()

    def post(
        self, url: str, body: dict[str, object], expected_tokens: float, estimate: Callable[[dict], tuple[int, int]]
    ) -> Answer:
        """POST ``body`` to ``url`` within ``request_deadline_s``: retries, rate limits, usage counted.

        ``expected_tokens``: what the request may cost against a tokens-per-minute limit (prompt +
        ``max_tokens`` per choice), reserved before it is sent; ``estimate(reply)`` gives (prompt,
        completion) tokens where the answer has no ``usage``.
        """
        deadline = _Deadline(self.request_deadline_s, self.clock, self.sleep)
        try:
            reply, permit = _within(deadline, lambda: self._post_with_retries(url, body, expected_tokens, deadline))
        except _DeadlinePassed:
            raise deadline.error(url) from None
        usage = reply.get("usage") or {}
        exact = isinstance(usage.get("prompt_tokens"), int) and isinstance(usage.get("completion_tokens"), int)
        prompt_tokens, completion_tokens = (
            (usage["prompt_tokens"], usage["completion_tokens"]) if exact else estimate(reply)
        )
        self.limiter.settle(permit, prompt_tokens + completion_tokens)
        self.meter.add(prompt_tokens, completion_tokens, estimated=not exact)
        return Answer(reply, int(prompt_tokens), int(completion_tokens), not exact)

    def _post_with_retries(
        self, url: str, body: dict[str, object], expected_tokens: float, deadline: _Deadline
    ) -> tuple[dict, Permit]:
        """POST ``body``, retrying 429/5xx/connection errors with exponential backoff until ``deadline``.

        The answer's JSON and the rate limiter's permit of the try that got it (settled by the caller).
        """
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            deadline.check()
            permit = self.limiter.acquire(expected_tokens, sleep=deadline.sleep)
            if permit.waited:
                self.meter.add_wait(permit.waited)
            deadline.check()
            deadline.tries += 1
            if attempt:
                self.meter.add_retry()
            try:
                status, headers, content = self._send(url, body, deadline)
            except httpx.TransportError as error:
                self.limiter.settle(permit, 0)
                deadline.check()  # a phase cut short by the deadline is the deadline's failure
                deadline.problem = f"{type(error).__name__}: {error}"
                if last:
                    raise BackendUnavailable(
                        f"no OpenAI-compatible server answered at {url} after {attempt + 1} tries "
                        f"({type(error).__name__}: {error}); is it running, and is base_url right?"
                    ) from error
                self._wait(url, attempt, None, deadline.problem, deadline)
                continue
            self.limiter.observe(headers)
            if status != 200:
                self.limiter.settle(permit, 0)  # a refused request uses no tokens
            if status in RETRY_STATUS and not last:
                deadline.problem = f"HTTP {status}"
                retry_after = _retry_after(headers)
                if status == 429 and retry_after is not None:  # the whole client waits, not only this request
                    delay = retry_after_seconds(retry_after, self.limiter.wall_clock())
                    if delay is not None:
                        self.limiter.pause_for(min(delay, self.max_backoff), "HTTP 429 with Retry-After")
                self._wait(url, attempt, retry_after, deadline.problem, deadline)
                continue
            if status in (401, 403):
                raise BackendRequestError(
                    f"{url} refused the request (HTTP {status}); "
                    f"put the API key in the environment variable {self.api_key_env!r}"
                )
            if status >= 400:
                text = content[:500].decode("utf-8", errors="replace")
                raise BackendRequestError(f"{url} answered HTTP {status}: {text}")
            return json.loads(content), permit
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, url: str, body: dict[str, object], deadline: _Deadline) -> tuple[int, httpx.Headers, bytes]:
        """One POST: status, headers and body, the body read chunk by chunk so the deadline also bounds it."""
        content = bytearray()
        with self._client.stream("POST", url, json=body, timeout=deadline.timeout(self.timeout)) as response:
            for chunk in response.iter_bytes():
                deadline.check()
                content += chunk
        return response.status_code, response.headers, bytes(content)

    def _backoff_delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before try ``attempt + 2``: the server's ``Retry-After`` (seconds or an HTTP date)
        if it gave one, else ``backoff * 2**attempt`` with jitter (between half and all of it); never above
        ``max_backoff``."""
        asked = retry_after_seconds(retry_after, self.limiter.wall_clock())
        if asked is not None:
            return min(asked, self.max_backoff)
        with self._lock:
            jitter = self._jitter.uniform(0.5, 1.0)
        return min(self.backoff * 2**attempt, self.max_backoff) * jitter

    def _wait(self, url: str, attempt: int, retry_after: str | None, reason: str, deadline: _Deadline) -> None:
        """Sleep before the next try (see :meth:`_backoff_delay`), unless the deadline comes first."""
        delay = self._backoff_delay(attempt, retry_after)
        log.warning(
            "%s from %s; retrying in %.2f s (try %d of %d)", reason, url, delay, attempt + 2, self.max_retries + 1
        )
        deadline.sleep(delay)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


def _retry_after(headers: Mapping[str, str]) -> str | None:
    """The server's ``Retry-After`` value; OpenAI's ``retry-after-ms`` (milliseconds) first, as seconds."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return str(float(milliseconds) / 1000)
        except ValueError:
            pass
    return headers.get("Retry-After")


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
        concurrency: int = 32,
        **client: Any,
    ) -> None:
        """Configure the client; nothing is sent until :meth:`generate`.

        ``native_n``: ask for all ``n`` samples in one request (the server must honour ``n``);
        otherwise one request per sample, each with its own ``seed`` (see :func:`sample_seed`).
        ``concurrency``: requests in flight at once. ``client``: the retry, deadline, rate-limit and price
        settings of :class:`OpenAIClient` (``timeout``, ``max_retries``, ``backoff``, ``max_backoff``,
        ``request_deadline_s``, ``requests_per_minute``, ``tokens_per_minute``, ``price_per_million_*``,
        ``rate_limiter``, ``clock``, ``sleep``).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.name = name
        self.model = model
        self.chat = chat
        self.lead_in = lead_in
        self.native_n = native_n
        self.concurrency = concurrency
        self.http = OpenAIClient(base_url, api_key_env, **client)
        self.url = self.http.url("/chat/completions" if chat else "/completions")
        self._pool: ThreadPoolExecutor | None = None

    def render(self, instruction: str) -> str:
        """The server applies the chat template itself, so chat prompts are the instruction as is."""
        return instruction if self.chat else instruction + self.lead_in

    def count_tokens(self, text: str) -> int:
        """An estimate (characters / 4): the server's tokenizer is not available here."""
        return estimate_tokens(text)

    def usage(self) -> dict[str, float]:
        """Requests answered, exact prompt and completion tokens (from ``usage``) and ``cost_usd``, so far.

        A native-``n`` request counts its prompt once, as the server bills it. Also ``retries``,
        ``estimated_requests`` (answers without ``usage``, counted by characters / 4) and
        ``rate_limit_wait_s`` (seconds requests waited for the rate limits, all threads added up).
        """
        return self.http.usage()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"openai-{self.name}")
        return self._pool

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        """See :meth:`GenerationBackend.generate`; ``progress`` is called after each request.

        All requests are queued at once on the backend's pool of ``concurrency`` threads, so a new
        request starts as soon as any finishes.
        """
        validate_request(n, temperature, max_new_tokens)
        if self.native_n:
            requests = [_Request(i, 0, n) for i in range(len(prompts))]
        else:
            requests = [_Request(i, j, 1) for i in range(len(prompts)) for j in range(n)]
        slots: list[list[Generation | None]] = [[None] * n for _ in prompts]
        pool = self._executor()
        futures: dict[Future, _Request] = {
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

        def estimate(reply: dict) -> tuple[int, int]:
            return self.count_tokens(prompt), sum(self.count_tokens(t) for t in self._texts(reply))

        began = time.perf_counter()
        answer = self.http.post(
            self.url, body, self.count_tokens(prompt) + max_new_tokens * request.count, estimate
        )
        seconds = (time.perf_counter() - began) / request.count
        texts = self._texts(answer.reply)
        if len(texts) != request.count:
            raise BackendRequestError(
                f"{self.url} returned {len(texts)} choices for n={request.count}; set native_n: false for this server"
            )
        # usage gives the completion tokens of all choices together: each choice gets its share by length.
        completion = split_total(answer.completion_tokens, [self.count_tokens(t) for t in texts])
        return [Generation(text, answer.prompt_tokens, c, seconds) for text, c in zip(texts, completion, strict=True)]

    def _texts(self, reply: dict) -> list[str]:
        """The choices' texts in index order."""
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        return [(c["message"]["content"] if self.chat else c["text"]) or "" for c in choices]

    def close(self) -> None:
        """Stop the thread pool (after its running requests) and close the HTTP connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.http.close()
