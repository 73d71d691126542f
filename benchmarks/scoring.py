"""Speed of f_Rec on ML-100K users: seconds per profile scored and per training case, for each f_Rec.

LLM label-word scoring is timed with the user's prompt prefix reused across that user's profiles
(the shipped prompt order: profile last) and without (what a profile-first prompt costs: every
profile is a full forward). Profiles are the user-fact sentences of each user's older history
(about as long as a generated profile), varied per sample so no two profiles are equal.

Run: .venv/bin/python benchmarks/scoring.py --users 6 --profiles 4 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.artifacts import SAMPLES, ArtifactStore
from lettingo.pipeline import run
from lettingo.profiles.prompts import history_items
from lettingo.profiles.user_facts import user_facts
from lettingo.recommender.cases import RecCase, case_from_sample, shifted_cases
from lettingo.run_folders import register_resolvers


def profile_cases(samples, users: int, profiles: int, facts_cfg) -> list[RecCase]:
    """``profiles`` cases per user: the user's facts as profile, each sample with another sentence order."""
    cases = []
    for sample in samples.head(users).to_dict("records"):
        facts = user_facts(history_items(sample, 30), facts_cfg)["facts"]
        for j in range(profiles):
            cases.append(case_from_sample(sample, " ".join(facts[j % len(facts):] + facts[: j % len(facts)])))
    return cases


def timed(fn, *args) -> float:
    began = time.perf_counter()
    fn(*args)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--profiles", type=int, default=4, help="profiles per user")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-dir", default="outputs/benchmarks/scoring")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_resolvers()
    common = [f"paths.run_dir={args.run_dir}", f"num_threads={args.threads}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*common, "stage=data", "logger=none"])
        lora_cfg = compose("config", overrides=[*common, "recommender=llm_lora"])
        ce_cfg = compose("config", overrides=[*common, "recommender=cross_encoder"])
    run(cfg)  # the data stage: makes the samples in the run folder, or reuses them
    samples = ArtifactStore(args.run_dir).read_table(SAMPLES)
    samples = samples[samples["split"] == "test"]
    cases = profile_cases(samples, args.users, args.profiles, cfg.prompt.facts)
    train = [c for s in samples.head(8).to_dict("records") for c in shifted_cases(s, cases[0].profile, 2)][:8]
    n = len(cases)
    rows = []

    from lettingo.recommender.llm import ZeroShotLLM

    settings = {k: v for k, v in OmegaConf.to_container(cfg.recommender.model, resolve=True).items() if k != "_target_"}
    for dtype in ("float32", "bfloat16"):
        llm = ZeroShotLLM(**{**settings, "dtype": dtype})
        llm.predict(cases[:2])  # warm-up
        for reuse in (True, False):
            llm.reuse_prefix = reuse
            what = f"llm_zero_shot SmolLM2 predict ({dtype}), prefix reuse={reuse}"
            rows.append((what, timed(llm.predict, cases) / n))
    tokens = [len(e.ids) for e in llm.scorer.encode(cases)]
    prefix = [len(e.prefix) for e in llm.scorer.encode(cases)]
    del llm

    from hydra.utils import instantiate

    for name, rcfg in (("llm_lora SmolLM2", lora_cfg), ("cross_encoder MiniLM", ce_cfg)):
        module = instantiate(rcfg.recommender.model)
        optimizer = module.configure_optimizers()
        batch = int(rcfg.recommender.training.batch_size)

        def step(batch, module=module, optimizer=optimizer) -> None:
            module.train()
            optimizer.zero_grad()
            module.loss(module.collate(batch)).backward()
            optimizer.step()

        for dtype in (torch.float32, torch.bfloat16):  # bf16: autocast, as Lightning's precision=bf16-mixed
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is torch.bfloat16):
                module.predict(cases[:2])
                rows.append((f"{name} predict ({dtype})", timed(module.predict, cases) / n))
                step(train[:batch])
                per_case = timed(partial(step, train[:batch])) / batch
                rows.append((f"{name} train step, batch {batch} ({dtype}), per case", per_case))
        del module

    print(f"{args.users} users x {args.profiles} profiles, {args.threads} threads; LLM prompts "
          f"{sum(tokens) / n:.0f} tokens of which {sum(prefix) / n:.0f} shared prefix")
    print("| what | seconds per case |\n|:--|--:|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
