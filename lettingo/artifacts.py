"""Named artifacts in a run folder: the one place that decides skip, resume or recompute.

A leaf utility (imports nothing else of ours). Every artifact is a sub-folder `<run>/<name>/` whose
`_meta.json` records the fingerprint of the inputs it was made from, written last. For a stage's
artifact the store answers one question, :meth:`ArtifactStore.prepare`:

- ``done``: finished for these inputs: reuse it;
- ``partial``: chunks written for these inputs by an interrupted (or smaller) run: keep them and
  compute only the missing rows;
- ``new``: nothing valid; what is there (made from other inputs, left unfinished by an interrupted run,
  or with an unreadable `_meta.json` / `_progress.json`) is moved aside (never deleted) to
  `<name>.stale-<time>/`, with one log line saying which.

Writes are atomic (temp file + rename) and readable by the group (0644); a full disk or a read-only folder
fails as one :class:`WriteFailed` line naming the file and what to do.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

META_FILE = "_meta.json"
PROGRESS_FILE = "_progress.json"
CHUNKS_DIR = "chunks"
TABLE_FILE = "data.parquet"
JSON_FILE = "data.json"
LOCK_FILE = ".lock"
#: The key of `_meta.json` that records every file's size (bytes) when the artifact was finished.
FILES_KEY = "files"
#: The key of `_meta.json` that records the digest of a table artifact's rows (part of its readers' identity).
ROWS_KEY = "rows_digest"
FILE_MODE = 0o644
DIR_MODE = 0o755
_ELSEWHERE = "or write elsewhere with paths.output_root=<folder> or run_dir=<folder>"
_FULL = f"free space on that disk, {_ELSEWHERE}"
_LOCKED = f"make the folder writable (chmod -R u+w), {_ELSEWHERE}"
#: What to do when a write fails for a reason the user can fix, by errno.
WRITE_ADVICE = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EACCES: _LOCKED, errno.EPERM: _LOCKED,
                errno.EROFS: _LOCKED}

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
#: Why an artifact is moved aside when its inputs changed (the default reason).
OTHER_INPUTS = "was made from other inputs than this config"


def adapter_artifact(method: str, round_: int = 1, seed: int = 1) -> str:
    """The artifact holding the LoRA adapter trained by alignment method ``method`` in on-policy round ``round_``
    (round 1, the paper's single round, keeps the plain name), with its ``seed``-th training seed (seed 1 keeps
    the plain name; `align.method.<name>.seeds` >= 2 adds replicas of the last round, suffix ``_s<seed>``)."""
    name = f"{ADAPTER_PREFIX}{method}" if round_ == 1 else f"{ADAPTER_PREFIX}{method}_r{round_}"
    return name if seed == 1 else f"{name}_s{seed}"


def round_artifact(kind: str, method: str, round_: int) -> str:
    """The ``kind`` artifact (profiles, rewards, pairs) that round ``round_`` >= 2 of ``method`` makes for itself."""
    if round_ < 2:
        raise ValueError(f"round 1 uses the explore and evaluate stages' own {kind}; got round {round_}")
    return f"{kind}_{method}_r{round_}"


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """A short stable hash of a stage's resolved inputs (JSON-serialisable values)."""
    payload = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


class WriteFailed(OSError):
    """A write refused for a reason the user can fix (full disk, read-only folder): one line naming the path."""

    def __init__(self, target: Path, error: OSError) -> None:
        super().__init__(error.errno, error.strerror, str(target))
        self.message = f"cannot write {target}: {error.strerror or error}; {WRITE_ADVICE[error.errno]}"

    def __str__(self) -> str:
        return self.message


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """A block that writes `target`: a full disk or a read-only folder met in it raises WriteFailed naming `target`."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as error:
        if error.errno not in WRITE_ADVICE:
            raise
        raise WriteFailed(target, error) from error


def reserve_folder(base: Path) -> Path:
    """Create and return the new empty folder `base`, or `base_2`, `base_3`, ... when that name is taken.

    Creating is the test (``mkdir`` fails on an existing folder), so two processes never get the same one.
    """
    folder, n = base, 1
    with writing(base):
        base.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                n += 1
                folder = base.with_name(f"{base.name}_{n}")


def rows_digest(frame: pd.DataFrame) -> str:
    """A short digest of a table's column names and rows, whatever the order of its rows (or its chunks)."""
    plain = pd.DataFrame({column: frame[column].map(_json) if frame[column].dtype == object else frame[column]
                          for column in sorted(frame.columns)})
    hashes = pd.util.hash_pandas_object(plain, index=False).sort_values().to_numpy()
    return hashlib.sha256(json.dumps(sorted(frame.columns)).encode() + hashes.tobytes()).hexdigest()[:16]


def _json(value: Any) -> str:
    """One cell as canonical JSON (lists and dicts of a Parquet column included)."""
    return json.dumps(value, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` (mode 0644) only if the block succeeds."""
    target = Path(target)
    tmp_path: Path | None = None
    try:
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            if tmp_path.is_file():
                os.chmod(tmp_path, FILE_MODE)
            os.replace(tmp_path, target)
    finally:
        if tmp_path is not None and tmp_path.exists():
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


def write_table_data(folder: Path, frame: pd.DataFrame) -> dict[str, Any]:
    """Write a whole table artifact's data into its folder (a stage's build); return what its meta records."""
    write_parquet_atomic(Path(folder) / TABLE_FILE, frame)
    return {"rows": len(frame)}


class RunFolderInUse(RuntimeError):
    """Another process holds the run folder."""

    @classmethod
    def held(cls, root: Path, holder: str) -> RunFolderInUse:
        """The one line for run folder ``root`` held by process ``holder``."""
        return cls(f"run folder {root} is in use by pid {holder}; wait for it to finish or pick another folder "
                   "with run_dir=<folder>")


def check_not_in_use(root: Path) -> None:
    """Raise :class:`RunFolderInUse` when another process holds run folder ``root``; creates and writes nothing."""
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        return
    probe = FileLock(path, timeout=0)
    try:  # refused while the holder keeps it; released at once otherwise
        probe.acquire()
    except Timeout:
        raise RunFolderInUse.held(Path(root), path.read_text().strip() or "?") from None
    probe.release()


class MissingArtifact(RuntimeError):
    """A stage needs an artifact that the run folder does not hold (finished)."""


class CorruptRecord(ValueError):
    """A bookkeeping file (`_meta.json`, `_progress.json`) that is not the record the store wrote."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} is truncated or corrupted ({reason}): rerun the stage that makes "
                         f"{path.parent.name!r}; the store moves that folder aside and remakes it")


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
        """The recorded metadata of a finished artifact, or None when it is not finished.

        Raises CorruptRecord naming the file when `_meta.json` is unreadable.
        """
        return _read_record(self.path(name) / META_FILE)

    def progress(self, name: str) -> dict[str, Any] | None:
        """The record of the work started on artifact `name` (its `_progress.json`), or None when there is none."""
        return _read_record(self.path(name) / PROGRESS_FILE)

    def fingerprint_of(self, name: str) -> str | None:
        """The fingerprint artifact `name` was made (or is being made) for; None when absent."""
        record = self.meta(name) or self.progress(name)
        return None if record is None else str(record["fingerprint"])

    def identity(self, config: Mapping[str, Any], inputs: Sequence[str] = (), grows_with: Sequence[str] = ()) -> str:
        """The fingerprint of an artifact made from config values ``config`` and artifacts ``inputs``.

        An input counts with its fingerprint and its rows (the digest :meth:`finish` recorded), so new rows
        upstream (more users, more samples) give every artifact made from them a new identity; an input of
        ``grows_with`` (whose rows the artifact follows one by one, and grows with) counts by its fingerprint.
        """
        return fingerprint({"config": dict(config), "inputs": {
            name: self.fingerprint_of(name) if name in grows_with
            else [self.fingerprint_of(name), (self.meta(name) or {}).get(ROWS_KEY)] for name in inputs}})

    def rows_digest(self, name: str) -> str | None:
        """The digest of table artifact `name`'s rows (see :func:`rows_digest`); None for another kind of artifact."""
        if not (self.path(name) / TABLE_FILE).exists() and not self.chunk_paths(name):
            return None
        return rows_digest(self.read_table(name))

    def require(self, name: str, made_by: str) -> dict[str, Any]:
        """The metadata of finished artifact `name`; raises MissingArtifact naming the folder and the command."""
        command = f"`lettingo stage={made_by} run_dir={self.root}` (same overrides)"
        try:
            meta = self.meta(name)
        except CorruptRecord as bad:
            raise MissingArtifact(f"{bad.path} is truncated or corrupted ({bad.reason}): remake {name!r} with "
                                  f"{command}; the store moves the unreadable folder aside") from None
        if meta is None:
            raise MissingArtifact(f"no finished {name!r} in {self.root}: make it with {command}")
        changed = _changed_file(self.path(name), meta)
        if changed is not None:
            raise MissingArtifact(f"{changed}: remake {name!r} with {command}; the store moves the damaged "
                                  "folder aside")
        return meta

    def prepare(self, name: str, fp: str) -> State:
        """Decide what to do with artifact `name` for inputs `fp` (see the module docstring).

        An unreadable `_meta.json` or `_progress.json`, or a file whose size differs from the one recorded when
        the artifact was finished, makes the whole folder untrusted: the store writes atomically, so such damage
        comes from outside it (a copy cut short, a full disk, an edit) and what the folder holds is unknown.
        The folder is moved aside and remade.
        """
        reason = self._damage(name)
        if reason is None:
            meta, progress = self.meta(name), self.progress(name)
            if meta is not None and meta["fingerprint"] == fp:
                return "done"
            if progress is not None and progress["fingerprint"] == fp:
                return "partial"
            if meta is not None:
                reason = OTHER_INPUTS
            elif progress is not None:
                reason = "was partly made from other inputs than this config"
            else:
                reason = _unfinished(self.path(name))
        if not self.read_only:
            self.move_aside(name, reason)
        return "new"

    def _damage(self, name: str) -> str | None:
        """Why nothing in artifact `name`'s folder can be trusted (see :meth:`prepare`); None when nothing says so."""
        try:
            meta = self.meta(name)
            self.progress(name)
        except CorruptRecord as bad:
            return f"has an unreadable {bad.path.name} ({bad.reason}), so nothing in it is trusted"
        changed = None if meta is None else _changed_file(self.path(name), meta)
        return None if changed is None else f"has a damaged file ({changed})"

    def move_aside(self, name: str, reason: str = OTHER_INPUTS) -> Path | None:
        """Rename artifact `name` to `<name>.stale-<time>` and log why (``reason``); return the new path."""
        folder = self.path(name)
        if not folder.exists():
            return None
        self._writable(f"moving {name} aside")
        # folder.name, not name: a nested artifact (align/dpo) stays in its parent folder
        stale = reserve_folder(folder.with_name(f"{folder.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"))
        with writing(folder):
            folder.rename(stale)  # onto the empty folder just reserved: POSIX rename replaces an empty directory
        log.warning("%s %s: moved aside to %s", name, reason, stale)
        return stale

    def finish(self, name: str, fp: str, **info: Any) -> None:
        """Mark artifact `name` finished for fingerprint `fp` (written last, atomically).

        The size of every file in the folder is recorded with it, so a file cut short later (a copy, a full
        disk) is found before it is reused (see :meth:`prepare` and :meth:`require`).
        """
        self._writable(f"finishing {name}")
        folder = self.path(name)
        files = {str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("[!._]*"))
                 if path.is_file()}
        write_json_atomic(folder / META_FILE, {"fingerprint": fp, **info, ROWS_KEY: self.rows_digest(name),
                                               FILES_KEY: files})

    def _unfinish(self, name: str) -> None:
        """Remove artifact `name`'s `_meta.json` before its data changes (it is unfinished until `finish`)."""
        meta = self.path(name) / META_FILE
        with writing(meta):
            meta.unlink(missing_ok=True)

    def write_table(self, name: str, frame: pd.DataFrame, fp: str, **info: Any) -> Path:
        """Write a whole table artifact (`data.parquet`) and mark it finished."""
        self._writable(f"writing {name}")
        self.prepare(name, fp)
        self._unfinish(name)
        target = write_parquet_atomic(self.path(name) / TABLE_FILE, frame)
        self.finish(name, fp, rows=len(frame), **info)
        return target

    def read_table(self, name: str) -> pd.DataFrame:
        """Read a table artifact: its `data.parquet`, or the concatenation of its chunks."""
        folder = self.path(name)
        whole = folder / TABLE_FILE
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

    def rows(self, name: str, fp: str, key: Sequence[str]) -> RowWriter:
        """Open the row-keyed chunked artifact `name` for inputs `fp` (see :class:`RowWriter`)."""
        return RowWriter(self, name, fp, tuple(key))

    def append_chunk(self, name: str, frame: pd.DataFrame) -> Path:
        """Atomically add one chunk of rows to a chunked artifact (it is unfinished until `finish`)."""
        self._writable(f"adding a chunk to {name}")
        self._unfinish(name)
        index = len(self.chunk_paths(name))
        return write_parquet_atomic(self.path(name) / CHUNKS_DIR / f"part-{index:06d}.parquet", frame)

    def write_json(self, name: str, obj: Any, fp: str, **info: Any) -> Path:
        """Write a JSON artifact (`<name>/data.json`) and mark it finished."""
        self._writable(f"writing {name}")
        self.prepare(name, fp)
        self._unfinish(name)
        target = write_json_atomic(self.path(name) / JSON_FILE, obj)
        self.finish(name, fp, **info)
        return target

    def read_json(self, name: str) -> Any:
        """Read a JSON artifact."""
        return json.loads((self.path(name) / JSON_FILE).read_text())

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for this process; another process gets RunFolderInUse naming our pid."""
        self._writable("locking the run folder")
        path = self.root / LOCK_FILE
        held = FileLock(path, timeout=0)  # filelock: flock(2) on the file, held until released or the process ends
        with writing(path):
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                held.acquire()
            except Timeout:
                raise RunFolderInUse.held(self.root, path.read_text().strip() or "?") from None
            try:
                path.write_text(str(os.getpid()))  # the holder, for the line another process prints
            except BaseException:
                held.release()
                raise
        try:
            yield
        finally:
            held.release()


class RowWriter:
    """A row-keyed artifact being made in chunks for one identity: the one resume path of every chunked stage.

    Opening it keeps the rows already written for this identity (a killed run, or fewer rows asked for
    before) and moves aside what other inputs made; :meth:`missing` says which rows still need computing,
    :meth:`append` writes a chunk of them at once (a kill keeps it), :meth:`finish` marks the artifact
    finished and returns the wanted rows. Domain code computes; it never asks the store what to do.
    """

    def __init__(self, store: ArtifactStore, name: str, fp: str, key: tuple[str, ...]) -> None:
        self.store, self.name, self.fp, self.key = store, name, fp, key
        existing = store.start_chunks(name, fp)
        self.written = set() if existing is None else set(self._keys(existing))
        self.added = 0

    def _keys(self, frame: pd.DataFrame) -> Iterator[tuple[Any, ...]]:
        return frame.loc[:, list(self.key)].itertuples(index=False, name=None)

    def _rows_in(self, frame: pd.DataFrame, keys: set[tuple[Any, ...]], inside: bool) -> pd.DataFrame:
        """The rows of ``frame`` whose key is (``inside``) or is not in ``keys``."""
        # A boolean Series, not a list: an empty list would select no columns instead of no rows.
        mask = pd.Series([(key in keys) == inside for key in self._keys(frame)], index=frame.index, dtype=bool)
        return frame[mask]

    def has(self, key: tuple[Any, ...]) -> bool:
        """Whether the row with this key is written already."""
        return key in self.written

    def missing(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` (holding the key columns) not written yet."""
        return self._rows_in(frame, self.written, inside=False)

    def append(self, frame: pd.DataFrame) -> None:
        """Write one chunk of new rows."""
        self.store.append_chunk(self.name, frame)
        self.written.update(self._keys(frame))
        self.added += len(frame)

    def finish(self, wanted: pd.DataFrame, empty: pd.DataFrame,
               describe: Callable[[pd.DataFrame], Mapping[str, Any]] = lambda table: {}) -> pd.DataFrame:
        """Mark the artifact finished (unless it was and nothing was added), recording ``describe(table)`` in its
        `_meta.json`; return its rows whose keys are in ``wanted``, in the artifact's order. ``empty`` (the
        columns, no rows) is written when no row was."""
        if not self.store.chunk_paths(self.name):  # nothing asked for: an empty table, not a missing one
            self.store.append_chunk(self.name, empty)
        table = self.store.read_table(self.name)
        if table.duplicated(list(self.key)).any():
            raise RuntimeError(f"{self.store.path(self.name)} holds duplicate rows; move it aside and rerun")
        if self.added or self.store.meta(self.name) is None:
            self.store.finish(self.name, self.fp, rows=len(table), **describe(table))
        return self._rows_in(table, set(self._keys(wanted)), inside=True).reset_index(drop=True)


def _read_record(path: Path) -> dict[str, Any] | None:
    """The bookkeeping record in `path`; None when there is none; CorruptRecord when it is unreadable."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise CorruptRecord(path, f"{len(text)} bytes, not JSON: {error}") from None
    if not isinstance(record, dict) or "fingerprint" not in record:
        raise CorruptRecord(path, "no fingerprint recorded")
    return record


def _changed_file(folder: Path, meta: Mapping[str, Any]) -> str | None:
    """The first file of a finished artifact that is missing or not the size `meta` recorded; None when all are."""
    for relative, size in (meta.get(FILES_KEY) or {}).items():
        path = folder / relative
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size} bytes where {size} were written: truncated or changed since"
    return None


def _unfinished(folder: Path) -> str:
    """Why an artifact folder with neither `_meta.json` nor `_progress.json` is not trusted."""
    temps = sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))
    left = f"; half-written {', '.join(temps)}" if temps else ""
    return f"was left unfinished by an interrupted run (no {META_FILE}{left})"
