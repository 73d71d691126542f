"""OpenAIBackend against a scripted local stub (fast): the openai SDK's retries, errors, seeds, ordering,
the API key from the environment, the total deadline against servers that stall, the rate limits
(on a fake clock), Retry-After dates, x-ratelimit pauses, usage and cost. Against a real
llama.cpp server (slow; benchmarks/llama_cpp_server.py starts it): a request, a request that succeeds
after the server is stopped and started again, and the message when nothing listens."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fixtures_llm import StubServer, free_port
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.llm.base import sample_seed
from lettingo.llm.openai_http import (
    BackendDeadlineExceeded,
    BackendRequestError,
    BackendUnavailable,
    OpenAIBackend,
    split_total,
)
from lettingo.llm.rate_limit import RateLimiter, parse_duration, reset_seconds, retry_after_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from llama_cpp_server import LlamaServer  # noqa: E402  (the launcher the benchmarks use too)

CONFIG = Path(CONFIG_DIR) / "backbone" / "openai.yaml"


def backend(base_url: str, **kwargs) -> OpenAIBackend:
    options = {"max_retries": 3, "concurrency": 4, "timeout": 10.0} | kwargs
    return OpenAIBackend("stub", "stub-model", base_url=base_url, **options)


class FakeClock:
    """A monotonic clock and a sleep that advances it: ``sleeps`` records every wait, nothing really waits."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = start
        self.wall_offset = wall - start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def test_retries_429_then_succeeds(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [429, 429]
    result = backend(openai_stub.base_url).generate(["hello"], n=1, seed=3)
    seed = sample_seed(3, "hello", 0)
    assert result[0][0].text == f"seed={seed} sample=0"
    assert len(openai_stub.requests) == 3
    assert all(r["body"] == openai_stub.requests[0]["body"] for r in openai_stub.requests)


def test_retries_5xx_through_the_sdk_and_counts_them(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [503, 500, 502]
    client = backend(openai_stub.base_url)
    assert client.generate(["x"])[0][0].completion_tokens == 3
    # The SDK numbers its tries; each retry took its own rate-limit permit and is counted once.
    assert [r["headers"]["x-stainless-retry-count"] for r in openai_stub.requests] == ["0", "1", "2", "3"]
    assert client.usage()["retries"] == 3.0 and client.usage()["requests"] == 1.0


def test_gives_up_after_max_retries(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [503] * 10
    with pytest.raises(BackendRequestError, match="503"):
        backend(openai_stub.base_url, max_retries=2).generate(["x"])
    assert len(openai_stub.requests) == 3


def test_client_errors_are_not_retried(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [400]
    with pytest.raises(BackendRequestError, match="HTTP 400"):
        backend(openai_stub.base_url).generate(["x"])
    assert len(openai_stub.requests) == 1


def test_unauthorized_names_the_key_variable(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [401]
    with pytest.raises(BackendRequestError, match="OPENAI_API_KEY"):
        backend(openai_stub.base_url).generate(["x"])


def test_nothing_listening_gives_a_clear_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendUnavailable, match=f"no OpenAI-compatible server answered at {url}/chat/completions"):
        backend(url, max_retries=1).generate(["x"])


def test_key_comes_from_the_environment_and_never_from_the_config(openai_stub, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    backend(openai_stub.base_url).generate(["x"])
    assert openai_stub.requests[0]["headers"]["authorization"] == "Bearer sk-test-secret"
    text = CONFIG.read_text()
    assert "sk-" not in text and OmegaConf.load(CONFIG).api_key_env == "OPENAI_API_KEY"


def test_samples_have_their_own_seeds_and_come_back_in_order(openai_stub: StubServer) -> None:  # noqa: F811
    prompts = [f"user {i}" for i in range(5)]
    calls: list[tuple[int, int]] = []
    result = backend(openai_stub.base_url).generate(prompts, n=3, seed=9, progress=lambda d, t: calls.append((d, t)))
    for prompt, row in zip(prompts, result, strict=True):
        assert [g.text for g in row] == [f"seed={sample_seed(9, prompt, j)} sample=0" for j in range(3)]
        assert all(g.prompt_tokens == 11 and g.completion_tokens == 3 for g in row)
    assert len(openai_stub.requests) == 15 and sum(d for d, _ in calls) == 15
    body = openai_stub.requests[0]["body"]
    assert body["model"] == "stub-model" and body["messages"][0]["role"] == "user" and "n" not in body


def test_native_n_asks_for_all_samples_at_once(openai_stub: StubServer) -> None:  # noqa: F811
    result = backend(openai_stub.base_url, native_n=True).generate(["a", "b"], n=4)
    assert len(openai_stub.requests) == 2 and all(r["body"]["n"] == 4 for r in openai_stub.requests)
    assert [g.text.split()[1] for g in result[0]] == [f"sample={j}" for j in range(4)]


def test_base_models_use_the_completions_endpoint_with_the_lead_in(openai_stub: StubServer) -> None:  # noqa: F811
    client = backend(openai_stub.base_url, chat=False, lead_in="\nProfile:\n")
    prompt = client.render("History.")
    assert prompt == "History.\nProfile:\n"
    client.generate([prompt], max_new_tokens=5, temperature=0.0)
    request = openai_stub.requests[0]
    assert request["path"] == "/v1/completions"
    assert request["body"]["prompt"] == prompt and request["body"]["max_tokens"] == 5
    assert request["body"]["temperature"] == 0.0


# --- the total deadline: servers that stall ------------------------------------------------------

Behaviour = Callable[[BaseHTTPRequestHandler, threading.Event], None]
#: How long a stalling server holds a request before it lets go by itself (it then closes the connection):
#: far beyond the stall tests' deadline, far below the client's per-phase timeout.
STALL_S = 5.0
#: A stall: serves a request as a ``Behaviour`` does, but returns True where it held out for STALL_S.
Stall = Callable[[BaseHTTPRequestHandler, threading.Event], bool]


@pytest.fixture
def stalling_server() -> Iterator[Callable[[Behaviour], str]]:
    """``start(behaviour)`` serves every POST with ``behaviour(handler, done)`` and returns the base URL.

    ``done`` is set at teardown; behaviours stop writing then, so no handler thread outlives the test.
    """
    done = threading.Event()
    servers: list[ThreadingHTTPServer] = []

    def start(behaviour: Behaviour) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    behaviour(self, done)
                except OSError:  # the client hung up: what a deadline does
                    pass

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    done.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def _silent(handler: BaseHTTPRequestHandler, done: threading.Event) -> bool:
    return not done.wait(STALL_S)  # reads the request, then never answers


def _trickle(data: bytes, handler: BaseHTTPRequestHandler, done: threading.Event) -> bool:
    # Every byte arrives well within httpx's read timeout, so only a total deadline ends this.
    pace = STALL_S / len(data)
    for i in range(len(data)):
        if done.wait(pace):
            return False
        handler.wfile.write(data[i : i + 1])
        handler.wfile.flush()
    return True


def _trickled_headers(handler: BaseHTTPRequestHandler, done: threading.Event) -> bool:
    return _trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"y" * 50, handler, done)


def _trickled_body(handler: BaseHTTPRequestHandler, done: threading.Event) -> bool:
    body = b'{"choices": [{"index": 0, "message": {"content": "' + b"z" * 50 + b'"}}]}'
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    handler.wfile.flush()
    return _trickle(body, handler, done)


@pytest.mark.parametrize("stall", [_silent, _trickled_headers, _trickled_body], ids=["silent", "headers", "body"])
def test_a_stalled_request_ends_at_its_deadline_with_one_clear_line(stalling_server, stall: Stall) -> None:
    # A real stalled socket on the real clock. What bounds the test is the server: it holds the request
    # for STALL_S, then lets go (or, for the body, finishes the answer). A client that ignored its deadline
    # would only stop then, and fail the last assert (or get its answer and not raise at all).
    let_go = threading.Event()

    def serve(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
        if stall(handler, done):
            let_go.set()  # before the handler returns and the connection closes

    url = stalling_server(serve)
    client = backend(url, timeout=30.0, request_deadline_s=0.6)  # the per-phase timeout never fires first
    with pytest.raises(BackendDeadlineExceeded) as raised:
        client.generate(["x"])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"no complete answer from {url}/chat/completions within request_deadline_s=0.6 s (1 try)")
    assert isinstance(raised.value, BackendUnavailable)  # callers that catch "server unusable" catch it too
    assert not let_go.is_set()  # the client gave up while the server still stalled


def test_the_deadline_covers_the_retries_and_the_waits_between_them(stalling_server) -> None:
    # The SDK waits between tries on the real clock (here the server's retry-after-ms of 0.25 s), so this
    # runs on it: a try about every 0.25 s, and none once the 1 s deadline has passed.
    began = time.monotonic()
    tries: list[float] = []

    def busy(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
        tries.append(time.monotonic() - began)
        handler.send_response(503)
        handler.send_header("retry-after-ms", "250")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    client = backend(stalling_server(busy), max_retries=50, request_deadline_s=1.0)
    expected = r"within request_deadline_s=1 s \([234] tries, the last failure: HTTP 503\)"
    with pytest.raises(BackendDeadlineExceeded, match=expected):
        client.generate(["x"])
    given_up = time.monotonic() - began
    time.sleep(0.5)  # two more of the server's waits: a client that kept trying would try again now
    assert 1.0 <= given_up < 1.5 and 2 <= len(tries) <= 4 and max(tries) < 1.0


def test_the_deadline_covers_the_waits_for_the_rate_limits(openai_stub: StubServer) -> None:  # noqa: F811
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, wall_clock=clock.wall)  # no sleep of its own: it waits on the deadline's
    limiter.pause_for(90.0, "x-ratelimit-remaining-requests: 0")
    client = backend(openai_stub.base_url, rate_limiter=limiter, request_deadline_s=10.0,
                     clock=clock, sleep=clock.sleep)
    with pytest.raises(BackendDeadlineExceeded, match=r"request_deadline_s=10 s \(0 tries\)"):
        client.generate(["x"])
    assert clock.sleeps == [10.0] and openai_stub.requests == []  # it waited until the deadline, then sent nothing


def test_a_request_that_finishes_in_time_is_unaffected(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [503]
    result = backend(openai_stub.base_url, request_deadline_s=5.0).generate(["x"], seed=1)
    assert result[0][0].text == f"seed={sample_seed(1, 'x', 0)} sample=0" and len(openai_stub.requests) == 2


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="request_deadline_s must be positive"):
        backend("http://127.0.0.1:9", request_deadline_s=0)


# --- rate limits, the server's rate-limit headers, usage and cost -----------------------------------


def fake_limiter(clock: FakeClock, **limits) -> RateLimiter:
    return RateLimiter(**limits, clock=clock, wall_clock=clock.wall, sleep=clock.sleep)


def test_requests_per_minute_spaces_requests_evenly() -> None:
    clock = FakeClock()
    limiter = fake_limiter(clock, requests_per_minute=60)  # one a second, none saved up beyond one
    sent = []
    for _ in range(4):
        limiter.acquire()
        sent.append(clock.now - 1000.0)
    assert sent == [0.0, 1.0, 2.0, 3.0]
    clock.now += 10.0  # idle: a second's budget is saved up, not ten
    limiter.acquire()
    limiter.acquire()
    assert clock.sleeps[-1] == pytest.approx(1.0) and limiter.waited == pytest.approx(4.0)


def test_tokens_per_minute_reserves_the_estimate_and_is_corrected_by_usage() -> None:
    clock = FakeClock()
    limiter = fake_limiter(clock, tokens_per_minute=6000)  # 100 tokens a second, 100 saved up at most
    limiter.acquire(100)  # the full bucket pays at once
    big = limiter.acquire(300)  # bigger than the bucket: goes once it is full again, then owes 200
    assert clock.sleeps == [pytest.approx(1.0)]
    limiter.acquire(50)  # waits until the 200 owed and its own 50 are earned: 2.5 s
    assert clock.sleeps[-1] == pytest.approx(2.5)
    limiter.settle(big, 250)  # usage said 250, not 300: 50 refunded
    limiter.settle(big, 0)  # settling twice changes nothing
    limiter.acquire(100)  # the bucket is back at 0 + 50 refunded: 0.5 s more to earn
    assert clock.sleeps[-1] == pytest.approx(0.5)  # without the refund: 1.0 s
    over = limiter.acquire(10)
    limiter.settle(over, 110)  # usage said more than reserved: the difference is owed
    limiter.acquire(10)
    assert clock.sleeps[-1] == pytest.approx(1.1)


def test_both_limits_hold_at_once() -> None:
    clock = FakeClock()
    limiter = fake_limiter(clock, requests_per_minute=600, tokens_per_minute=600)  # 10 req/s but 10 tokens/s
    for _ in range(3):
        limiter.acquire(10)
    assert clock.now - 1000.0 == pytest.approx(2.0)  # the tokens, not the requests, set the pace


def test_limiter_spacing_through_the_backend(openai_stub: StubServer) -> None:  # noqa: F811
    clock = FakeClock()
    client = backend(openai_stub.base_url, concurrency=1, rate_limiter=fake_limiter(clock, requests_per_minute=30))
    client.generate(["a", "b", "c"])
    assert clock.sleeps == [pytest.approx(2.0)] * 2 and len(openai_stub.requests) == 3
    assert client.usage()["rate_limit_wait_s"] == pytest.approx(4.0)


def test_backend_tokens_per_minute_uses_the_exact_usage(openai_stub: StubServer) -> None:  # noqa: F811
    clock = FakeClock()
    limiter = fake_limiter(clock, tokens_per_minute=600)  # 10 tokens a second
    client = backend(openai_stub.base_url, concurrency=1, rate_limiter=limiter)
    client.generate(["abcd", "efgh"], max_new_tokens=99)  # each reserves 1 + 99 tokens; usage says 11 + 3
    # The first goes at once and owes 90, corrected to 4 once its usage (14) is known: the second waits
    # (10 + 4) / 10 s, not (10 + 90) / 10 s.
    assert clock.sleeps == [pytest.approx(1.4)]


def test_retry_after_as_seconds_or_http_date() -> None:
    now = 1_445_412_475.0  # Wed, 21 Oct 2015 07:27:55 GMT
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("0.5", now) == 0.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now) == pytest.approx(5.0)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0.0  # already past: go now
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None
    assert retry_after_seconds("-3", now) is None


def test_reset_durations_as_openai_writes_them() -> None:
    assert parse_duration("1s") == 1.0 and parse_duration("6m0s") == 360.0 and parse_duration("20ms") == 0.02
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5) and parse_duration("0.25") == 0.25
    assert parse_duration("") is None and parse_duration("5 minutes") is None
    now = 1_445_412_475.0
    assert reset_seconds("2015-10-21T07:28:05Z", now) == pytest.approx(10.0)  # Anthropic-style: a time


def answer(handler: BaseHTTPRequestHandler, payload: dict, headers: dict[str, str] | None = None,
           status: int = 200) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)


def reply(text: str = "ok", usage: dict | None = None) -> dict:
    payload: dict = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    if usage is not None:
        payload["usage"] = usage
    return payload


@pytest.mark.parametrize("kind,reset,pause", [("requests", "2.5s", 2.5), ("tokens", "1m30s", 90.0)])
def test_x_ratelimit_remaining_zero_pauses_until_the_reset(stalling_server, kind: str, reset: str,
                                                           pause: float) -> None:
    seen: list[float] = []
    clock = FakeClock()

    def server(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
        seen.append(clock.now)
        spent = {f"x-ratelimit-remaining-{kind}": "0", f"x-ratelimit-reset-{kind}": reset} if len(seen) == 1 else {}
        answer(handler, reply(usage={"prompt_tokens": 5, "completion_tokens": 2}),
               {"x-ratelimit-remaining-requests": "7", **spent})

    client = backend(stalling_server(server), concurrency=1, rate_limiter=fake_limiter(clock))
    client.generate(["a", "b", "c"])
    assert clock.sleeps == [pytest.approx(pause)]  # once, before the second request; the third went at once
    assert [t - seen[0] for t in seen] == [0.0, pytest.approx(pause), pytest.approx(pause)]


def test_a_429_with_retry_after_pauses_every_request(stalling_server) -> None:
    clock = FakeClock()
    tries: list[float] = []

    def server(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
        tries.append(clock.now)
        if len(tries) == 1:
            answer(handler, {"error": {"message": "slow down"}}, {"retry-after-ms": "20"}, status=429)
        else:
            answer(handler, reply(usage={"prompt_tokens": 5, "completion_tokens": 2}))

    limiter = fake_limiter(clock)
    client = backend(stalling_server(server), concurrency=1, rate_limiter=limiter)
    client.generate(["a"])
    # The SDK waited the 20 ms itself (real clock); the rate limiter, shared by every request of the
    # client, held them all for as long (its fake clock shows the hold).
    assert limiter.pause_reason == "HTTP 429 with Retry-After" and clock.sleeps == [pytest.approx(0.02)]
    assert client.usage()["retries"] == 1.0 and client.usage()["requests"] == 1.0


def test_usage_with_native_n_counts_the_prompt_once_and_splits_the_completions(openai_stub: StubServer) -> None:  # noqa: F811
    client = backend(openai_stub.base_url, native_n=True, price_per_million_input=2.5, price_per_million_output=10.0)
    result = client.generate(["a", "b"], n=4)  # the stub: usage 11 prompt tokens, 3 per choice
    assert all(sum(g.completion_tokens for g in row) == 12 for row in result)  # usage's 12, split over 4 choices
    assert all(g.prompt_tokens == 11 for row in result for g in row)  # each sample's prompt is 11 tokens long
    usage = client.usage()
    assert usage["requests"] == 2 and usage["prompt_tokens"] == 22 and usage["completion_tokens"] == 24
    # 22 prompt tokens at $2.50 per million + 24 completion tokens at $10 per million = $0.000055 + $0.00024
    assert usage["cost_usd"] == pytest.approx(0.000295, abs=1e-12)
    assert usage["estimated_requests"] == 0 and usage["total_tokens"] == 46


def test_usage_without_native_n_counts_every_request(openai_stub: StubServer) -> None:  # noqa: F811
    client = backend(openai_stub.base_url, price_per_million_input=0.15, price_per_million_output=0.6)
    client.generate(["a", "b"], n=3)
    usage = client.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (6, 66, 18)
    assert usage["cost_usd"] == pytest.approx((66 * 0.15 + 18 * 0.6) / 1e6)  # $0.0000207
    client.close()
    assert client.usage() == usage  # still readable once closed


def test_an_answer_without_usage_is_estimated_and_flagged(stalling_server) -> None:
    def server(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
        answer(handler, reply("x" * 40))

    client = backend(stalling_server(server))
    generation = client.generate(["y" * 20])[0][0]
    assert (generation.prompt_tokens, generation.completion_tokens) == (5, 10)  # characters / 4
    assert client.usage()["estimated_requests"] == 1 and client.usage()["completion_tokens"] == 10


def test_split_total_adds_up() -> None:
    assert split_total(12, [3, 3, 3, 3]) == [3, 3, 3, 3]
    assert split_total(10, [1, 1, 1]) == [4, 3, 3]
    assert split_total(7, [10, 0, 30]) == [2, 0, 5]
    assert split_total(5, [0, 0]) == [3, 2] and split_total(0, [4]) == [0] and split_total(3, []) == []


def test_the_pool_stays_full_and_lives_as_long_as_the_backend(stalling_server) -> None:
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def server(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        done.wait(0.03)
        with lock:
            in_flight[0] -= 1
        answer(handler, reply(usage={"prompt_tokens": 1, "completion_tokens": 1}))

    client = backend(stalling_server(server), concurrency=6)
    client.generate([f"p{i}" for i in range(30)])
    pool = client._pool
    client.generate(["again"])
    assert peak[0] == 6 and client._pool is pool  # as many in flight as allowed; one pool for every call
    client.close()
    assert client._pool is None


def test_the_shipped_config_defaults() -> None:
    cfg = OmegaConf.load(CONFIG)
    assert cfg.concurrency == 32 and cfg.requests_per_minute is None and cfg.tokens_per_minute is None
    assert cfg.price_per_million_input >= 0 and cfg.price_per_million_output >= 0
    built = instantiate(cfg)
    assert built.concurrency == 32 and built.http.meter.price_in == cfg.price_per_million_input
    assert built.usage()["cost_usd"] == 0.0


# --- a real OpenAI-compatible server: llama-cpp-python's, over the bundled SmolLM2 GGUF -----------

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None,
    reason="llama-cpp-python[server] is not installed (pip install 'lettingo[server]')",
)


@pytest.fixture
def llama_server() -> Iterator[LlamaServer]:
    """The llama.cpp server of the benchmarks, one thread, on a free port; stopped after the test."""
    with LlamaServer(threads=1) as server:
        yield server


@pytest.mark.slow
@needs_llama_cpp
def test_real_server_chat_and_completions(llama_server: LlamaServer) -> None:
    # llama.cpp reuses the KV cache of the request before, and a prompt evaluated from another cached
    # state differs in the last bits: even seeded, a sample at temperature 1 is not reproducible across
    # runs (seen failing after the same warm-up request). So the repeat check decodes greedily; that the
    # per-sample seed reaches the server is checked against the stub server above.
    chat = OpenAIBackend("smollm2", "smollm2", base_url=llama_server.base_url, concurrency=1)
    prompt = chat.render("Describe a fan of crime dramas in one sentence.")

    def run() -> list[list]:
        chat.generate([chat.render("Say hi.")], max_new_tokens=2, temperature=0.0)
        before = chat.usage()
        out = chat.generate([prompt], n=2, max_new_tokens=12, temperature=0.0)
        usage = {k: v - before[k] for k, v in chat.usage().items()}  # the server's exact counts, a request per sample
        assert usage["requests"] == 2 and usage["estimated_requests"] == 0 and usage["cost_usd"] == 0.0
        assert usage["completion_tokens"] == sum(g.completion_tokens for g in out[0])
        assert usage["prompt_tokens"] == sum(g.prompt_tokens for g in out[0])
        return out

    result = run()
    assert [len(row) for row in result] == [2]
    assert all(g.text.strip() and 1 <= g.completion_tokens <= 12 and g.prompt_tokens > 10 for g in result[0])
    again = run()
    assert [g.text for g in again[0]] == [g.text for g in result[0]]  # the same request, the same answer
    base = OpenAIBackend("smollm2", "smollm2", base_url=llama_server.base_url, chat=False, lead_in="\nProfile:")
    assert base.generate([base.render("Toy Story 5/5.")], max_new_tokens=5, temperature=0)[0][0].completion_tokens <= 5


@pytest.mark.slow
@needs_llama_cpp
def test_real_server_restarted_mid_run_is_retried(llama_server: LlamaServer, caplog) -> None:
    client = OpenAIBackend("smollm2", "smollm2", base_url=llama_server.base_url, concurrency=1, max_retries=8)
    assert client.generate(["Say hi."], max_new_tokens=4)[0][0].text is not None
    llama_server.stop()
    restarter = threading.Timer(1.0, llama_server.start)
    restarter.start()
    try:
        result = client.generate(["Name a movie genre."], max_new_tokens=6)  # sent while the server is down
    finally:
        restarter.join()
    assert result[0][0].completion_tokens >= 1
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries and all("connection error" in m for m in retries)  # it did fail first, then got through


@pytest.mark.slow
@needs_llama_cpp
def test_real_server_gone_gives_a_clear_error(llama_server: LlamaServer) -> None:
    llama_server.stop()
    client = OpenAIBackend("smollm2", "smollm2", base_url=llama_server.base_url, max_retries=2)
    with pytest.raises(BackendUnavailable, match=f"at {llama_server.base_url}/chat/completions after 3 tries"):
        client.generate(["x"], max_new_tokens=2)
