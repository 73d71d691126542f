"""Which folder a run writes to: the one named by `run_dir`, the experiment's latest, or a new dated one.

The Hydra config sets ``hydra.run.dir`` to ``${lettingo_run_dir:<experiment root>,${stage},${run_dir}}``;
:func:`register_resolvers` must run before Hydra composes (the console script and the tests call it).
The Hydra callback :class:`WritableRunFolder` checks the folder can be written before Hydra writes into it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lettingo.artifacts import RunFolderInUse, WriteFailed, check_not_in_use, reserve_folder, writing

RESOLVER = "lettingo_run_dir"
JOB_HASH = "lettingo_job_hash"
CPU_PRECISION = "lettingo_cpu_precision"
#: The symlink, inside an experiment's folder, to the run folder a single stage continues.
LATEST = "latest"
#: Name of a new run folder (local time when the config is first resolved; `_2`, `_3`, ... is added when
#: another run took that name in the same second).
FOLDER_FORMAT = "%Y-%m-%d_%H-%M-%S"
PIPELINE = "pipeline"
#: The stages that may start a run in a ``run_dir`` that does not exist yet; the others continue one.
STARTING_STAGES = (PIPELINE, "data")


def run_folder(root: str, stage: str, run_dir: str | None = None, now: Callable[[], datetime] = datetime.now) -> str:
    """The run folder of ``stage`` under the experiment folder ``root``.

    ``run_dir`` when given; else, for a single stage (not ``pipeline``), the target of ``<root>/latest``
    when that symlink exists, so ``stage=align`` continues the run whose pairs it needs; else a new
    folder ``<root>/<date_time>``, created here so that no other run started in the same second gets it
    (that one gets ``<date_time>_2``); or, for the ranks an outside launcher started, the launch's own
    folder (:func:`outside_launch`). ``now`` is the clock (tests pass a fixed one).
    """
    if run_dir is not None and str(run_dir) != "":
        return str(run_dir)
    latest = Path(root) / LATEST
    if str(stage) != PIPELINE and latest.is_symlink() and latest.exists():
        return str(latest.resolve())
    launch = outside_launch()
    if launch is not None:  # every rank names the same folder (so a relaunch of the step continues it)
        return str(Path(root) / launch)
    return str(reserve_folder(Path(root) / now().strftime(FOLDER_FORMAT)))


def run_folders_of(experiment_dir: str | Path) -> list[str]:
    """The run folders in ``experiment_dir`` (names, oldest first), without its ``latest`` link and sweeps."""
    root = Path(experiment_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "multirun")


def check_continued_folder(run_dir: str | None, stage: str, experiment_dir: str | Path) -> None:
    """Raise ValueError when ``run_dir`` names a folder that does not exist for a stage that continues a run
    (every stage but ``pipeline`` and ``data``): a mistyped folder would otherwise start an empty run there."""
    if run_dir is None or str(run_dir) == "" or Path(run_dir).exists() or str(stage) in STARTING_STAGES:
        return
    folders = run_folders_of(experiment_dir)
    found = f"the run folders of {experiment_dir}: {', '.join(folders)}" if folders else f"{experiment_dir} holds none"
    raise ValueError(f"run_dir={run_dir} does not exist, and stage={stage} continues a run ({found}); "
                     f"stage=pipeline starts a new run in a folder you name")


#: Under a SLURM allocation, a step of this name is a shell, not a managed step (as Lightning decides).
SLURM_SHELLS = ("bash", "interactive")


def slurm_tasks(env: Mapping[str, str] = os.environ) -> int | None:
    """Tasks of this SLURM step when SLURM runs one process per device (None: not under a managed srun step)."""
    if "SLURM_NTASKS" not in env or env.get("SLURM_JOB_NAME") in SLURM_SHELLS:
        return None
    return int(env["SLURM_NTASKS"])


def external_ranks(env: Mapping[str, str] = os.environ) -> int | None:
    """How many ranks an outside launcher started (torchrun's ``WORLD_SIZE`` or SLURM's tasks); None: none did."""
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["WORLD_SIZE"])
    return slurm_tasks(env)


def outside_launch(env: Mapping[str, str] = os.environ) -> str | None:
    """The folder name every rank of an outside launch gives a new run: ``slurm-<job>-<step>`` for the tasks
    of a SLURM step, ``torchrun-<run id>`` for torchrun's ranks; None for one process, and for a torchrun
    launch without an id (no ``--standalone`` or ``--rdzv-id``: rank 0 then tells the others its folder,
    and each rank's Hydra log stays in the folder that rank named)."""
    if (slurm_tasks(env) or 1) > 1:
        return f"slurm-{env.get('SLURM_JOB_ID', '0')}-{env.get('SLURM_STEP_ID', '0')}"
    if (external_ranks(env) or 1) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return None


def check_writable(folder: Path) -> None:
    """Raise WriteFailed naming ``folder`` when it (or, while it does not exist, the folder it would be made in)
    cannot be written: a read-only folder or file system, a full disk.

    The probe writes one byte to an unnamed temporary file (``O_TMPFILE``), so nothing appears in the folder.
    """
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    with writing(folder), tempfile.TemporaryFile(dir=existing) as probe:
        probe.write(b"\0")
        probe.flush()
        os.fsync(probe.fileno())  # a full disk refuses the byte here, not at the write (delayed allocation)


class WritableRunFolder(Callback):
    """Hydra callback (see `conf/hydra/default.yaml`): a run folder that cannot be written ends the command with
    one line naming it, before Hydra's own writes there (its log, `.hydra/`) would fail with a long traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the single run's folder (resolving ``hydra.run.dir`` makes a new dated folder), and that no
        other process holds it: a refused command writes nothing there (not even Hydra's `.hydra/` and log)."""
        self._check(config, "hydra.run.dir", check_not_in_use)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the sweep's folder."""
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str, *more: Callable[[Path], None]) -> None:
        try:
            folder = Path(str(OmegaConf.select(config, key)))
            for check in (check_writable, *more):
                check(folder)
        except Exception as error:
            cause: BaseException | None = error  # OmegaConf wraps what a resolver raises (as the context)
            while cause is not None and not isinstance(cause, WriteFailed | RunFolderInUse):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            print(f"error: {cause}", file=sys.stderr)
            raise SystemExit(1) from None


def job_hash(overrides: str) -> str:
    """A short stable hash of a sweep job's overrides: job folders stay short however long the sweep line."""
    return hashlib.blake2b(str(overrides).encode(), digest_size=3).hexdigest()


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX), as torch reports it."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def native_bf16_precision() -> str:
    """Lightning precision for CPU training: bf16-mixed where the CPU has native bfloat16 (AVX512-BF16 or
    AMX), else 32-true (emulated bfloat16 made the quickstart's f_Rec training many times slower)."""
    return "bf16-mixed" if cpu_has_native_bfloat16() else "32-true"


def register_resolvers() -> None:
    """Register ``lettingo_run_dir`` (cached, so one run resolves its folder once) and ``lettingo_job_hash``."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_folder, use_cache=True)
    if not OmegaConf.has_resolver(JOB_HASH):
        OmegaConf.register_new_resolver(JOB_HASH, job_hash)
    if not OmegaConf.has_resolver(CPU_PRECISION):
        OmegaConf.register_new_resolver(CPU_PRECISION, native_bf16_precision, use_cache=True)
