"""The stage runner: which stages run, in which process, in which run folder; the config saved with them.

Under a multi-process trainer (``trainer.devices`` x ``trainer.num_nodes`` > 1, e.g. ``trainer=ddp``)
only the fits inside the distributed stages (train_rec, align) run on every rank. The runner starts the
ranks itself, torchrun-style, so Lightning never re-runs the command line: the ``lettingo`` process is
rank 0 and launches ``python -m lettingo`` once per other device with the job's own overrides (never
``-m`` or a sweep's lists), this run folder and the rank in its environment. Under SLURM (one task per
device, e.g. submitit with ``tasks_per_node`` = GPUs) or torchrun the launcher has started every rank
already. Rank 0 runs every stage and writes every artifact; the other ranks skip the other stages, read
the run folder without writing, and meet rank 0 at a file rendezvous in ``<run>/.ranks/<launch>/``:
before each fit rank 0 marks ``<stage>.fit<k>`` (everything the fit reads is written), after each
stage ``<stage>.end`` (a stage that ends without a fit had nothing to train), ``failed`` when it fails.
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import lettingo
from lettingo.align.training import device_count
from lettingo.artifacts import ArtifactStore, write_json_atomic, write_text_atomic
from lettingo.provenance import code_version, record_invocation
from lettingo.runtime import seed_everything
from lettingo.schemas import validate_config
from lettingo.stages import BY_NAME, STAGES, declarations
from lettingo.stages.base import Stage, StageContext
from lettingo.tracking import NullTracker

log = logging.getLogger(__name__)

PIPELINE = "pipeline"
TIMES_FILE = "stage_times.json"
#: Where the ranks of a multi-process run meet (one sub-folder per launch, removed after a clean one).
RANKS_DIR = ".ranks"
#: The launch a rank belongs to (set by the runner for the ranks it starts; or by you for another launcher).
TOKEN_VAR = "LETTINGO_RANKS_TOKEN"
#: The pid of the rank 0 that started this rank (it stops waiting when that process is gone).
PARENT_VAR = "LETTINGO_RANKS_PARENT"
#: What torch.distributed and Lightning read to find their rank (set for every rank the runner starts).
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Strategies whose workers Lightning starts inside the fit itself (only rank 0 runs our code then).
IN_FIT_WORKERS = ("spawn", "fork", "notebook")
#: Seconds between two looks at the rendezvous folder, and between log lines of a waiting rank.
POLL_S, WAIT_LOG_S = 0.2, 300.0
#: Seconds rank 0 gets to fail after another rank failed, before it is ended (a fit may hold it in a collective).
FAILED_FIT_GRACE_S = 60.0
#: Seconds rank 0 waits at the end for ranks it did not start (SLURM, torchrun) to report back.
FOLLOWERS_WAIT_S = 600.0


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


def slurm_tasks() -> int | None:
    """Tasks of this SLURM job step when SLURM runs one process per device (None: not under srun/sbatch).

    As Lightning decides: a job named ``bash`` or ``interactive`` is a shell, not a managed step.
    """
    if "SLURM_NTASKS" not in os.environ or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return int(os.environ["SLURM_NTASKS"])


def process_rank() -> int:
    """This process's global rank under a multi-process launcher (0 when there is none)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if slurm_tasks() is not None:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return int(os.environ.get("LOCAL_RANK", "0"))


def runs_here(stage: Stage) -> bool:
    """The one place that decides whether this process runs ``stage``: rank 0 runs every stage, the other
    ranks of a multi-process trainer only those whose training is distributed."""
    return stage.distributed or process_rank() == 0


def job_overrides() -> list[str]:
    """This job's Hydra overrides (a multirun job's own); none outside the `lettingo` command line."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def save_run_config(cfg: DictConfig, run_dir: Path, stage: str) -> Path:
    """Write the resolved config, the package version and the code's commit beside the results (per invoked
    stage, and latest), and append this invocation to the folder's `invocations.jsonl`."""
    version = code_version()
    record = {"lettingo_version": lettingo.__version__, **version, "stage": stage,
              "config": OmegaConf.to_container(cfg, resolve=True)}
    record_invocation(run_dir, stage, sys.argv, job_overrides(), version)
    write_json_atomic(run_dir / "configs" / f"{stage}.json", record)
    return write_json_atomic(run_dir / "run_config.json", record)


def record_time(run_dir: Path, stage: str, seconds: float) -> None:
    """Add a stage's wall time to the run folder's `stage_times.json`.

    The times add up over the invocations that ran the stage in this folder, so a stage resumed after a
    kill or a failure counts every part (a part cut off by SIGKILL is lost); a stage reused whole adds ~0.
    """
    path = run_dir / TIMES_FILE
    times = json.loads(path.read_text()) if path.exists() else {}
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


def launch_token() -> str:
    """The launch every rank of this run belongs to, the same on every rank: the runner's, SLURM's or torchrun's."""
    if TOKEN_VAR in os.environ:
        return os.environ[TOKEN_VAR]
    if slurm_tasks() is not None:
        env = os.environ
        return (f"slurm-{env.get('SLURM_JOB_ID', '0')}-{env.get('SLURM_STEP_ID', '0')}-"
                f"{env.get('SLURM_RESTART_COUNT', '0')}")
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    raise RuntimeError(f"rank {process_rank()} was started by an unknown launcher: set {TOKEN_VAR} to one "
                       "value per launch, the same on every rank (or let `lettingo` start the ranks itself)")


def override_key(override: str) -> str:
    """The key a command-line override sets (``+a.b=1`` -> ``a.b``)."""
    return override.split("=", 1)[0].lstrip("~+")


def quoted(value: str) -> str:
    """A value quoted for a Hydra override."""
    return "'" + value.replace("'", "\\'") + "'"


def rank_overrides(cfg: DictConfig, run_dir: Path, rank_dir: Path) -> list[str]:
    """The command line of another rank: this job's own overrides (not the multirun's) plus its run folder.

    From Hydra's record of the job, so ``-m`` and a sweep's lists never reach a rank; the rank's Hydra
    folder (its log) is ``rank_dir``; nothing of Hydra's is written in the run folder.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise RuntimeError("a multi-process trainer needs the `lettingo` command line: it starts one process "
                           "per device with the same overrides")
    hydra = HydraConfig.get()
    own = {"stage", "run_dir", "paths.run_dir"}
    flags = [f"--config-name={hydra.job.config_name}"]
    flags += [f"--config-dir={str(source.path).removeprefix('file://')}" for source in hydra.runtime.config_sources
              if source.provider == "command-line" and source.schema == "file"]
    task = [o for o in hydra.overrides.task if override_key(o) not in own]
    searchpath = [o for o in hydra.overrides.hydra if override_key(o) == "hydra.searchpath"]
    folder = quoted(str(run_dir.absolute()))
    return [*flags, *task, *searchpath, f"stage={cfg.stage}", f"run_dir={folder}", f"paths.run_dir={folder}",
            f"hydra.run.dir={quoted(str(rank_dir.absolute()))}", "hydra.output_subdir=null", "hydra.mode=RUN"]


def free_port() -> int:
    """A TCP port free on this host now (the rendezvous of the process group)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover  (runs in the child before exec)
    """Linux: the child gets SIGTERM when rank 0 dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def close_process_group() -> None:
    """Destroy torch's default process group if a fit created one (the next job of a multirun makes its own)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class RankFailed(RuntimeError):
    """Another rank of this run failed, so the run cannot finish."""


class Ranks:
    """The processes of one run and their rendezvous: which rank this is, the marker folder, the children.

    One process (``world == 1``): rank 0, no folder, no rendezvous. See the module docstring for the protocol.
    """

    def __init__(self, rank: int, world: int, folder: Path | None = None, parent: int | None = None,
                 distributed: tuple[str, ...] = ()) -> None:
        self.rank, self.world, self.folder, self.parent = rank, world, folder, parent
        self.children: list[subprocess.Popen] = []
        self._fits: dict[str, int] = {}
        self._pending = set(distributed)  # distributed stages rank 0 has not ended: the ranks are still needed
        self._fitting: str | None = None  # the distributed stage rank 0 is in after its first fit
        self._child_failed: str | None = None
        self._done = threading.Event()
        self._signal = False  # whether a failed rank is raised in the main thread as RankFailed (else SIGINT)

    @classmethod
    @contextmanager
    def start(cls, cfg: DictConfig, run_dir: Path, stages: list[Stage]) -> Iterator[Ranks]:
        """The ranks of this run: none besides this one, the launcher's (SLURM, torchrun), or ours, started here.

        Ours: this process becomes rank 0 (its rank variables set, restored on leaving) and starts the
        others; on leaving it waits for them and fails if one failed, or stops them if it fails itself.
        """
        world, tasks = trainer_processes(cfg.trainer), slurm_tasks()
        if tasks is not None and tasks != world and max(tasks, world) > 1:
            raise ValueError(f"SLURM runs {tasks} tasks but the trainer asks for {world} processes "
                             "(trainer.devices x trainer.num_nodes): run one task per device, e.g. submitit's "
                             "hydra.launcher.tasks_per_node=<devices per node> with hydra.launcher.nodes=<nodes>")
        distributed = tuple(stage.name for stage in stages if stage.distributed)
        external = tasks is not None or "RANK" in os.environ or "LOCAL_RANK" in os.environ
        if world == 1 or not (distributed or external):  # one process, or nothing to fit: start no other rank
            yield cls(0, 1)
            return
        if external:
            parent = int(os.environ[PARENT_VAR]) if PARENT_VAR in os.environ else None
            ranks = cls(process_rank(), world, run_dir / RANKS_DIR / launch_token(), parent, distributed)
            if ranks.rank == 0:
                ranks.folder.mkdir(parents=True, exist_ok=True)
            try:
                yield ranks
            except BaseException as error:
                ranks.mark_failed(error)
                raise
            else:
                ranks.mark_done()
            finally:
                close_process_group()
            return
        if int(cfg.trainer.get("num_nodes", 1)) > 1:
            raise ValueError("trainer.num_nodes > 1 needs a launcher that starts every node's processes: "
                             "SLURM (one task per device) or torchrun on each node")
        launch = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        ranks = cls(0, world, run_dir / RANKS_DIR / launch, distributed=distributed)
        saved = {var: os.environ.get(var) for var in RANK_VARS}
        port = free_port()
        os.environ.update(rank_env(0, world, port))
        handler = None
        if threading.current_thread() is threading.main_thread():
            handler = signal.signal(signal.SIGUSR1, ranks._raise_failed)
            ranks._signal = True
        try:
            ranks.launch(cfg, run_dir, port)
            yield ranks
        except BaseException as error:
            ranks.mark_failed(error)
            ranks.stop_children()
            raise
        else:
            ranks.wait_children()
        finally:
            ranks._done.set()
            close_process_group()
            if ranks._signal:
                signal.signal(signal.SIGUSR1, handler)
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value

    # --- rank 0 -------------------------------------------------------------------------------------------
    def launch(self, cfg: DictConfig, run_dir: Path, port: int) -> None:
        """Start ranks 1..world-1 as ``python -m lettingo`` with this job's overrides; watch them."""
        assert self.folder is not None
        commands = {rank: [sys.executable, "-m", "lettingo", *rank_overrides(cfg, run_dir, self.folder / f"rank{rank}")]
                    for rank in range(1, self.world)}
        for rank, command in commands.items():
            rank_dir = self.folder / f"rank{rank}"
            rank_dir.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **rank_env(rank, self.world, port), TOKEN_VAR: self.folder.name,
                   PARENT_VAR: str(os.getpid())}
            with (rank_dir / "stdout.log").open("w") as stdout:
                self.children.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                                      preexec_fn=_die_with_parent))
        log.info("started ranks 1..%d of %d (their logs: %s/rank<i>/)", self.world - 1, self.world, self.folder)
        threading.Thread(target=self._watch, name="lettingo-ranks", daemon=True).start()

    def _raise_failed(self, signum: int, frame: Any) -> None:
        raise RankFailed(self._child_failed or "another rank failed")

    def _watch(self) -> None:
        """Notice a rank that failed. While a distributed stage is still to end, the run cannot finish:
        stop the other ranks and fail rank 0 now (ended for good if a fit holds it past the grace time)."""
        while not self._done.wait(1.0):
            failed = [(rank, child.returncode) for rank, child in enumerate(self.children, start=1)
                      if child.poll() not in (None, 0)]
            if not failed:
                continue
            rank, code = failed[0]
            self._child_failed = f"rank {rank} failed (exit code {code}; its log: {self.folder}/rank{rank}/)"
            log.error(self._child_failed)
            if not self._pending:
                return  # no fit left: rank 0 finishes its stages and fails at the end
            self.stop_children()
            _thread.interrupt_main(signal.SIGUSR1 if self._signal else signal.SIGINT)
            if not self._done.wait(FAILED_FIT_GRACE_S):
                print(f"error: {self._child_failed}; rank 0 is stuck in stage {self._fitting or '?'}, ending it",
                      file=sys.stderr, flush=True)
                os._exit(1)
            return

    def check_ranks(self, when: str) -> None:
        """Fail now if another rank has failed or ended (it cannot join the next fit)."""
        if self._child_failed:
            raise RankFailed(self._child_failed)
        for rank, child in enumerate(self.children, start=1):
            if child.poll() is not None:
                raise RankFailed(f"rank {rank} ended (exit code {child.returncode}) {when}; its log: "
                                 f"{self.folder}/rank{rank}/")
        for marker in sorted(self.folder.glob("rank*.failed")) if self.folder is not None else []:
            raise RankFailed(f"{marker.stem} failed {when}: {marker.read_text().strip()}")

    def wait_children(self) -> None:
        """After the last stage: wait for every rank; fail if one failed; remove the rendezvous folder."""
        failed = [f"rank {rank} (exit code {code})" for rank, child in enumerate(self.children, start=1)
                  if (code := child.wait()) != 0]
        if failed:
            raise RankFailed(f"{', '.join(failed)} failed; their logs: {self.folder}/rank<i>/")
        self._remove_folder()

    def stop_children(self) -> None:
        """Stop every rank still running (SIGTERM, then SIGKILL after 10 s)."""
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def mark_done(self) -> None:
        """This rank finished: another rank says so (``rank<i>.done``); rank 0 waits for them all, fails if one
        failed, and removes the rendezvous folder (a rank that says nothing for FOLLOWERS_WAIT_S keeps it)."""
        if self.folder is None or not self.folder.exists():
            return
        if self.rank != 0:
            write_text_atomic(self.folder / f"rank{self.rank}.done", "")
            return
        others = range(1, self.world)
        deadline = time.monotonic() + FOLLOWERS_WAIT_S
        while not all((self.folder / f"rank{r}.done").exists() or (self.folder / f"rank{r}.failed").exists()
                      for r in others):
            if time.monotonic() > deadline:
                log.warning("ranks of %s did not all report back in %.0f s", self.folder, FOLLOWERS_WAIT_S)
                return
            time.sleep(POLL_S)
        failed = [f"rank {r}" for r in others if (self.folder / f"rank{r}.failed").exists()]
        if failed:
            raise RankFailed(f"{', '.join(failed)} failed; see {self.folder}")
        self._remove_folder()

    def _remove_folder(self) -> None:
        assert self.folder is not None
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass  # another launch's folder is still there

    def mark_failed(self, error: BaseException) -> None:
        """This rank failed: tell the others (``failed`` from rank 0, ``rank<i>.failed`` from rank i)."""
        if self.folder is None or not self.folder.exists():
            return
        name = "failed" if self.rank == 0 else f"rank{self.rank}.failed"
        write_text_atomic(self.folder / name, f"{type(error).__name__}: {str(error).strip()[:500]}\n")

    def end_stage(self, stage: Stage) -> None:
        """Rank 0 finished ``stage``: a rank still waiting for its first fit learns there is none."""
        self._fitting = None
        self._pending.discard(stage.name)
        if self.folder is not None and stage.distributed:
            write_text_atomic(self.folder / f"{stage.name}.end", "")

    # --- every rank ----------------------------------------------------------------------------------------
    def gate(self, stage: Stage) -> Callable[[], None] | None:
        """The rendezvous before each fit of a distributed stage (``ctx.ready_to_fit``); None with one process."""
        if self.folder is None or not stage.distributed:
            return None
        folder = self.folder

        def ready_to_fit() -> None:
            k = self._fits.get(stage.name, 0)
            self._fits[stage.name] = k + 1
            marker = folder / f"{stage.name}.fit{k}"
            if self.rank == 0:
                self.check_ranks(f"before fit {k} of stage {stage.name}")
                self._fitting = stage.name
                write_text_atomic(marker, "")
                return
            if self._wait([marker, folder / f"{stage.name}.end"], f"fit {k} of stage {stage.name}") != marker:
                raise RuntimeError(f"rank {self.rank} reached fit {k} of stage {stage.name}, but rank 0 ended the "
                                   "stage without it (the ranks disagree about what to train)")

        return ready_to_fit

    def wait_for_stage(self, stage: Stage) -> bool:
        """A rank other than 0: wait until rank 0 starts the first fit of ``stage`` (True) or ends it without one."""
        assert self.folder is not None
        first = self.folder / f"{stage.name}.fit0"
        return self._wait([first, self.folder / f"{stage.name}.end"], f"stage {stage.name}") == first

    def _wait(self, markers: list[Path], what: str) -> Path:
        """The first of ``markers`` rank 0 writes; fails when rank 0 failed or is gone."""
        assert self.folder is not None
        began = last_log = time.monotonic()
        while True:
            for marker in markers:
                if marker.exists():
                    return marker
            failed = self.folder / "failed"
            if failed.exists():
                raise RankFailed(f"rank 0 failed, so rank {self.rank} stops: {failed.read_text().strip()}")
            if self.parent is not None and os.getppid() != self.parent:
                raise RankFailed(f"rank 0 (pid {self.parent}) is gone; rank {self.rank} stops")
            if time.monotonic() - last_log > WAIT_LOG_S:
                last_log = time.monotonic()
                log.info("rank %d waits for rank 0 (%s) for %.0f s", self.rank, what, last_log - began)
            time.sleep(POLL_S)


class Terminated(SystemExit):
    """SIGTERM arrived: the process exits with status 128 + 15 once the running stage has unwound."""


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While inside, SIGTERM (a kill, a cluster's preemption) raises :class:`Terminated` in the main thread.

    Python's default ends the process at once; as an exception it unwinds the stage, so the stage's time
    is recorded and the tracker closed like any other failure (the finished chunks were kept anyway).
    Inside a Lightning fit, Lightning calls this handler after its own notice. Off the main thread,
    where handlers cannot be set, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The rank variables of process ``rank`` of ``world`` on this node (what torchrun would set)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "NODE_RANK": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate the config, then run the chosen stage(s) in the run folder; the tracker is closed whatever happens.

    Under a multi-process trainer (see the module docstring) rank 0 runs every stage and writes; the other
    ranks join the fits of the distributed stages and write nothing.
    """
    validate_config(cfg)
    stages = selected_stages(str(cfg.stage), cfg.get("stop_after"))
    run_dir = Path(cfg.paths.run_dir)
    with Ranks.start(cfg, run_dir, stages) as ranks:
        if ranks.rank != 0:
            follow(cfg, stages, run_dir, ranks)
            return {}
        results = lead(cfg, stages, run_dir, ranks)
    print(f"run folder: {run_dir}")
    return results[stages[0].name] if len(stages) == 1 else results


def lead(cfg: DictConfig, stages: list[Stage], run_dir: Path, ranks: Ranks) -> dict[str, Any]:
    """Rank 0 (or the only process): hold the run folder, run every stage, write every artifact and log."""
    store = ArtifactStore(run_dir)
    with store.lock(), sigterm_as_exit():
        point_latest(run_dir, Path(cfg.paths.output_root) / str(cfg.experiment_name))
        seed_everything(int(cfg.seed), cfg.get("num_threads"))
        save_run_config(cfg, run_dir, str(cfg.stage))
        tracker = instantiate(cfg.logger)
        results: dict[str, Any] = {}
        try:
            tracker.log_config(OmegaConf.to_container(cfg, resolve=True))
            declared = declarations(cfg)
            for stage in stages:
                log.info("=== stage %s in %s ===", stage.name, run_dir)
                began = time.perf_counter()
                try:
                    ctx = StageContext(cfg=cfg, run_dir=run_dir, store=store, tracker=tracker, stage=stage,
                                       declared=declared, rank=0, fit_gate=ranks.gate(stage))
                    results[stage.name] = stage.run(ctx)
                    ranks.end_stage(stage)
                finally:  # a failed or interrupted stage's time counts too: its finished chunks are kept
                    seconds = time.perf_counter() - began
                    record_time(run_dir, stage.name, seconds)
                tracker.log_metrics({f"{stage.name}/all/seconds": seconds})
                log.info("stage %s took %.1f s", stage.name, seconds)
        except BaseException as error:
            if isinstance(error, Terminated):
                log.warning("SIGTERM: stopped (exit status %s); continue with run_dir=%s", error.code, run_dir)
            tracker.finish(exit_code=1)
            raise
        tracker.finish(exit_code=0)
    return results


def follow(cfg: DictConfig, stages: list[Stage], run_dir: Path, ranks: Ranks) -> None:
    """A rank other than 0: join the fits of the distributed stages; read the run folder, never write it."""
    seed_everything(int(cfg.seed), cfg.get("num_threads"))
    store = ArtifactStore(run_dir, read_only=True)
    declared = declarations(cfg)
    for stage in stages:
        if not runs_here(stage):
            continue
        if not ranks.wait_for_stage(stage):
            log.info("rank %d: stage %s has nothing to fit", ranks.rank, stage.name)
            continue
        log.info("=== rank %d joins stage %s ===", ranks.rank, stage.name)
        ctx = StageContext(cfg=cfg, run_dir=run_dir, store=store, tracker=NullTracker(), stage=stage,
                           declared=declared, rank=ranks.rank, fit_gate=ranks.gate(stage))
        stage.run(ctx)
