"""Generation through any OpenAI-compatible HTTP server (OpenAI, a gateway, vLLM or llama.cpp servers).

Requests go through the ``openai`` SDK's client: its retries of 408/409/429/5xx answers and of
connection errors and timeouts, with exponential backoff and the server's ``Retry-After`` /
``retry-after-ms``. :class:`OpenAIClient` adds what the SDK does not do, shared by every caller of
such a server (the generation backend here, the served f_Rec in :mod:`lettingo.recommender.served`):
a :class:`~lettingo.llm.rate_limit.RateLimiter` keeps requests and tokens per minute within the
configured limits (each try takes a permit) and pauses every request when the server's
``x-ratelimit-remaining-*`` headers reach 0 or a 429 names its ``Retry-After``; a
:class:`~lettingo.llm.rate_limit.UsageMeter` adds up the exact token counts of ``usage`` and their
cost; and a total deadline. The API key is read from the environment variable named in the
config, so no secret is ever part of a saved config.

The SDK's timeout bounds each phase (connect, one read, one write), so a server that trickles bytes
or keeps failing can hold a request for ever; ``request_deadline_s`` bounds the whole of it, all
tries, waits and the reading of the answer included. The deadline's clock and its sleep are
injectable (``clock``, ``sleep``), as the rate limiter's are, so tests check it without waiting.
The SDK's hooks (httpx event hooks on its HTTP client) are where each try takes its permit, checks
the deadline and reports the server's rate-limit headers.

:class:`OpenAIBackend` keeps ``concurrency`` requests in flight in one thread pool that lives as
long as the backend: a generate call queues all its requests at once, so the pool never drains
inside a call.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import openai

from lettingo.llm.base import Generation, GenerationBackend, Progress, sample_seed, validate_request
from lettingo.llm.rate_limit import Clock, Permit, RateLimiter, Sleep, UsageMeter, retry_after_seconds

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb, used only when the server reports no token counts
NO_KEY = "EMPTY"  # sent when the key's variable is unset: the SDK requires a key; keyless servers ignore it


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

    ``clock`` gives monotonic seconds; ``pause(seconds)`` waits for the rate limits (``None``: on
    ``stop``, so a wait ends as soon as the waiter gives up). ``tries`` and ``problem`` (the last
    failure) are kept for the error message.
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

    def timeout(self, per_phase: float) -> float:
        """The per-phase timeout, cut to the time left so that no single phase outlasts the deadline."""
        return max(min(per_phase, self.remaining()), 1e-3)

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
    is raised here at once: a read that the SDK would let wait for its whole timeout does not hold it.
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


@dataclass
class _Request:
    """What the SDK's hooks need of the request being sent by this thread: its deadline, its token
    estimate for the rate limiter, and the permit of its current try (settled by :meth:`OpenAIClient.post`)."""

    url: str
    deadline: _Deadline
    expected_tokens: float
    permit: Permit | None = None
    answered: bool = False  # whether the current try got an HTTP answer (else: a connection error or timeout)


class OpenAIClient:
    """POSTs JSON to one OpenAI-compatible server through the ``openai`` SDK: its retries, plus the
    total deadline, rate limits, usage and cost.

    Thread-safe: every thread of a caller's pool shares one client, hence one rate limiter and one meter.
    """

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 6,
        request_deadline_s: float = 600.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        price_per_million_input: float = 0.0,
        price_per_million_output: float = 0.0,
        rate_limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        """``timeout``: seconds for each phase of a try; ``max_retries``: the SDK's retries after 408/409/429/5xx
        and connection errors. ``rate_limiter`` replaces the one built from ``requests_per_minute`` /
        ``tokens_per_minute`` (tests inject one with a fake clock; callers of one API key may share one).
        ``clock`` (monotonic seconds) and ``sleep`` time ``request_deadline_s`` and the waits for the rate
        limits; tests inject fakes. ``sleep=None`` waits in a way that ends early once the caller has given
        up on the request."""
        if not request_deadline_s > 0:
            raise ValueError(f"request_deadline_s must be positive, got {request_deadline_s}")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.request_deadline_s = request_deadline_s
        self.limiter = rate_limiter or RateLimiter(requests_per_minute, tokens_per_minute)
        self.clock, self.sleep = clock, sleep
        self.meter = UsageMeter(price_per_million_input, price_per_million_output)
        self._current = threading.local()  # the _Request this thread is sending, for the SDK's hooks
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._before_try], "response": [self._after_try]})
        api_key = os.environ.get(api_key_env) if api_key_env else None
        self._sdk = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=max_retries,
            http_client=http,
        )

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
        ``max_tokens`` per choice), reserved before each try is sent; ``estimate(reply)`` gives (prompt,
        completion) tokens where the answer has no ``usage``.
        """
        request = _Request(url, _Deadline(self.request_deadline_s, self.clock, self.sleep), expected_tokens)
        try:
            reply = _within(request.deadline, lambda: self._send(request, body))
        except BaseException as error:
            if request.permit is not None:
                self.limiter.settle(request.permit, 0)  # a request that got no answer used no tokens
            if isinstance(error, _DeadlinePassed):
                raise request.deadline.error(url) from None
            raise
        usage = reply.get("usage") or {}
        exact = isinstance(usage.get("prompt_tokens"), int) and isinstance(usage.get("completion_tokens"), int)
        prompt_tokens, completion_tokens = (
            (usage["prompt_tokens"], usage["completion_tokens"]) if exact else estimate(reply)
        )
        if request.permit is not None:  # the answering try's permit, corrected to the tokens used
            self.limiter.settle(request.permit, prompt_tokens + completion_tokens)
        self.meter.add(prompt_tokens, completion_tokens, estimated=not exact)
        return Answer(reply, int(prompt_tokens), int(completion_tokens), not exact)

    def _send(self, request: _Request, body: dict[str, object]) -> dict:
        """The SDK's POST of ``body`` (with its retries) on this thread, its failures as this module's errors."""
        self._current.request = request
        deadline = request.deadline
        try:
            reply = self._sdk.post(
                request.url, body=body, cast_to=object, options={"timeout": deadline.timeout(self.timeout)}
            )
        except openai.APIConnectionError as error:  # also a timeout
            deadline.check()  # a phase cut short by the deadline is the deadline's failure
            cause = error.__cause__ or error
            raise BackendUnavailable(
                f"no OpenAI-compatible server answered at {request.url} after {deadline.tries} "
                f"{'try' if deadline.tries == 1 else 'tries'} ({type(cause).__name__}: {cause}); "
                f"is it running, and is base_url right?"
            ) from error
        except openai.APIStatusError as error:
            if error.status_code in (401, 403):
                raise BackendRequestError(
                    f"{request.url} refused the request (HTTP {error.status_code}); "
                    f"put the API key in the environment variable {self.api_key_env!r}"
                ) from None
            text = " ".join(error.response.text[:500].split())
            raise BackendRequestError(f"{request.url} answered HTTP {error.status_code}: {text}") from None
        finally:
            self._current.request = None
        if not isinstance(reply, dict):
            raise BackendRequestError(f"{request.url} answered with no JSON object: {str(reply)[:200]!r}")
        return reply

    def _before_try(self, sent: httpx2.Request) -> None:
        """The SDK's request hook, before each try: the deadline checked, a rate-limit permit taken."""
        request: _Request = self._current.request
        deadline = request.deadline
        deadline.check()
        if request.permit is not None:  # the previous try was refused or got no answer: it used no tokens
            self.limiter.settle(request.permit, 0)
            if not request.answered:
                deadline.problem = "no answer (connection error or timeout)"
            self.meter.add_retry()
            log.warning("%s from %s; retrying (try %d of %d)", deadline.problem, request.url,
                        deadline.tries + 1, self.max_retries + 1)
        request.permit = self.limiter.acquire(request.expected_tokens, sleep=deadline.sleep)
        if request.permit.waited:
            self.meter.add_wait(request.permit.waited)
        deadline.check()
        deadline.tries += 1
        request.answered = False

    def _after_try(self, response: httpx2.Response) -> None:
        """The SDK's response hook, after each try: the server's rate-limit headers read, and on a 429 with
        ``Retry-After`` every request of this client paused, not only this one."""
        request: _Request = self._current.request
        request.answered = True
        self.limiter.observe(response.headers)
        if response.status_code == 200:
            return
        request.deadline.problem = f"HTTP {response.status_code}"
        if response.status_code == 429:
            delay = retry_after_seconds(_retry_after(response.headers), self.limiter.wall_clock())
            if delay is not None:
                self.limiter.pause_for(delay, "HTTP 429 with Retry-After")

    def close(self) -> None:
        """Close the HTTP connections."""
        self._sdk.close()


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
class _Samples:
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
        settings of :class:`OpenAIClient` (``timeout``, ``max_retries``, ``request_deadline_s``,
        ``requests_per_minute``, ``tokens_per_minute``, ``price_per_million_*``, ``rate_limiter``, ``clock``,
        ``sleep``).
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
            requests = [_Samples(i, 0, n) for i in range(len(prompts))]
        else:
            requests = [_Samples(i, j, 1) for i in range(len(prompts)) for j in range(n)]
        slots: list[list[Generation | None]] = [[None] * n for _ in prompts]
        pool = self._executor()
        futures: dict[Future, _Samples] = {
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
        self, prompt: str, request: _Samples, temperature: float, max_new_tokens: int, seed: int
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
