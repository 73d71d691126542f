"""The stage runner: which stages run, in which process, in which run folder; the config saved with them."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import lettingo
from lettingo.artifacts import ArtifactStore, write_json_atomic
from lettingo.runtime import seed_everything
from lettingo.schemas import validate_config
from lettingo.stages import BY_NAME, STAGES, declarations
from lettingo.stages.base import Stage, StageContext

log = logging.getLogger(__name__)

PIPELINE = "pipeline"
TIMES_FILE = "stage_times.json"


def selected_stages(name: str) -> list[Stage]:
    """The stages `stage=<name>` runs: one, or all of them in order for `pipeline`."""
    if name == PIPELINE:
        return list(STAGES)
    if name not in BY_NAME:
        raise ValueError(f"stage={name}: choose one of {', '.join([*BY_NAME, PIPELINE])}")
    return [BY_NAME[name]]


def process_rank() -> int:
    """This process's global rank under a multi-process launcher (0 when there is none)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def runs_here(stage: Stage) -> bool:
    """The one place that decides whether this process runs ``stage``: rank 0 runs every stage, the other
    ranks of a multi-process trainer only those whose training is distributed."""
    return stage.distributed or process_rank() == 0


def save_run_config(cfg: DictConfig, run_dir: Path, stage: str) -> Path:
    """Write the resolved config and the package version beside the results (per invoked stage, and latest)."""
    record = {"lettingo_version": lettingo.__version__, "stage": stage,
              "config": OmegaConf.to_container(cfg, resolve=True)}
    write_json_atomic(run_dir / "configs" / f"{stage}.json", record)
    return write_json_atomic(run_dir / "run_config.json", record)


def record_time(run_dir: Path, stage: str, seconds: float) -> None:
    """Add a stage's wall time to the run folder's `stage_times.json`."""
    path = run_dir / TIMES_FILE
    times = json.loads(path.read_text()) if path.exists() else {}
    times[stage] = round(seconds, 1)
    write_json_atomic(path, times)


def point_latest(run_dir: Path, experiment_root: Path) -> None:
    """Make `<experiment root>/latest` point at ``run_dir`` when the run folder lives under that root."""
    if run_dir.resolve().parent != experiment_root.resolve():
        return
    link = experiment_root / "latest"
    tmp = experiment_root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate the config, then run the chosen stage(s) in the run folder; the tracker is closed whatever happens."""
    validate_config(cfg)
    stages = selected_stages(str(cfg.stage))
    run_dir = Path(cfg.paths.run_dir)
    store = ArtifactStore(run_dir)
    with store.lock():
        point_latest(run_dir, Path(cfg.paths.output_root) / str(cfg.experiment_name))
        seed_everything(int(cfg.seed), cfg.get("num_threads"))
        save_run_config(cfg, run_dir, str(cfg.stage))
        tracker = instantiate(cfg.logger)
        results: dict[str, Any] = {}
        try:
            tracker.log_config(OmegaConf.to_container(cfg, resolve=True))
            declared = declarations(cfg)
            for stage in stages:
                if not runs_here(stage):
                    continue
                log.info("=== stage %s in %s ===", stage.name, run_dir)
                began = time.perf_counter()
                ctx = StageContext(cfg=cfg, run_dir=run_dir, store=store, tracker=tracker, stage=stage,
                                   declared=declared)
                results[stage.name] = stage.run(ctx)
                seconds = time.perf_counter() - began
                record_time(run_dir, stage.name, seconds)
                tracker.log_metrics({f"{stage.name}/all/seconds": seconds})
                log.info("stage %s took %.1f s", stage.name, seconds)
        except BaseException:
            tracker.finish(exit_code=1)
            raise
        tracker.finish(exit_code=0)
    print(f"run folder: {run_dir}")
    return results[stages[0].name] if len(stages) == 1 else results
