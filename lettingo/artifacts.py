"""Named artifacts in a run folder: the one place that decides skip, resume or recompute.

A leaf utility (imports nothing else of ours). Every artifact is a sub-folder `<run>/<name>/` whose
`_meta.json` records the fingerprint of the inputs it was made from, written last. For a stage's
artifact the store answers one question, :meth:`ArtifactStore.prepare`:

- ``done``: finished for these inputs: reuse it;
- ``partial``: chunks written for these inputs by an interrupted (or smaller) run: keep them and
  compute only the missing rows;
- ``new``: nothing valid; an artifact made from other inputs is moved aside (never deleted) to
  `<name>.stale-<time>/`, with one log line saying so.

Writes are atomic (temp file + rename) and readable by the group (0644).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pandas as pd

log = logging.getLogger(__name__)

META_FILE = "_meta.json"
PROGRESS_FILE = "_progress.json"
CHUNKS_DIR = "chunks"
LOCK_FILE = ".lock"
FILE_MODE = 0o644

# The artifact registry: every artifact a stage reads or writes is named here.
SAMPLES = "samples"
PROFILES = "profiles"
REC_TRAIN_PROFILES = "rec_train_profiles"
REC_MODEL = "rec_model"
REWARDS = "rewards"
PAIRS = "pairs"
BASELINES = "baselines"
TABULAR_MODELS = "tabular_models"
SENSITIVITY = "sensitivity"
TEST_PROFILES = "test_profiles"
PREDICTIONS = "predictions"
RESULTS = "results"
ADAPTER_PREFIX = "adapter_"

State = Literal["done", "partial", "new"]


def adapter_artifact(method: str) -> str:
    """The artifact holding the LoRA adapter trained by alignment method ``method``."""
    return f"{ADAPTER_PREFIX}{method}"


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """A short stable hash of a stage's resolved inputs (JSON-serialisable values)."""
    payload = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` (mode 0644) only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as Parquet to `path` atomically."""
    with atomic_path(Path(path)) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


class RunFolderInUse(RuntimeError):
    """Another process holds the run folder."""


class MissingArtifact(RuntimeError):
    """A stage needs an artifact that the run folder does not hold (finished)."""


class ReadOnlyStore(RuntimeError):
    """A write to a read-only store: a process that is not rank 0 tried to change the run folder."""


class ArtifactStore:
    """The artifacts of one run folder, each a sub-folder `<root>/<name>/` with a `_meta.json`.

    A ``read_only`` store (the non-zero ranks of a multi-process trainer) reads as usual and answers
    :meth:`prepare` and :meth:`begin` without changing anything; every write raises ReadOnlyStore.
    """

    def __init__(self, root: str | Path, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyStore(f"{what} in {self.root}: this store is read-only (only rank 0 writes artifacts)")

    def path(self, name: str) -> Path:
        """The folder of artifact `name`."""
        return self.root / name

    def meta(self, name: str) -> dict[str, Any] | None:
        """The recorded metadata of a finished artifact, or None when it is not finished."""
        return _read_json(self.path(name) / META_FILE)

    def fingerprint_of(self, name: str) -> str | None:
        """The fingerprint artifact `name` was made (or is being made) for; None when absent."""
        record = self.meta(name) or _read_json(self.path(name) / PROGRESS_FILE)
        return None if record is None else str(record["fingerprint"])

    def identity(self, config: Mapping[str, Any], inputs: Sequence[str] = ()) -> str:
        """The fingerprint of an artifact made from config values ``config`` and artifacts ``inputs``."""
        return fingerprint({"config": dict(config), "inputs": {name: self.fingerprint_of(name) for name in inputs}})

    def require(self, name: str, made_by: str) -> dict[str, Any]:
        """The metadata of finished artifact `name`; raises MissingArtifact naming the folder and the command."""
        meta = self.meta(name)
        if meta is None:
            raise MissingArtifact(f"no finished {name!r} in {self.root}: make it with "
                                  f"`lettingo stage={made_by} run_dir={self.root}` (same overrides)")
        return meta

    def prepare(self, name: str, fp: str) -> State:
        """Decide what to do with artifact `name` for inputs `fp` (see the module docstring)."""
        if (self.meta(name) or {}).get("fingerprint") == fp:
            return "done"
        if (_read_json(self.path(name) / PROGRESS_FILE) or {}).get("fingerprint") == fp:
            return "partial"
        if not self.read_only:
            self.move_aside(name)
        return "new"

    def move_aside(self, name: str) -> Path | None:
        """Rename artifact `name` to `<name>.stale-<time>` (inputs changed); return the new path."""
        folder = self.path(name)
        if not folder.exists():
            return None
        self._writable(f"moving {name} aside")
        # folder.name, not name: a nested artifact (align/dpo) stays in its parent folder
        stale = folder.with_name(f"{folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        folder.rename(stale)
        log.warning("%s was made from other inputs than this config: moved aside to %s", name, stale)
        return stale

    def finish(self, name: str, fp: str, **info: Any) -> None:
        """Mark artifact `name` finished for fingerprint `fp` (written last, atomically)."""
        self._writable(f"finishing {name}")
        write_json_atomic(self.path(name) / META_FILE, {"fingerprint": fp, **info})

    def write_table(self, name: str, frame: pd.DataFrame, fp: str, **info: Any) -> Path:
        """Write a whole table artifact (`data.parquet`) and mark it finished."""
        self._writable(f"writing {name}")
        self.prepare(name, fp)
        (self.path(name) / META_FILE).unlink(missing_ok=True)
        target = write_parquet_atomic(self.path(name) / "data.parquet", frame)
        self.finish(name, fp, rows=len(frame), **info)
        return target

    def read_table(self, name: str) -> pd.DataFrame:
        """Read a table artifact: its `data.parquet`, or the concatenation of its chunks."""
        folder = self.path(name)
        whole = folder / "data.parquet"
        if whole.exists():
            return pd.read_parquet(whole)
        chunks = self.chunk_paths(name)
        if not chunks:
            raise FileNotFoundError(f"artifact {name!r} has no data under {folder}")
        return pd.concat([pd.read_parquet(p) for p in chunks], ignore_index=True)

    # Chunked artifacts: stages that run for long write a chunk per batch, so a killed run keeps
    # everything it finished and a rerun (or a run asking for more rows) computes only what is missing.
    def chunk_paths(self, name: str) -> list[Path]:
        """The chunk files written so far for artifact `name`, in write order."""
        folder = self.path(name) / CHUNKS_DIR
        return sorted(folder.glob("part-*.parquet")) if folder.exists() else []

    def begin(self, name: str, fp: str) -> State:
        """Like :meth:`prepare`, and record `fp` as the inputs of the work now starting (so a kill resumes it)."""
        state = self.prepare(name, fp)
        if state == "new" and not self.read_only:
            write_json_atomic(self.path(name) / PROGRESS_FILE, {"fingerprint": fp})
        return state

    def start_chunks(self, name: str, fp: str) -> pd.DataFrame | None:
        """Open a chunked artifact for inputs `fp`; return the rows already written for them (None: none)."""
        if self.begin(name, fp) == "new":
            return None
        chunks = self.chunk_paths(name)
        return pd.concat([pd.read_parquet(p) for p in chunks], ignore_index=True) if chunks else None

    def append_chunk(self, name: str, frame: pd.DataFrame) -> Path:
        """Atomically add one chunk of rows to a chunked artifact (it is unfinished until `finish`)."""
        self._writable(f"adding a chunk to {name}")
        (self.path(name) / META_FILE).unlink(missing_ok=True)
        index = len(self.chunk_paths(name))
        return write_parquet_atomic(self.path(name) / CHUNKS_DIR / f"part-{index:06d}.parquet", frame)

    def write_json(self, name: str, obj: Any, fp: str, **info: Any) -> Path:
        """Write a JSON artifact (`<name>/data.json`) and mark it finished."""
        self._writable(f"writing {name}")
        self.prepare(name, fp)
        (self.path(name) / META_FILE).unlink(missing_ok=True)
        target = write_json_atomic(self.path(name) / "data.json", obj)
        self.finish(name, fp, **info)
        return target

    def read_json(self, name: str) -> Any:
        """Read a JSON artifact."""
        return json.loads((self.path(name) / "data.json").read_text())

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for this process; another process gets RunFolderInUse naming our pid."""
        self._writable("locking the run folder")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunFolderInUse(f"run folder {self.root} is in use by pid {holder}; wait for it to finish "
                                 "or pick another folder with run_dir=<folder>") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None
