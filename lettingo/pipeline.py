"""The stage runner: which stages run, in which process, in which run folder; the config saved with them.

With one process it runs the chosen stages in order. Under a multi-process trainer (``trainer.devices``
x ``trainer.num_nodes`` > 1, e.g. ``trainer=ddp``) every rank runs :func:`run_stages`: rank 0 runs every
stage and writes every artifact; the other ranks join only the fits of the distributed stages (train_rec,
align) and wait for rank 0 at a process-group barrier after every stage. The ranks are started by
torchrun or SLURM's srun, or by ``lettingo`` itself through torch's elastic launcher (:mod:`lettingo.launch`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import lettingo
from lettingo.align.training import device_count
from lettingo.artifacts import ArtifactStore, write_json_atomic
from lettingo.launch import RANK_LOGS, Ranks, launch, process_group
from lettingo.provenance import code_version, record_invocation
from lettingo.run_folders import external_ranks
from lettingo.run_identity import run_identity
from lettingo.runtime import release_accelerator_memory, seed_everything, show
from lettingo.schemas import DistributedSchema, validate_config
from lettingo.stages import BY_NAME, STAGES, check_declarations, declarations
from lettingo.stages.base import Declared, Stage, StageContext
from lettingo.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)

PIPELINE = "pipeline"
TIMES_FILE = "stage_times.json"
#: Strategies whose workers Lightning starts inside the fit itself (only rank 0 runs our code then).
IN_FIT_WORKERS = ("spawn", "fork", "notebook")


@dataclass(frozen=True)
class Invocation:
    """The command that started this run and its Hydra overrides (a multirun job's own), as recorded."""

    argv: tuple[str, ...]
    overrides: tuple[str, ...]


def selected_stages(name: str, stop_after: str | None = None) -> list[Stage]:
    """The stages `stage=<name>` runs: one, or all of them in order for `pipeline` (up to `stop_after` when set).

    ``stop_after`` only shortens a pipeline; a single stage runs whatever it says.
    """
    if stop_after is not None and stop_after not in BY_NAME:
        raise ValueError(f"stop_after={stop_after}: choose one of {', '.join(BY_NAME)} (or null: every stage)")
    if name == PIPELINE:
        names = [stage.name for stage in STAGES]
        return list(STAGES[: names.index(stop_after) + 1] if stop_after else STAGES)
    if name not in BY_NAME:
        raise ValueError(f"stage={name}: choose one of {', '.join([*BY_NAME, PIPELINE])}")
    return [BY_NAME[name]]


def job_overrides() -> list[str]:
    """This job's Hydra overrides (a multirun job's own); none outside the `lettingo` command line."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def job_choices() -> dict[str, Any]:
    """The option this job picked per config group (``experiment``, ``sweep``, ``sampling``, ...); none outside
    the `lettingo` command line."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def save_run_config(cfg: DictConfig, run_dir: Path, invocation: Invocation) -> Path:
    """Write the resolved config, the package version and the code's commit beside the results (per invoked
    stage, and latest), and append this invocation to the folder's `invocations.jsonl`."""
    version, stage = code_version(), cfg.stage
    record = {"lettingo_version": lettingo.__version__, **version, "stage": stage,
              "config": OmegaConf.to_container(cfg, resolve=True)}
    record_invocation(run_dir, stage, invocation.argv, invocation.overrides, version)
    write_json_atomic(run_dir / "configs" / f"{stage}.json", record)
    return write_json_atomic(run_dir / "run_config.json", record)


def record_time(run_dir: Path, stage: str, seconds: float) -> None:
    """Add a stage's wall time to the run folder's `stage_times.json`.

    The times add up over the invocations that ran the stage in this folder, so a stage resumed after a
    kill or a failure counts every part (a part cut off by SIGKILL is lost); a stage reused whole adds ~0.
    The file is bookkeeping only: an unreadable one is moved aside (named in a warning) and started anew.
    """
    path = run_dir / TIMES_FILE
    times: dict[str, Any] = {}
    if path.exists():
        try:
            times = json.loads(path.read_text())
            if not isinstance(times, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            aside = path.with_name(f"{TIMES_FILE}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            log.warning("%s could not be read (%s): moved aside to %s; stage times start anew", path, error, aside)
            times = {}
    times[stage] = round(float(times.get(stage, 0.0)) + seconds, 1)
    write_json_atomic(path, times)


def point_latest(run_dir: Path, experiment_root: Path) -> None:
    """Make `<experiment root>/latest` point at ``run_dir`` when the run folder lives under that root.

    ``run_dir`` may be the `latest` link itself (``run_dir=outputs/<experiment>/latest`` continues a run):
    the link keeps pointing at the folder it resolves to.
    """
    run_dir = run_dir.resolve()
    if run_dir.parent != experiment_root.resolve():
        return
    link = experiment_root / "latest"
    tmp = experiment_root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def trainer_processes(trainer_cfg: DictConfig) -> int:
    """Processes a fit of this trainer config runs on (devices x nodes), or 1 when the strategy starts
    its workers inside the fit (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``)."""
    strategy = trainer_cfg.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        strategy = f"{strategy.get('_target_', '')} {strategy.get('start_method', '')}"
    if any(word in str(strategy).lower() for word in IN_FIT_WORKERS):
        return 1
    return device_count(trainer_cfg)


def distributed_settings(cfg: DictConfig) -> DistributedSchema:
    """The ``distributed`` config node, checked by its schema."""
    return DistributedSchema(**OmegaConf.to_container(cfg.distributed, resolve=True))


def process_group_backend(trainer_cfg: DictConfig) -> str | None:
    """The backend the trainer's strategy names (``process_group_backend``); None: torch's default per device."""
    strategy = trainer_cfg.get("strategy")
    return strategy.get("process_group_backend") if isinstance(strategy, DictConfig) else None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate the config, then run the chosen stage(s) in the run folder on every rank of the run.

    Several processes: started here through torch's elastic launcher when the trainer asks for them and no
    launcher (torchrun, srun) started this process; the result is rank 0's.
    """
    validate_config(cfg)
    check_declarations(cfg)
    stages = selected_stages(cfg.stage, cfg.stop_after)
    processes, started = trainer_processes(cfg.trainer), external_ranks()
    if started is not None and started != processes and max(started, processes) > 1:
        raise ValueError(f"the launcher started {started} processes but the trainer asks for {processes} "
                         "(trainer.devices x trainer.num_nodes): start one process per device (torchrun "
                         "--nproc-per-node, or SLURM with hydra.launcher.tasks_per_node=<devices per node>)")
    invocation = Invocation(tuple(sys.argv), tuple(job_overrides()))
    if started is None and processes > 1 and any(stage.distributed for stage in stages):
        if cfg.trainer.get("num_nodes", 1) > 1:
            raise ValueError("trainer.num_nodes > 1 needs a launcher that starts every node's processes: "
                             "SLURM (one task per device) or torchrun on each node")
        plain = OmegaConf.to_container(cfg, resolve=True)
        log_dir = Path(cfg.paths.run_dir) / RANK_LOGS
        names = tuple(stage.name for stage in stages)
        results = launch(launched_rank, (plain, names, invocation), processes, distributed_settings(cfg), log_dir)
    else:
        results = run_rank(cfg, stages, invocation)
    show(f"run folder: {cfg.paths.run_dir}")
    return results[stages[0].name] if len(stages) == 1 else results


def launched_rank(plain: dict[str, Any], names: tuple[str, ...], invocation: Invocation) -> dict[str, Any]:
    """What each process the elastic launcher starts runs: the config as the command that started them resolved
    it (so every rank has the same values, run folder included) and the stages by name."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    return run_rank(OmegaConf.create(plain), [BY_NAME[name] for name in names], invocation)


def run_rank(cfg: DictConfig, stages: list[Stage], invocation: Invocation) -> dict[str, Any]:
    """One rank's run: join the process group (with several processes), then :func:`run_stages`."""
    with process_group(distributed_settings(cfg), process_group_backend(cfg.trainer)) as ranks:
        return run_stages(cfg, stages, ranks, invocation)


def run_stages(cfg: DictConfig, stages: list[Stage], ranks: Ranks, invocation: Invocation) -> dict[str, Any]:
    """Run ``stages`` on this rank: rank 0 holds the run folder, runs each stage, writes and logs; every rank
    meets the others after each stage, so a failure anywhere stops every rank with one line naming it."""
    run_dir = Path(ranks.agree(cfg.paths.run_dir))
    cfg.paths.run_dir = str(run_dir)  # rank 0's folder on every rank (an outside launcher's ranks each named one)
    store = ArtifactStore(run_dir, read_only=not ranks.is_main)
    seed_everything(cfg.seed, cfg.num_threads)
    tracker: Tracker = NullTracker()
    with ExitStack() as held:
        try:
            if ranks.is_main:
                held.enter_context(store.lock())
                point_latest(run_dir, Path(cfg.paths.experiment_dir))
                save_run_config(cfg, run_dir, invocation)
                tracker = instantiate(cfg.logger)
                identity = run_identity(cfg, job_overrides(), job_choices())
                tracker.describe(identity)
                tracker.log_config(OmegaConf.to_container(cfg, resolve=True) | {"compare": dict(identity.fields)})
        except BaseException as error:
            ranks.sync("the start of the run", error)
            raise
        ranks.sync("the start of the run")
        try:
            declared = declarations(cfg)
            results = {stage.name: run_stage(cfg, stage, ranks, store, tracker, declared) for stage in stages}
        except BaseException:
            tracker.finish(exit_code=1)
            raise
        tracker.finish(exit_code=0)
    return results


def run_stage(cfg: DictConfig, stage: Stage, ranks: Ranks, store: ArtifactStore, tracker: Tracker,
              declared: dict[str, Declared]) -> Any:
    """Run one stage where it runs (rank 0; every rank for a distributed one), time it, meet the other ranks."""
    began, error, result = time.perf_counter(), None, None
    try:
        if stage.distributed or ranks.is_main:
            log.info("=== stage %s in %s%s ===", stage.name, store.root,
                     f" (rank {ranks.rank} of {ranks.world})" if ranks.world > 1 else "")
            ctx = StageContext(cfg=cfg, run_dir=store.root, store=store, tracker=tracker, stage=stage,
                               declared=declared, rank=ranks.rank, world=ranks.world,
                               agree=ranks.agree if stage.distributed else Ranks().agree)  # rank 0 alone decides
            for name in stage.needs:  # made for this config by an earlier stage, or one line naming the command
                ctx.need(name)
            result = stage.run(ctx)
    except BaseException as caught:
        error = caught
        raise
    finally:  # a failed or interrupted stage's time counts too: its finished chunks are kept
        release_accelerator_memory()  # the next stage (a vLLM engine) finds the accelerator's memory free
        seconds = time.perf_counter() - began
        if ranks.is_main:
            record_time(store.root, stage.name, seconds)
        ranks.sync(f"stage {stage.name}", error)
    tracker.log_metrics({f"{stage.name}/all/seconds": seconds})
    log.info("stage %s took %.1f s", stage.name, seconds)
    return result
