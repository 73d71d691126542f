"""What a generator prompt costs on this machine: prefill and generation seconds per profile.

Builds the real LettinGo prompts of the first ``--users`` profile-training users of a run folder's
samples (its saved config, with ``--set key=value`` overrides applied, e.g. the compact prompt of
experiment=ml1m_cpu), then times the local backend at n=4 samples per prompt (8 prompts: how explore
runs) and at n=1 (32 prompts: how the test stage runs), once with one new token (the prefill) and
once with ``--max-new-tokens``. Budget a run's generation with these numbers: on a CPU without native
bfloat16 the prefill, not the decoding, dominates a long prompt.

    .venv/bin/python benchmarks/prompt_cost.py outputs/ml1m_cpu_k3/latest
    .venv/bin/python benchmarks/prompt_cost.py outputs/ml1m_cpu_k3/latest --set prompt.listed_items=null \\
        --set prompt.item_attributes=true
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from lettingo.llm.local import LocalBackend
from lettingo.profiles.prompts import build_instruction
from lettingo.reports import RUN_CONFIG_FILE

#: (samples per prompt, prompts per call): explore's shape, then the test stage's.
SHAPES = ((4, 8), (1, 32))


def run_prompts(folder: Path, overrides: Sequence[str], users: int) -> tuple[list[str], dict]:
    """The rendered instructions of the first ``users`` profile-training users of ``folder``, and the config."""
    cfg = OmegaConf.create(json.loads((folder / RUN_CONFIG_FILE).read_text())["config"])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    samples = pd.read_parquet(folder / "samples" / "data.parquet")
    rows = samples[samples["split"].str.startswith("profile_train")].head(users).to_dict("records")
    history = int(cfg.history.length)
    return [build_instruction(s, cfg.prompt, history, cfg.dataset.item_text) for s in rows], cfg


def main(argv: Sequence[str] | None = None) -> None:
    """Print prompt tokens and seconds per profile for explore's and the test stage's batch shapes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder with samples/ and run_config.json")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--users", type=int, default=32, help="prompts built (at least 32)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per profile")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    prompts, cfg = run_prompts(args.run, args.set, max(args.users, 32))
    backbone = cfg.sampling.backbones.primary
    torch.set_num_threads(args.threads)
    backend = LocalBackend(str(backbone.name), str(backbone.model), cfg.paths.model_cache, batch_size=32,
                           dtype=str(backbone.dtype))
    rendered = [backend.render(p) for p in prompts]
    tokens = sum(backend.count_tokens(r) for r in rendered) / len(rendered)
    print(f"{backbone.name} ({backend.model.dtype}), {args.threads} threads; overrides {args.set or 'none'}; "
          f"prompt {tokens:.0f} tokens on average")
    print("| samples per prompt | prompts | prefill s/profile | prefill tok/s | total s/profile "
          f"({args.max_new_tokens} new tokens) |\n|--:|--:|--:|--:|--:|")
    for n, count in SHAPES:
        timings = []
        for new_tokens in (1, args.max_new_tokens):
            began = time.perf_counter()
            backend.generate(rendered[:count], n=n, max_new_tokens=new_tokens, seed=0)
            timings.append(time.perf_counter() - began)
        profiles = n * count
        print(f"| {n} | {count} | {timings[0] / profiles:.2f} | {tokens * count / timings[0]:.0f} | "
              f"{timings[1] / profiles:.2f} |")


if __name__ == "__main__":
    main()
