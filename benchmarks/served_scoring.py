"""Throughput of the served f_Rec (ServedLabelScorer) against a local llama.cpp server on SmolLM2, by concurrency.

Starts the server as tests/test_llm_openai.py does (benchmarks/llama_cpp_server.py), builds
``--users x --profiles`` ML-100K cases (the user-fact sentences as profile, in another order for
each profile, as benchmarks/scoring.py does; a user's cases are consecutive) and scores them with
``recommender=llm_served`` at each concurrency and ``top_logprobs``. Prints cases/s and requests per
case (a label outside the top log-probs costs one more request). ``--reference`` also times the
in-process ZeroShotLLM (float32) on the same cases, with as many torch threads as the server has.

Run: .venv/bin/python benchmarks/served_scoring.py --users 8 --profiles 2 --concurrency 1 8 32 --top-logprobs 20 500
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lettingo import CONFIG_DIR
from lettingo.data.samples import build_samples
from lettingo.data.schema import LabelThresholds
from lettingo.data.sources.recbole_movielens import load_ml100k
from lettingo.recommender.cases import RecCase

sys.path.insert(0, str(Path(__file__).parent))
from llama_cpp_server import LlamaServer  # noqa: E402  (the modules next to this one)
from scoring import profile_cases  # noqa: E402


def ml100k_cases(users: int, profiles: int, facts_cfg) -> list[RecCase]:
    """``profiles`` cases per user of the first ``users`` ML-100K users; each profile the facts in another order."""
    return profile_cases(build_samples(load_ml100k(), LabelThresholds(), recent=10, history=30), users, profiles,
                         facts_cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--profiles", type=int, default=2, help="profiles per user")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--top-logprobs", type=int, nargs="+", default=[20, 500])
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp server threads (and torch's, --reference)")
    parser.add_argument("--reference", action="store_true", help="also time the in-process ZeroShotLLM (float32)")
    parser.add_argument("--run-dir", default="outputs/benchmarks/served_scoring")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.run_dir={args.run_dir}", "recommender=llm_served"])
        zero_cfg = compose("config", overrides=[f"paths.run_dir={args.run_dir}", "recommender.model.dtype=float32"])
    cases = ml100k_cases(args.users, args.profiles, cfg.prompt.facts)
    print(f"{len(cases)} cases ({args.users} users x {args.profiles} profiles), {args.threads} thread(s)")
    print("| f_Rec | top_logprobs | concurrency | wall s | cases/s | requests per case |\n|:--|--:|--:|--:|--:|--:|",
          flush=True)

    def row(what: str, k: object, concurrency: object, wall: float, requests: str) -> None:
        print(f"| {what} | {k} | {concurrency} | {wall:.1f} | {len(cases) / wall:.3f} | {requests} |", flush=True)

    if args.reference:
        import torch

        torch.set_num_threads(args.threads)
        model = instantiate(zero_cfg.recommender.model)
        model.predict(cases[:1])  # warm-up
        began = time.perf_counter()
        model.predict(cases)
        wall = time.perf_counter() - began
        row("in-process ZeroShotLLM float32 (prefix reuse)", "-", "-", wall, "-")
        del model
    with LlamaServer(args.threads) as server:
        for k in args.top_logprobs:
            for concurrency in args.concurrency:
                # A one-at-a-time server queues the requests: no per-phase timeout may fire while they wait.
                scorer = instantiate(cfg.recommender.model, base_url=server.base_url, top_logprobs=k,
                                     concurrency=concurrency, timeout=3600.0, request_deadline_s=3600.0)
                scorer.predict(cases[-1:])  # warm-up; leaves the server's cache on another user than the first
                before = scorer.usage()["requests"]
                began = time.perf_counter()
                scorer.predict(cases)
                wall = time.perf_counter() - began
                requests = (scorer.usage()["requests"] - before) / len(cases)
                row("llm_served via llama.cpp server", k, concurrency, wall, f"{requests:.2f}")
                scorer.close()


if __name__ == "__main__":
    main()
