"""A real OpenAI-compatible server for the benchmarks and the slow tests: ``python -m llama_cpp.server``
over the bundled SmolLM2 GGUF on 127.0.0.1, served under the model name ``smollm2``.

Needs the ``server`` extra (``pip install 'lettingo[server]'``). The benchmarks import it from the
folder next to them; tests/test_llm_openai.py puts this folder on ``sys.path``.

    with LlamaServer(threads=1) as server:
        OpenAIBackend("smollm2", "smollm2", base_url=server.base_url).generate(["Say hi."])
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx

from lettingo.llm.bundled import bundled_gguf

MODEL_ALIAS = "smollm2"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on one fixed port (a free one by default), started and stopped at will.

    As a context manager it is started on entry and stopped on exit. :meth:`stop` then :meth:`start`
    restarts it on the same port, so a client keeps its ``base_url`` (the retry tests do that).
    """

    def __init__(self, threads: int = 1, n_ctx: int = 1024, port: int | None = None,
                 startup_timeout_s: float = 120.0) -> None:
        self.port = free_port() if port is None else port
        self.startup_timeout_s = startup_timeout_s
        self.command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf("smollm2_135m", "unused")),
            "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", str(threads), "--n_ctx", str(n_ctx),
            "--model_alias", MODEL_ALIAS,
        ]
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, ``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Start the server and wait until it lists its model; raise if it exits or is not up in time."""
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RuntimeError(f"llama_cpp.server exited with {code}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"llama_cpp.server did not start within {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop the server (if running) and wait for it to exit."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
