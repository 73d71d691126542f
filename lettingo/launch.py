"""Several processes for the fits, on the engines that already do it: torch's elastic launcher, a process group.

A run whose trainer asks for several processes (``trainer.devices`` x ``trainer.num_nodes`` > 1) runs the
same function on every rank. The ranks are started by a launcher:

- torchrun (``torchrun --nproc-per-node=N -m lettingo ...``) or SLURM's ``srun`` (one task per device,
  e.g. submitit's launcher): every rank runs the same ``lettingo`` command; :func:`external_ranks` says so;
- ``lettingo trainer=ddp`` itself on one node: :func:`launch` hands the resolved config to
  ``torch.distributed.launcher.elastic_launch`` (the engine behind torchrun), which starts the ranks,
  watches them and ends them all when one fails.

:func:`process_group` joins this process to its ranks (a process group with the configured timeout,
which Lightning's strategies then reuse) and yields a :class:`Ranks`: which rank this is, the value
rank 0 holds (:meth:`Ranks.agree`) and a check point after each stage (:meth:`Ranks.sync`) where a
failure on any rank becomes one line naming it on every rank.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from lettingo.run_folders import external_ranks, slurm_tasks
from lettingo.schemas import DistributedSchema

#: The folder inside the run folder where the elastic agent keeps each rank's stdout, stderr and error.
RANK_LOGS = "rank_logs"


class RankFailed(RuntimeError):
    """A rank of this run failed (or none answered in time), so the run cannot finish."""


@dataclass
class Ranks:
    """This process's place among the ranks of one run (``world == 1``: the only process, no group)."""

    rank: int = 0
    world: int = 1
    control: Any = None  # a gloo group with the stage-wait timeout (None with one process)
    wait: timedelta = timedelta(0)  # how long a rank waits for the others at a check point

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that runs every stage and writes every artifact."""
        return self.rank == 0

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the value itself with one process)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0, group=self.control)
        return holder[0]

    def sync(self, where: str, error: BaseException | None = None) -> None:
        """Every rank reaches this point after ``where``; raise :class:`RankFailed` on every rank when one failed.

        A rank that failed passes its ``error`` (and re-raises it afterwards); the others learn which rank
        failed and why. A rank that never arrives (killed, hung) fails the others after ``stage_wait_s``.
        """
        if self.world == 1:
            return
        import torch.distributed as dist

        report = None if error is None else f"{type(error).__name__}: {one_line(error)}"
        reports: list[Any] = [None] * self.world
        try:  # gloo's monitored barrier names the ranks that did not arrive in time
            dist.monitored_barrier(group=self.control, timeout=self.wait, wait_all_ranks=True)
            dist.all_gather_object(reports, (self.rank, report), group=self.control)
        except RuntimeError as failure:  # a rank died or hung: the wait's timeout or a closed connection
            raise RankFailed(f"rank {self.rank} waited in vain for the others at the end of {where}: "
                             f"{one_line(failure)}") from failure
        failed = [(rank, text) for rank, text in reports if text is not None and rank != self.rank]
        if failed and error is None:
            rank, text = failed[0]
            raise RankFailed(f"rank {rank} failed in {where}: {text}")


def one_line(error: BaseException) -> str:
    """The first line of an error's message."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _init_method() -> tuple[str, int, int]:
    """Where the ranks meet and who this process is, as the launcher's cluster environment says (Lightning's)."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment

    environment = (SLURMEnvironment() if slurm_tasks() is not None and "RANK" not in os.environ
                   else TorchElasticEnvironment() if TorchElasticEnvironment.detect() else LightningEnvironment())
    return (f"tcp://{environment.main_address}:{environment.main_port}", environment.global_rank(),
            environment.world_size())


@contextmanager
def process_group(settings: DistributedSchema, backend: str | None) -> Iterator[Ranks]:
    """Join this process to the ranks an outside launcher or :func:`launch` started; one process: no group.

    The default group (``backend``; None: torch's choice, gloo for CPU tensors and NCCL for CUDA ones) has
    the fits' timeout and is the one Lightning's strategies reuse; a second gloo group with the stage-wait
    timeout carries the waits between stages. Both are destroyed on leaving.
    """
    world = external_ranks()
    if world is None or world == 1:
        yield Ranks()
        return
    import torch.distributed as dist

    init_method, rank, size = _init_method()
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=timedelta(seconds=settings.timeout_s))
    try:
        wait = timedelta(seconds=settings.stage_wait_s)
        yield Ranks(rank=rank, world=size, control=dist.new_group(backend="gloo", timeout=wait), wait=wait)
    finally:
        dist.destroy_process_group()


def launch(entrypoint: Callable[..., Any], args: tuple[Any, ...], processes: int, settings: DistributedSchema,
           log_dir: Path) -> Any:
    """Run ``entrypoint(*args)`` on ``processes`` ranks of this node through torch's elastic launcher.

    Returns rank 0's return value. The agent ends every rank as soon as one fails (checked every
    ``monitor_interval_s``); that failure is raised here as :class:`RankFailed`, one line naming the rank,
    its error and the folder of its log (``<log_dir>/<run>/attempt_0/<rank>/``).
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=settings.monitor_interval_s,
        start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=str(log_dir), tee=Std.ALL),
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    try:
        returned = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as failed:
        raise RankFailed(failure_line(failed, log_dir, config.run_id)) from None
    return returned[0]


def reported(failure: Any) -> str:
    """The first line of what a failed rank reported (its exception, or the signal that ended it)."""
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
    lines = message.strip().splitlines()
    return lines[0] if lines else ""


def failure_line(failed: Any, log_dir: Path, run_id: str) -> str:
    """One line for the rank that caused an elastic launch to fail: rank, cause, the folder of its log.

    A rank that only learnt of another's failure reports :class:`RankFailed` naming that rank; the agent
    may end the failing rank itself before it reports, so such an echo names the cause when nothing else does.
    """
    echo = f"{RankFailed.__name__}: "
    causes = {rank: failure for rank, failure in failed.failures.items() if not reported(failure).startswith(echo)}
    rank, failure = (min(causes.items(), key=lambda item: item[1].timestamp) if causes
                     else failed.get_first_failure())
    text = reported(failure)
    if text.startswith(echo) and (named := re.match(r"rank (\d+) ", text.removeprefix(echo))):
        rank, line = int(named[1]), text.removeprefix(echo)
    elif failure.exitcode < 0:
        line = f"rank {rank} was killed by {failure.signal_name()}"
    else:
        line = f"rank {rank} failed (exit code {failure.exitcode})" + (f": {text}" if text else "")
    folders = sorted(log_dir.glob(f"{run_id}_*/attempt_*/{rank}"))
    return f"{line}; its log: {folders[-1] if folders else log_dir}/"
