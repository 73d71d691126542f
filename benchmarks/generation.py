"""Generation speed of the local backend against plain one-at-a-time ``model.generate`` and llama.cpp.

For each bundled model: the local backend at batch 1, 8 and 32 (float32 and bfloat16), and at
batch 32 with n=4 samples per prompt (one shared prefill per prompt, as exploration runs it);
and two references on the same prompts in the same run: ``model.generate`` one prompt at a time,
and llama-cpp-python one stream on the same GGUF file (skipped if llama_cpp is not installed).
Each configuration runs in its own process, so its peak RSS is its own. Numbers include the
prompt's prefill: tokens/s = new tokens / wall seconds of the whole call.

    .venv/bin/python benchmarks/generation.py --threads 1 --out /tmp/generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from lettingo.llm.prompting import TokenizerPrompts

MODELS = ["smollm2_135m", "gemma3_270m"]
LEAD_IN = "\n\nUser profile:\n"
REFERENCE_PROMPTS = 4  # the one-at-a-time references run on the first prompts only: their rate is per token

# MovieLens-100K titles and genres: the prompts rate a random subset of them.
MOVIES = [
    ("Toy Story (1995)", "Animation|Children's|Comedy"),
    ("GoldenEye (1995)", "Action|Adventure|Thriller"),
    ("Four Rooms (1995)", "Thriller"),
    ("Get Shorty (1995)", "Action|Comedy|Drama"),
    ("Copycat (1995)", "Crime|Drama|Thriller"),
    ("Twelve Monkeys (1995)", "Drama|Sci-Fi"),
    ("Babe (1995)", "Children's|Comedy|Drama"),
    ("Dead Man Walking (1995)", "Drama"),
    ("Richard III (1995)", "Drama|War"),
    ("Seven (Se7en) (1995)", "Crime|Thriller"),
    ("Usual Suspects, The (1995)", "Crime|Thriller"),
    ("Mighty Aphrodite (1995)", "Comedy"),
    ("Postino, Il (1994)", "Drama|Romance"),
    ("Mr. Holland's Opus (1995)", "Drama"),
    ("French Twist (1995)", "Comedy|Romance"),
    ("From Dusk Till Dawn (1996)", "Action|Comedy|Crime|Horror"),
    ("Braveheart (1995)", "Action|Drama|War"),
    ("Taxi Driver (1976)", "Drama|Thriller"),
    ("Apollo 13 (1995)", "Action|Drama|Thriller"),
    ("Batman Forever (1995)", "Action|Adventure|Comedy"),
    ("Crimson Tide (1995)", "Drama|Thriller|War"),
    ("Desperado (1995)", "Action|Romance|Thriller"),
    ("Free Willy 2 (1995)", "Adventure|Children's|Drama"),
    ("Mad Love (1995)", "Drama|Romance"),
    ("Star Wars (1977)", "Action|Adventure|Romance|Sci-Fi|War"),
    ("Pulp Fiction (1994)", "Crime|Drama"),
    ("Shawshank Redemption, The (1994)", "Drama"),
    ("Forrest Gump (1994)", "Comedy|Romance|War"),
    ("Lion King, The (1994)", "Animation|Children's|Musical"),
    ("Mask, The (1994)", "Comedy|Crime|Fantasy"),
    ("Fargo (1996)", "Crime|Drama|Thriller"),
    ("Heat (1995)", "Action|Crime|Thriller"),
    ("Sense and Sensibility (1995)", "Drama|Romance"),
    ("Jurassic Park (1993)", "Action|Adventure|Sci-Fi"),
    ("Blade Runner (1982)", "Film-Noir|Sci-Fi"),
    ("Fugitive, The (1993)", "Action|Thriller"),
    ("Terminator 2: Judgment Day (1991)", "Action|Sci-Fi|Thriller"),
    ("Groundhog Day (1993)", "Comedy|Romance"),
    ("Silence of the Lambs, The (1991)", "Drama|Thriller"),
    ("Aladdin (1992)", "Animation|Children's|Comedy"),
    ("Godfather, The (1972)", "Action|Crime|Drama"),
    ("Casablanca (1942)", "Drama|Romance|War"),
    ("Princess Bride, The (1987)", "Action|Adventure|Comedy|Romance"),
    ("Alien (1979)", "Action|Horror|Sci-Fi"),
    ("Raiders of the Lost Ark (1981)", "Action|Adventure"),
    ("Titanic (1997)", "Action|Drama|Romance"),
    ("Scream (1996)", "Horror|Thriller"),
    ("Contact (1997)", "Drama|Sci-Fi"),
    ("Independence Day (ID4) (1996)", "Action|Sci-Fi|War"),
    ("English Patient, The (1996)", "Drama|Romance|War"),
    ("Liar Liar (1997)", "Comedy"),
    ("Air Force One (1997)", "Action|Thriller"),
]

INSTRUCTION = (
    "Here are the movies a user rated, oldest first, each with its genres and the user's rating out of 5:\n"
    "{items}\n"
    "The user's mean rating is {mean:.2f}.\n"
    "Write a short profile of this user's tastes: what they like and dislike, and how generous their ratings "
    "are, so that someone could predict how they would rate a new movie."
)


def profile_instructions(count: int, items: int = 10, seed: int = 0) -> list[str]:
    """``count`` profile-writing instructions, each listing ``items`` rated movies (10: ~300 tokens)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        picked = rng.sample(MOVIES, items)
        ratings = [rng.choice([1, 2, 3, 3, 4, 4, 4, 5, 5]) for _ in picked]
        lines = "\n".join(f"{title} [{genres}]: {r}/5" for (title, genres), r in zip(picked, ratings, strict=True))
        out.append(INSTRUCTION.format(items=lines, mean=sum(ratings) / len(ratings)))
    return out


def configurations(model: str) -> list[dict]:
    """Every measured configuration of one model, references first."""
    runs = [
        {"model": model, "engine": "hf_generate", "batch": 1, "n": 1, "prompts": REFERENCE_PROMPTS},
        {"model": model, "engine": "llama_cpp", "batch": 1, "n": 1, "prompts": REFERENCE_PROMPTS},
    ]
    for dtype in ("float32", "bfloat16"):
        for batch in (1, 8, 32):
            runs.append(
                {
                    "model": model,
                    "engine": "local",
                    "dtype": dtype,
                    "batch": batch,
                    "n": 1,
                    "prompts": max(batch, REFERENCE_PROMPTS),
                }
            )
        runs.append({"model": model, "engine": "local", "dtype": dtype, "batch": 32, "n": 4, "prompts": 8})
    return runs


def measure(run: dict, args: argparse.Namespace) -> dict:
    """Run one configuration in this process and return its numbers (model loading not timed)."""
    import torch

    torch.set_num_threads(args.threads)
    engine = {"local": _local, "hf_generate": _hf_generate, "llama_cpp": _llama_cpp}[run["engine"]]
    new_tokens, seconds, prompt_tokens = engine(run, args)
    return run | {
        "prompt_tokens": round(prompt_tokens),
        "new_tokens": new_tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(new_tokens / seconds, 1),
        "profiles_per_s": round(run["prompts"] * run["n"] / seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _prompts(prompter, run: dict, args: argparse.Namespace) -> tuple[list[str], float]:
    """The run's rendered prompts and their mean length in tokens."""
    prompts = [prompter.render(i) for i in profile_instructions(run["prompts"], items=args.items)]
    return prompts, sum(prompter.count_tokens(p) for p in prompts) / len(prompts)


def _local(run: dict, args: argparse.Namespace) -> tuple[int, float, float]:
    """The local backend: length-bucketed batches, shared prefill for the n samples."""
    from lettingo.llm.local import LocalBackend

    backend = LocalBackend(
        run["model"],
        f"bundled:{run['model']}",
        args.cache_dir,
        lead_in=LEAD_IN,
        batch_size=run["batch"],
        dtype=run["dtype"],
    )
    prompts, prompt_tokens = _prompts(backend, run, args)
    began = time.perf_counter()
    result = backend.generate(prompts, n=run["n"], temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    seconds = time.perf_counter() - began
    return sum(g.completion_tokens for row in result for g in row), seconds, prompt_tokens


def _hf_generate(run: dict, args: argparse.Namespace) -> tuple[int, float, float]:
    """Reference: plain ``model.generate``, one prompt at a time, float32, transformers' default attention."""
    import torch

    from lettingo.llm.models import load_causal_lm

    model, tokenizer = load_causal_lm(f"bundled:{run['model']}", args.cache_dir, dtype="float32", device="cpu")
    prompter = _Prompter(tokenizer)
    prompts, prompt_tokens = _prompts(prompter, run, args)
    torch.manual_seed(0)
    began, total = time.perf_counter(), 0
    for prompt in prompts:
        ids = torch.tensor([prompter.encode(prompt)])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        total += out.shape[1] - ids.shape[1]
    return total, time.perf_counter() - began, prompt_tokens


class _Prompter(TokenizerPrompts):
    """Renders and encodes prompts exactly like the local backend, given its tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.lead_in = LEAD_IN


def _llama_cpp(run: dict, args: argparse.Namespace) -> tuple[int, float, float]:
    """Reference: llama-cpp-python, one stream, on the same GGUF and the same prompt tokens."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from lettingo.llm.bundled import bundled_gguf
    from lettingo.llm.models import resolve_model_path

    prompter = _Prompter(AutoTokenizer.from_pretrained(resolve_model_path(f"bundled:{run['model']}", args.cache_dir)))
    prompts, prompt_tokens = _prompts(prompter, run, args)
    llm = Llama(
        model_path=str(bundled_gguf(run["model"], args.cache_dir)),
        n_ctx=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_batch=512,
        seed=0,
        verbose=False,
    )
    began, total = time.perf_counter(), 0
    for prompt in prompts:
        out = llm.create_completion(
            prompter.encode(prompt),
            max_tokens=args.max_new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=0,
        )
        total += out["usage"]["completion_tokens"]
    return total, time.perf_counter() - began, prompt_tokens


def main() -> None:
    """Parse the command line; run every configuration in a subprocess, or one (``--one``) here."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--threads", type=int, default=2, help="torch / llama.cpp CPU threads")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--items", type=int, default=10, help="rated movies per prompt (10: about 300 tokens)")
    parser.add_argument(
        "--cache-dir", default=os.environ.get("LETTINGO_MODEL_CACHE", Path.home() / ".cache" / "lettingo" / "models")
    )
    parser.add_argument("--engines", nargs="+", default=["hf_generate", "llama_cpp", "local"])
    parser.add_argument("--out", type=Path, help="also write all results as JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one configuration (JSON), run in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one), args)), flush=True)
        return
    results = []
    for model in args.models:
        for run in configurations(model):
            if run["engine"] not in args.engines:
                continue
            if run["engine"] == "llama_cpp" and _missing("llama_cpp"):
                print(f"skip llama_cpp for {model}: llama-cpp-python is not installed", file=sys.stderr)
                continue
            command = [sys.executable, __file__, "--one", json.dumps(run), *sys.argv[1:]]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(_row(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _row(r: dict) -> str:
    name = r["engine"] + (f" {r['dtype']}" if r["engine"] == "local" else "")
    return (
        f"{r['model']:13} {name:16} batch {r['batch']:>2} n {r['n']} prompts {r['prompts']:>2} "
        f"({r['prompt_tokens']:.0f} tok): {r['tokens_per_s']:7.1f} tok/s {r['profiles_per_s']:6.3f} profiles/s "
        f"peak RSS {r['peak_rss_mb']} MB ({r['seconds']} s)"
    )


if __name__ == "__main__":
    main()
