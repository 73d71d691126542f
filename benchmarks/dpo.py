"""Seconds per preference pair and peak memory: our DPO LightningModule vs TRL's DPOTrainer.

Same model (the bundled SmolLM2-135M-Instruct), same pairs, same micro-batch, same LoRA, one epoch,
each engine in its own process (so peak RSS is its own). Pairs come from a run folder's `pairs`
artifact (``--run-dir``), else are built from ML-100K: the real LettinGo generator prompt of each
user (H=30, chat template) with made-up profiles of realistic length. CPU seconds are reported
beside wall seconds because this machine is shared: they move less with other processes' load.

Run: .venv/bin/python benchmarks/dpo.py --pairs 16 --batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "bundled:smollm2_135m"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
ENGINES = {
    # name: (engine, settings)
    "ours": ("ours", {"share_prompt": True, "precompute": True, "dtype": "float32"}),
    "ours_no_sharing": ("ours", {"share_prompt": False, "precompute": True, "dtype": "float32"}),
    "ours_bf16": ("ours", {"share_prompt": True, "precompute": True, "dtype": "bfloat16"}),
    "trl_default": ("trl", {"gradient_checkpointing": True, "precompute": False}),
    # Without gradient checkpointing TRL keeps the activations of 2 x batch full sequences (~3 MB per
    # token in float32): at batch 4 of these ~1000-token prompts ~25 GB, more than this machine has
    # (such a run was killed here), so the CPU-feasible tuning of TRL is precomputing alone.
    "trl_precompute": ("trl", {"gradient_checkpointing": True, "precompute": True}),
}


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (ru_maxrss is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def synthetic_pairs(n: int, cache_dir: str, per_user: int = 4, seed: int = 0):
    """``n`` pairs over ML-100K users: real generator prompts, made-up profiles of 40-96 tokens.

    With ``per_user=4`` each user gets 4 profiles, 2 "correct" and 2 "wrong", and so 4 pairs (rule
    ``all`` for a user with N = 4 profiles half right); with ``per_user=1`` one pair per user (rule
    ``margin``), so only chosen and rejected share a prompt.
    """
    import numpy as np
    import pandas as pd
    import torch
    from hydra import compose, initialize_config_dir

    from lettingo import CONFIG_DIR
    from lettingo.artifacts import SAMPLES, ArtifactStore
    from lettingo.llm.models import load_causal_lm
    from lettingo.pipeline import run
    from lettingo.profiles.prompts import build_instruction, history_items
    from lettingo.run_folders import register_resolvers

    register_resolvers()
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        # The data stage makes the samples (it keeps the torch thread count this worker was given).
        cfg = compose(config_name="config", overrides=[f"paths.run_dir={tmp}", "stage=data", "logger=none",
                                                       f"num_threads={torch.get_num_threads()}"])
        run(cfg)
        samples = ArtifactStore(tmp).read_table(SAMPLES)
    _, tokenizer = load_causal_lm(MODEL, cache_dir)
    rng = np.random.default_rng(seed)
    users = samples[samples["split"] == "profile_train_h30"].head((n + per_user - 1) // per_user)
    rows = []
    for sample in users.to_dict("records"):
        instruction = build_instruction(sample, cfg.prompt, 30, cfg.dataset.item_text)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                               add_generation_prompt=True)
        items = history_items(sample, 30)
        texts = []
        for _ in range(4):
            words, target = [], int(rng.integers(40, 97))
            for i in rng.permutation(len(items)):
                item = items[i]
                words.append(f"{'Likes' if item['rating'] >= 4 else 'Dislikes'} {item['title']} "
                             f"({', '.join(item['attributes'][:2])}).")
                if len(tokenizer(" ".join(words))["input_ids"]) >= target:
                    break
            texts.append(" ".join(words))
        rows += [{"user_id": str(sample["user_id"]), "prompt": prompt, "chosen": texts[c], "rejected": texts[r]}
                 for c in (0, 1) for r in (2, 3)][:per_user]
    return pd.DataFrame(rows[:n])


def load_pairs(args: argparse.Namespace):
    """The benchmark pairs: a run folder's `pairs` artifact, or synthetic ones."""
    if args.run_dir:
        from lettingo.artifacts import ArtifactStore

        return ArtifactStore(args.run_dir).read_table("pairs").sample(frac=1.0, random_state=0).head(args.pairs)
    return synthetic_pairs(args.pairs, args.cache_dir, args.pairs_per_user)


def run_ours(pairs, args: argparse.Namespace, settings: dict) -> dict:
    """One epoch of our DpoModule through the Lightning Trainer; per-step losses recorded."""
    import lightning as L
    import torch

    from lettingo.align.adapters import attach_lora
    from lettingo.align.data import AlignDataModule, preference_examples
    from lettingo.align.dpo import DpoModule
    from lettingo.llm.models import load_causal_lm

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(MODEL, args.cache_dir, dtype=settings["dtype"], device="cpu")
    model = attach_lora(model, LORA)
    examples, cut = preference_examples(pairs, tokenizer, args.max_prompt_tokens, args.max_completion_tokens)
    data = AlignDataModule(examples, [], args.batch, tokenizer.pad_token_id, seed=0)
    module = DpoModule(model, partial(torch.optim.AdamW, lr=args.lr), beta=args.beta,
                       share_prompt=settings["share_prompt"], precompute_reference=settings["precompute"])
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[Record()])
    began, cpu = time.perf_counter(), cpu_seconds()
    trainer.fit(module, datamodule=data)
    return {"wall": time.perf_counter() - began, "cpu": cpu_seconds() - cpu, "losses": losses,
            "prompts_cut": cut.prompts_cut, "completions_cut": cut.completions_cut}


def run_trl(pairs, args: argparse.Namespace, settings: dict) -> dict:
    """One epoch of TRL's DPOTrainer (LoRA via peft_config, as TRL users run it)."""
    import torch

    from lettingo.align.adapters import lora_config
    from lettingo.align.trl_engine import dpo_trainer
    from lettingo.llm.models import load_causal_lm

    model, tokenizer = load_causal_lm(MODEL, args.cache_dir, dtype="float32", device="cpu")
    with tempfile.TemporaryDirectory() as out:
        trainer = dpo_trainer(
            model, tokenizer, pairs, None, Path(out), peft_config=lora_config(**LORA),
            beta=args.beta, lr=args.lr, weight_decay=0.0, micro_batch_size=args.batch, accumulate=1, epochs=1,
            max_steps=-1, max_length=args.trl_max_length, precompute_reference=settings["precompute"],
            max_grad_norm=1.0, seed=0,
            gradient_checkpointing=settings["gradient_checkpointing"], disable_tqdm=True,
        )
        torch.manual_seed(0)
        began, cpu = time.perf_counter(), cpu_seconds()
        trainer.train()
        wall, used = time.perf_counter() - began, cpu_seconds() - cpu
    return {"wall": wall, "cpu": used, "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r]}


def worker(args: argparse.Namespace) -> None:
    """Run one engine and print its result as one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    engine, settings = ENGINES[args.worker]
    pairs = load_pairs(args)
    load_before = os.getloadavg()[0]
    result = (run_ours if engine == "ours" else run_trl)(pairs, args, settings)
    n = len(pairs)
    print(json.dumps({"engine": args.worker, "pairs": n, "batch": args.batch, "s_per_pair": result["wall"] / n,
                      "cpu_s_per_pair": result["cpu"] / n, "peak_rss_gb": peak_rss_gb(),
                      "load_avg": [load_before, os.getloadavg()[0]], **result}))


def main() -> None:
    """Run each engine in a fresh process and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16, help="preference pairs (one epoch over them)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per micro-batch (both engines)")
    parser.add_argument("--engines", default="ours,trl_default", help=f"comma-separated, from {list(ENGINES)}")
    parser.add_argument("--pairs-per-user", type=int, default=4, choices=(1, 2, 3, 4),
                        help="synthetic pairs per user: 4 (rule all, 2 right x 2 wrong) or 1 (rule margin)")
    parser.add_argument("--run-dir", default=None, help="take the pairs from this run folder's pairs artifact")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/lettingo/models"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--max-prompt-tokens", type=int, default=2048, help="ours: longer prompts lose their start")
    parser.add_argument("--max-completion-tokens", type=int, default=128, help="ours: longer profiles lose their end")
    parser.add_argument("--trl-max-length", type=int, default=None,
                        help="TRL max_length (its default 1024 would cut these ~1000-token prompts' completions)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = []
    for name in args.engines.split(","):
        command = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:  # e.g. killed for memory (-9): recorded, the others still run
            results.append({"engine": name, "failed": done.returncode, "stderr": done.stderr[-2000:]})
            print(f"{name} failed (exit {done.returncode})", file=sys.stderr, flush=True)
        else:
            results.append(json.loads(lines[-1]))
            print(f"{name}: {results[-1]['s_per_pair']:.2f} s/pair", file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    print("| engine | s/pair (wall) | CPU s/pair | peak RSS (GB) | first / last step loss | load avg |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "failed" in r:
            print(f"| {r['engine']} | failed (exit {r['failed']}) | | | | |")
            continue
        loss = f"{r['losses'][0]:.4f} / {r['losses'][-1]:.4f}" if r["losses"] else "-"
        print(f"| {r['engine']} | {r['s_per_pair']:.2f} | {r['cpu_s_per_pair']:.2f} | {r['peak_rss_gb']:.2f} | {loss} "
              f"| {r['load_avg'][0]:.1f} -> {r['load_avg'][1]:.1f} |")


if __name__ == "__main__":
    main()
