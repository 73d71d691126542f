"""Throughput of the API backbone (OpenAIBackend) against a local llama.cpp server on SmolLM2, by concurrency.

Starts ``python -m llama_cpp.server`` on the bundled SmolLM2 GGUF the way tests/test_llm_openai.py
does (one thread, n_ctx 1024, model alias ``smollm2``), then for each concurrency sends the same
fixed small chat prompts (one sample each, temperature 1, seeded, at most ``--max-new-tokens``)
through one ``generate`` call and prints profiles/s and completion tokens/s (tokens from the
server's ``usage``; wall time of the whole call).

Run: .venv/bin/python benchmarks/api_throughput.py --prompts 32 --max-new-tokens 32 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

from lettingo.llm.bundled import bundled_gguf
from lettingo.llm.openai_http import OpenAIBackend

TITLES = ["Star Wars (1977)", "Fargo (1996)", "Toy Story (1995)", "Scream (1996)", "Heat (1995)", "Alien (1979)",
          "Casablanca (1942)", "Twister (1996)"]


class LlamaServer:
    """``python -m llama_cpp.server`` over the bundled SmolLM2 GGUF on a free 127.0.0.1 port (as the tests start it)."""

    def __init__(self, threads: int = 1, n_ctx: int = 1024) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf("smollm2_135m", "unused")),
            "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", str(threads), "--n_ctx", str(n_ctx),
            "--model_alias", "smollm2",
        ]
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaServer:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start within 120 s")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def prompts(count: int) -> list[str]:
    """``count`` fixed short profile requests (about 50 tokens each through SmolLM2's chat template)."""
    return [f"In one sentence, describe the tastes of a viewer who rated {TITLES[i % len(TITLES)]} "
            f"{1 + i % 5}/5 and {TITLES[(3 * i + 1) % len(TITLES)]} {1 + (i + 2) % 5}/5." for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp server threads")
    args = parser.parse_args()
    texts = prompts(args.prompts)
    rows = []
    with LlamaServer(args.threads) as server:
        for concurrency in args.concurrency:
            # A one-at-a-time server queues the requests: no per-phase timeout may fire while they wait.
            backend = OpenAIBackend("smollm2", "smollm2", base_url=server.base_url, api_key_env=None,
                                    concurrency=concurrency, timeout=3600.0, request_deadline_s=3600.0)
            backend.generate(["Say hi."], max_new_tokens=4)  # warm-up: connections, the server's first request
            before = backend.usage()
            began = time.perf_counter()
            out = backend.generate(texts, n=1, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
            wall = time.perf_counter() - began
            usage = {k: v - before[k] for k, v in backend.usage().items()}
            latency = sum(g.seconds for row in out for g in row) / len(texts)
            rows.append((concurrency, len(texts), wall, len(texts) / wall, usage["completion_tokens"] / wall,
                         usage["prompt_tokens"] / len(texts), latency))
            backend.close()
    print(f"{args.prompts} prompts, max_new_tokens {args.max_new_tokens}, llama.cpp server with {args.threads} "
          f"thread(s); tokens from the server's usage")
    print("| concurrency | profiles | wall s | profiles/s | completion tok/s | prompt tokens each | mean latency s |")
    print("|--:|--:|--:|--:|--:|--:|--:|")
    for c, n, wall, per_s, tok_s, prompt, latency in rows:
        print(f"| {c} | {n} | {wall:.1f} | {per_s:.2f} | {tok_s:.1f} | {prompt:.0f} | {latency:.2f} |")


if __name__ == "__main__":
    main()
