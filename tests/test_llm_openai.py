"""OpenAIBackend against a scripted local stub (fast): retries with backoff, errors, seeds, ordering,
the API key from the environment, the total deadline against servers that stall. Against a real
llama.cpp server (slow): a request, a request that succeeds after the server is stopped and started
again, and the message when nothing listens."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fixtures_llm import StubServer, free_port
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.llm.base import sample_seed
from lettingo.llm.openai_http import BackendDeadlineExceeded, BackendRequestError, BackendUnavailable, OpenAIBackend

CONFIG = Path(CONFIG_DIR) / "backbone" / "openai.yaml"


def backend(base_url: str, **kwargs) -> OpenAIBackend:
    options = {"backoff": 0.01, "max_retries": 3, "concurrency": 4, "timeout": 10.0} | kwargs
    return OpenAIBackend("stub", "stub-model", base_url=base_url, **options)


def test_retries_429_then_succeeds(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [429, 429]
    result = backend(openai_stub.base_url).generate(["hello"], n=1, seed=3)
    seed = sample_seed(3, "hello", 0)
    assert result[0][0].text == f"seed={seed} sample=0"
    assert len(openai_stub.requests) == 3
    assert all(r["body"] == openai_stub.requests[0]["body"] for r in openai_stub.requests)


def test_retries_5xx_with_exponential_backoff(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [503, 500, 502]
    client = backend(openai_stub.base_url, backoff=0.05)
    waits: list[float] = []
    client._wait = lambda attempt, retry_after, reason, deadline: waits.append(attempt)  # type: ignore[method-assign]
    assert client.generate(["x"])[0][0].completion_tokens == 3
    assert waits == [0, 1, 2]  # three retries, each one step further along the backoff


def test_backoff_doubles_is_capped_and_honours_retry_after() -> None:
    client = backend("http://127.0.0.1:9", backoff=0.02, max_backoff=0.05)
    sleeps = [client._backoff_delay(attempt, None) for attempt in range(4)]
    sleeps.append(client._backoff_delay(0, "0.03"))  # the server's Retry-After wins over the backoff
    sleeps.append(client._backoff_delay(0, "600"))  # but never beyond max_backoff
    assert 0.01 <= sleeps[0] <= 0.02 and 0.02 <= sleeps[1] <= 0.04  # jittered between half and full
    assert all(0.025 <= s <= 0.05 for s in sleeps[2:4])  # 0.08 and 0.16 capped at 0.05
    assert sleeps[4:] == [0.03, 0.05]


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
    assert openai_stub.requests[0]["headers"]["Authorization"] == "Bearer sk-test-secret"
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


def _silent(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
    done.wait(30)  # reads the request, then never answers


def _trickle(data: bytes, handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
    for i in range(len(data)):
        if done.wait(0.05):
            return
        handler.wfile.write(data[i : i + 1])
        handler.wfile.flush()


def _trickled_headers(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
    # Every byte arrives well within httpx's read timeout, so only a total deadline ends this.
    _trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Slow: " + b"y" * 2000, handler, done)


def _trickled_body(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
    body = b'{"choices": [{"index": 0, "message": {"content": "' + b"z" * 2000 + b'"}}]}'
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    handler.wfile.flush()
    _trickle(body, handler, done)


@pytest.mark.parametrize("behaviour", [_silent, _trickled_headers, _trickled_body], ids=["silent", "headers", "body"])
def test_a_stalled_request_ends_at_its_deadline_with_one_clear_line(stalling_server, behaviour: Behaviour) -> None:
    url = stalling_server(behaviour)
    client = backend(url, timeout=30.0, request_deadline_s=0.6)
    began = time.monotonic()
    with pytest.raises(BackendDeadlineExceeded) as raised:
        client.generate(["x"])
    elapsed = time.monotonic() - began
    assert 0.55 <= elapsed < 3.0  # far below the 30 s per-phase timeout
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"no complete answer from {url}/chat/completions within request_deadline_s=0.6 s (1 try)")
    assert isinstance(raised.value, BackendUnavailable)  # callers that catch "server unusable" catch it too


def test_the_deadline_covers_the_retries_and_the_waits_between_them(stalling_server) -> None:
    tries: list[float] = []

    def busy(handler: BaseHTTPRequestHandler, done: threading.Event) -> None:
        tries.append(time.monotonic())
        handler.send_response(503)
        handler.send_header("Retry-After", "0.3")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    client = backend(stalling_server(busy), max_retries=50, request_deadline_s=1.0)
    began = time.monotonic()
    expected = r"within request_deadline_s=1 s \(\d+ tries, the last failure: HTTP 503\)"
    with pytest.raises(BackendDeadlineExceeded, match=expected):
        client.generate(["x"])
    assert time.monotonic() - began < 3.0
    assert 2 <= len(tries) <= 5  # it retried every 0.3 s, and stopped long before its 51 tries


def test_a_request_that_finishes_in_time_is_unaffected(openai_stub: StubServer) -> None:  # noqa: F811
    openai_stub.statuses = [503]
    result = backend(openai_stub.base_url, request_deadline_s=5.0).generate(["x"], seed=1)
    assert result[0][0].text == f"seed={sample_seed(1, 'x', 0)} sample=0" and len(openai_stub.requests) == 2


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="request_deadline_s must be positive"):
        backend("http://127.0.0.1:9", request_deadline_s=0)


# --- a real OpenAI-compatible server: llama-cpp-python's, over the bundled SmolLM2 GGUF -----------

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None,
    reason="llama-cpp-python[server] is not installed (pip install 'lettingo[server]')",
)


class LlamaServer:
    """``python -m llama_cpp.server`` over the SmolLM2 GGUF on a fixed 127.0.0.1 port."""

    def __init__(self, port: int) -> None:
        from lettingo.llm.bundled import bundled_gguf

        self.port = port
        self.gguf = bundled_gguf("smollm2_135m", "unused")
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            "1",
            "--n_ctx",
            "1024",
            "--model_alias",
            "smollm2",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start within 120 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def llama_server():
    server = LlamaServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
@needs_llama_cpp
def test_real_server_chat_and_completions(llama_server: LlamaServer) -> None:
    chat = OpenAIBackend("smollm2", "smollm2", base_url=llama_server.base_url, concurrency=2)
    result = chat.generate([chat.render("Describe a fan of crime dramas in one sentence.")], n=2, max_new_tokens=12)
    assert [len(row) for row in result] == [2]
    assert all(g.text.strip() and 1 <= g.completion_tokens <= 12 and g.prompt_tokens > 10 for g in result[0])
    again = chat.generate([chat.render("Describe a fan of crime dramas in one sentence.")], n=2, max_new_tokens=12)
    assert [g.text for g in again[0]] == [g.text for g in result[0]]  # the per-sample seed reaches the server
    base = OpenAIBackend("smollm2", "smollm2", base_url=llama_server.base_url, chat=False, lead_in="\nProfile:")
    assert base.generate([base.render("Toy Story 5/5.")], max_new_tokens=5, temperature=0)[0][0].completion_tokens <= 5


@pytest.mark.slow
@needs_llama_cpp
def test_real_server_restarted_mid_run_is_retried(llama_server: LlamaServer, caplog) -> None:
    client = OpenAIBackend(
        "smollm2", "smollm2", base_url=llama_server.base_url, concurrency=1, backoff=0.5, max_retries=8, max_backoff=4.0
    )
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
    assert retries and all("ConnectError" in m for m in retries)  # it did fail first, then got through


@pytest.mark.slow
@needs_llama_cpp
def test_real_server_gone_gives_a_clear_error(llama_server: LlamaServer) -> None:
    llama_server.stop()
    client = OpenAIBackend("smollm2", "smollm2", base_url=llama_server.base_url, backoff=0.05, max_retries=2)
    with pytest.raises(BackendUnavailable, match=f"at {llama_server.base_url}/chat/completions after 3 tries"):
        client.generate(["x"], max_new_tokens=2)
