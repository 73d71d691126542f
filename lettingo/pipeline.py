"""Stage entry points: compose, instantiate, run, log. Thin by design; the work lives in the stages."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import lettingo
from lettingo.align.stage import run_align
from lettingo.artifacts import ArtifactStore, write_json_atomic
from lettingo.data.stage import run_data
from lettingo.feedback.evaluate import run_evaluate
from lettingo.feedback.train import run_train_rec
from lettingo.held_out import run_test
from lettingo.profiles.stage import run_explore
from lettingo.runtime import RunContext, seed_everything

log = logging.getLogger(__name__)

Stage = Callable[[RunContext], dict[str, Any]]


def data_stage(ctx: RunContext) -> dict[str, Any]:
    """Samples and splits."""
    summary = run_data(ctx.cfg, ctx.store)
    ctx.tracker.log_metrics(
        {f"data/{split}/users": n for split, n in summary["split_sizes"].items()}
        | {"data/all/interactions": summary["interactions"]}
    )
    return summary


#: The stages in the order `stage=pipeline` runs them.
STAGES: dict[str, Stage] = {
    "data": data_stage,
    "explore": run_explore,
    "train_rec": run_train_rec,
    "evaluate": run_evaluate,
    "align": run_align,
    "test": run_test,
}


def pipeline_stage(ctx: RunContext) -> dict[str, Any]:
    """Every stage in order; each reuses its artifacts when they exist for the same inputs."""
    results = {}
    for name, stage in STAGES.items():
        log.info("=== stage %s ===", name)
        results[name] = stage(ctx)
    artifacts = sorted(p.name for p in ctx.run_dir.iterdir() if (p / "_meta.json").exists() or p.suffix == ".json")
    print("artifacts in " + str(ctx.run_dir) + ":\n" + "\n".join(f"  {ctx.run_dir / a}" for a in artifacts))
    return results


def save_run_config(cfg: DictConfig, run_dir: Path) -> Path:
    """Write the resolved config and the package version beside the results."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record = {"lettingo_version": lettingo.__version__, "config": resolved}
    return write_json_atomic(run_dir / "run_config.json", record)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stage in its run folder; the tracker is closed whatever happens."""
    stages = {**STAGES, "pipeline": pipeline_stage}
    if cfg.stage not in stages:
        raise ValueError(f"unknown stage {cfg.stage!r}; choose one of {sorted(stages)}")
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(int(cfg.seed), cfg.get("num_threads"))
    save_run_config(cfg, run_dir)
    tracker = instantiate(cfg.logger)
    try:
        tracker.log_config(OmegaConf.to_container(cfg, resolve=True))
        result = stages[cfg.stage](RunContext(cfg=cfg, run_dir=run_dir, store=ArtifactStore(run_dir), tracker=tracker))
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    return result
