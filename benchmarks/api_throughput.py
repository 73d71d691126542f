"""Throughput of the API backbone (OpenAIBackend) against a local llama.cpp server on SmolLM2, by concurrency.

Starts ``python -m llama_cpp.server`` on the bundled SmolLM2 GGUF with the launcher the slow tests
use (benchmarks/llama_cpp_server.py: one thread, n_ctx 1024, model alias ``smollm2``), then for each
concurrency sends the same fixed small chat prompts (one sample each, temperature 1, seeded, at most
``--max-new-tokens``) through one ``generate`` call and prints profiles/s and completion tokens/s
(tokens from the server's ``usage``; wall time of the whole call).

Run: .venv/bin/python benchmarks/api_throughput.py --prompts 32 --max-new-tokens 32 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lettingo.llm.openai_http import OpenAIBackend

sys.path.insert(0, str(Path(__file__).parent))
from llama_cpp_server import LlamaServer  # noqa: E402  (the module next to this one)

TITLES = ["Star Wars (1977)", "Fargo (1996)", "Toy Story (1995)", "Scream (1996)", "Heat (1995)", "Alien (1979)",
          "Casablanca (1942)", "Twister (1996)"]


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
