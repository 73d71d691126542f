"""Fixtures for the generation backends: the tiny random model, a scripted OpenAI-compatible stub,
the bundled-model cache of the slow tests, and the GGUF path for a real llama.cpp server."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lettingo.llm.local import LocalBackend


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache folder shared by the tests of a session (tiny_random is built once per seed)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_cache: Path) -> LocalBackend:
    """``LocalBackend`` over ``tiny_random`` (chat template, 512-token vocabulary), float32, one CPU thread."""
    return LocalBackend("tiny_random", "tiny_random", tiny_model_cache, batch_size=4, dtype="float32")


@pytest.fixture(scope="session")
def bundled_model_cache() -> Path:
    """Where the slow tests convert the bundled models: the same default as conf/paths/default.yaml,
    so a conversion made once is reused by every later run."""
    default = Path(os.environ.get("HOME", ".")) / ".cache" / "lettingo" / "models"
    return Path(os.environ.get("LETTINGO_MODEL_CACHE", default))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class StubServer:
    """An OpenAI-compatible stub: answers with the scripted statuses in order, then 200 forever.

    Every request's path, headers (names lower-cased) and JSON body are recorded in ``requests``. A 200
    answers with one choice per requested sample whose text names the request's seed and sample index.
    """

    base_url: str
    statuses: list[int]
    requests: list[dict] = field(default_factory=list)


@pytest.fixture
def openai_stub() -> Iterator[StubServer]:
    """Start a :class:`StubServer` on a free 127.0.0.1 port for one test."""
    stub = StubServer(base_url="", statuses=[])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                headers = {key.lower(): value for key, value in self.headers.items()}  # names are case-insensitive
                stub.requests.append({"path": self.path, "headers": headers, "body": body})
                status = stub.statuses.pop(0) if stub.statuses else 200
            if status != 200:
                # retry-after-ms: the SDK retries after 1 ms instead of its backoff of 0.5 s and more
                self._send(status, {"error": {"message": f"scripted {status}"}}, {"retry-after-ms": "1"})
                return
            n = body.get("n", 1)
            texts = [f"seed={body['seed']} sample={i}" for i in range(n)]
            chat = self.path.endswith("/chat/completions")
            choices = [
                {"index": i, "message": {"role": "assistant", "content": t}} if chat else {"index": i, "text": t}
                for i, t in enumerate(texts)
            ]
            self._send(200, {"choices": choices, "usage": {"prompt_tokens": 11, "completion_tokens": 3 * n}}, {})

        def _send(self, status: int, payload: dict, headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    server.server_close()


#: The LoRA the parity tests train on both sides (ours and TRL's).
PARITY_LORA = {"r": 4, "alpha": 8, "dropout": 0.0,
               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]}


def parity_lora_model(cache: Path, seed: int = 0):
    """The tiny model in float32 with a non-identity LoRA (policy and reference differ): what parity tests train."""
    import torch

    from lettingo.align.adapters import attach_lora
    from lettingo.llm.models import load_causal_lm

    model, tokenizer = load_causal_lm("tiny_random", cache, dtype="float32")  # parity is checked in float32
    torch.manual_seed(seed)
    model = attach_lora(model, PARITY_LORA)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    return model, tokenizer
