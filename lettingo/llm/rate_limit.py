"""What a paid or shared API allows: requests and tokens per minute, the server's own rate-limit headers, the cost.

:class:`RateLimiter` keeps two token buckets (requests per minute, tokens per minute), shared by
every thread that sends to one server. A request reserves one request and its *estimated* tokens
(prompt + ``max_tokens`` for each choice, what providers count against the limit before the
answer) and waits until both buckets can pay; once the answer's ``usage`` gives the exact count,
:meth:`RateLimiter.settle` corrects the bucket. The server's ``x-ratelimit-remaining-*`` and
``x-ratelimit-reset-*`` headers (OpenAI's, also sent by vLLM gateways and others) pause every
thread when a remaining count reaches 0, until the reset; a ``Retry-After`` on a 429 pauses them too.

:class:`UsageMeter` adds up requests, exact token counts and their cost in US dollars.

The clock and the sleep are injectable, so tests check the spacing of requests without waiting.

Why not a library: the openai SDK has no client-side rate limit. Of the maintained limiters (sources of
pyrate-limiter 4.6.0, limits 5.8.0 and aiolimiter 1.3.0 read), pyrate-limiter's ``try_acquire(weight=)`` and
limits' ``hit(cost=)`` count weighted hits against several rates, and aiolimiter serves asyncio only (the
backends' pools are threads). None takes back part of a reservation once the real usage is known (only a whole
bucket or key can be cleared), so a tokens-per-minute limit reserved at prompt + ``max_tokens`` would run
several times slower than the account allows; none holds every caller on a server header
(``x-ratelimit-remaining-*`` = 0, a 429's ``Retry-After``).
"""

from __future__ import annotations

import email.utils
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

Clock = Callable[[], float]
Sleep = Callable[[float], None]

#: A Go-style duration as OpenAI writes its reset headers: "1s", "6m0s", "20ms", "1h2m3.5s".
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in a duration string: a plain number of seconds (``"1.5"``) or Go-style (``"6m0s"``, ``"20ms"``).

    ``None`` where ``text`` is neither.
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    if not text or _DURATION.sub("", text):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION.findall(text))


def _date_seconds(text: str, now: float) -> float | None:
    """Seconds from ``now`` (a UNIX time) until an HTTP date or an ISO 8601 time; ``None`` if ``text`` is neither."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:  # an HTTP date is always GMT; an ISO time without a zone is taken as UTC too
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: a number of seconds or an HTTP date (RFC 9110).

    ``now`` is the current UNIX time (for a date); ``None`` where there is no usable value.
    """
    if value is None:
        return None
    seconds = parse_duration(value)
    return seconds if seconds is not None else _date_seconds(value, now)


def reset_seconds(value: str | None, now: float) -> float | None:
    """Seconds until a rate-limit window resets: a duration (``"6m0s"``, ``"1.5"``) or a date (ISO or HTTP)."""
    if value is None:
        return None
    seconds = parse_duration(value)
    return seconds if seconds is not None else _date_seconds(value, now)


class _Bucket:
    """A token bucket: ``rate`` units per second, at most ``capacity`` saved up; the level may go below 0.

    A reservation larger than what is saved runs the level into debt, paid back by waiting, so the
    long-run rate never exceeds ``rate`` and reservations are served in the order they were made.
    ``at`` is when ``level`` was last brought up to date; a pause moves it into the future.
    """

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_seconds, 1.0)
        self.level = self.capacity
        self.at = now

    def refill(self, now: float) -> None:
        """Add what was earned since ``at`` (nothing before a pause ends)."""
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
            self.at = now

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` now; the time at which the bucket could pay for it (``now`` or later)."""
        self.refill(now)
        need = min(amount, self.capacity)  # one request bigger than the bucket goes once the bucket is full
        ready = self.at + max(need - self.level, 0.0) / self.rate
        self.level -= amount
        return max(ready, now)

    def hold(self, until: float) -> None:
        """Nothing is earned before ``until`` and nothing saved is left (the server said the budget is spent)."""
        self.level = min(self.level, 0.0)
        self.at = max(self.at, until)


@dataclass
class Permit:
    """What one request reserved: ``tokens`` estimated (corrected by :meth:`RateLimiter.settle`), ``waited`` s."""

    tokens: float
    waited: float = 0.0
    settled: bool = False


class RateLimiter:
    """Requests-per-minute and tokens-per-minute buckets plus pauses, shared by all threads sending to one server.

    ``requests_per_minute`` / ``tokens_per_minute``: ``None`` (or 0) for no limit. ``burst_seconds``:
    how many seconds of budget a bucket saves up (1 s: requests are spread evenly, never a minute's
    worth at once). ``clock`` (monotonic seconds), ``wall_clock`` (UNIX time, for dates in headers)
    and ``sleep`` are injectable for tests; ``sleep=None`` lets :meth:`acquire`'s caller pass its own
    (a deadline-aware one), else ``time.sleep``.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        burst_seconds: float = 1.0,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep | None = None,
    ) -> None:
        for key, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and value < 0:
                raise ValueError(f"{key} must be positive or null (no limit), got {value}")
        if not burst_seconds > 0:
            raise ValueError(f"burst_seconds must be positive, got {burst_seconds}")
        self.clock, self.wall_clock, self.sleep = clock, wall_clock, sleep
        now = clock()
        self.requests = _Bucket(requests_per_minute, burst_seconds, now) if requests_per_minute else None
        self.tokens = _Bucket(tokens_per_minute, burst_seconds, now) if tokens_per_minute else None
        self.paused_until = now
        self.pause_reason = ""
        self.waited = 0.0  # seconds all callers spent waiting here, in total
        self._lock = threading.Lock()

    def acquire(self, tokens: float = 0.0, sleep: Sleep | None = None) -> Permit:
        """Reserve one request of ``tokens`` (estimated) and wait until the limits and any pause allow it.

        The reservation is made at once, so later callers queue behind it. The wait happens outside
        the lock, through the injected sleep, else ``sleep`` (the caller's), else ``time.sleep``; a
        pause set while waiting (:meth:`pause_for`, :meth:`observe`) holds it longer.
        """
        sleeper = self.sleep or sleep or time.sleep
        with self._lock:
            now = self.clock()
            ready = now
            for bucket, amount in ((self.requests, 1.0), (self.tokens, float(tokens))):
                if bucket is not None:
                    ready = max(ready, bucket.reserve(amount, now))
        waited = 0.0
        while True:
            with self._lock:
                delay = max(ready, self.paused_until) - self.clock()
            if delay <= 0:
                break
            sleeper(delay)
            waited += delay
        if waited:
            with self._lock:
                self.waited += waited
        return Permit(float(tokens), waited)

    def settle(self, permit: Permit, tokens: float) -> None:
        """Correct a reservation by the exact count (``usage``): a refund, or a debt, of the difference."""
        if permit.settled:
            return
        permit.settled = True
        if self.tokens is None:
            return
        with self._lock:
            self.tokens.refill(self.clock())
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + permit.tokens - tokens)

    def pause_for(self, seconds: float, reason: str) -> None:
        """Hold every caller of :meth:`acquire` for ``seconds`` from now (a longer pause already set stays).

        The buckets start from empty when the pause ends, so the waiters do not all go at once.
        """
        with self._lock:
            until = self.clock() + max(seconds, 0.0)
            if until <= self.paused_until:
                return
            self.paused_until, self.pause_reason = until, reason
            for bucket in (self.requests, self.tokens):
                if bucket is not None:
                    bucket.hold(until)

    def observe(self, headers: Mapping[str, str]) -> float:
        """Pause until the reset where an ``x-ratelimit-remaining-requests`` or ``-tokens`` header says 0.

        Returns the pause in seconds (0 when none). A remaining count without its reset header pauses 1 s.
        """
        pause = 0.0
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is None:
                continue
            try:
                left = float(remaining)
            except ValueError:
                continue
            if left > 0:
                continue
            reset = reset_seconds(headers.get(f"x-ratelimit-reset-{kind}"), self.wall_clock())
            seconds = 1.0 if reset is None else reset
            if seconds > pause:
                pause = seconds
                self.pause_for(seconds, f"x-ratelimit-remaining-{kind}: 0")
        return pause


class UsageMeter:
    """Requests, exact token counts and their cost, added up over every request a client sent.

    ``price_per_million_input`` / ``price_per_million_output``: US dollars per million prompt /
    completion tokens (0: not billed, e.g. a local server).
    """

    def __init__(self, price_per_million_input: float = 0.0, price_per_million_output: float = 0.0) -> None:
        if price_per_million_input < 0 or price_per_million_output < 0:
            raise ValueError("prices must be non-negative")
        self.price_in = float(price_per_million_input)
        self.price_out = float(price_per_million_output)
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "estimated_requests": 0,
                        "retries": 0, "rate_limit_wait_s": 0.0}

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """US dollars for these token counts."""
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    def add(self, prompt_tokens: int, completion_tokens: int, estimated: bool = False) -> None:
        """Count one answered request; ``estimated``: the server sent no ``usage``, so the counts are estimates."""
        with self._lock:
            self._counts["requests"] += 1
            self._counts["prompt_tokens"] += int(prompt_tokens)
            self._counts["completion_tokens"] += int(completion_tokens)
            self._counts["estimated_requests"] += int(estimated)

    def add_retry(self) -> None:
        """Count one try beyond the first of a request."""
        with self._lock:
            self._counts["retries"] += 1

    def add_wait(self, seconds: float) -> None:
        """Count seconds spent waiting for the rate limits."""
        with self._lock:
            self._counts["rate_limit_wait_s"] += seconds

    def as_dict(self) -> dict[str, float]:
        """``requests, prompt_tokens, completion_tokens, total_tokens, cost_usd`` and the bookkeeping counts."""
        with self._lock:
            counts = dict(self._counts)
        counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
        counts["cost_usd"] = self.cost(counts["prompt_tokens"], counts["completion_tokens"])
        return {key: float(value) for key, value in counts.items()}
