"""Named artifacts in a run folder: atomic writes, input fingerprints, resumable chunked tables.

A leaf utility (imports nothing else of ours). Every stage reads and writes its outputs through an
`ArtifactStore`; an artifact whose recorded fingerprint equals the fingerprint of the stage's
resolved inputs is finished and is reused instead of recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

META_FILE = "_meta.json"
CHUNKS_DIR = "chunks"


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """A short stable hash of a stage's resolved inputs (JSON-serialisable values)."""
    payload = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as Parquet to `path` atomically."""
    with atomic_path(Path(path)) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


class ArtifactStore:
    """The artifacts of one run folder, each a sub-folder `<root>/<name>/` with a `_meta.json`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """The folder of artifact `name`."""
        return self.root / name

    def meta(self, name: str) -> dict[str, Any] | None:
        """The recorded metadata of a finished artifact, or None when it is not finished."""
        meta_path = self.path(name) / META_FILE
        if not meta_path.exists():
            return None
        return json.loads(meta_path.read_text())

    def is_done(self, name: str, fp: str) -> bool:
        """Whether artifact `name` is finished for inputs with fingerprint `fp`."""
        meta = self.meta(name)
        return meta is not None and meta.get("fingerprint") == fp

    def finish(self, name: str, fp: str, **info: Any) -> None:
        """Mark artifact `name` finished for fingerprint `fp` (written last, atomically)."""
        write_json_atomic(self.path(name) / META_FILE, {"fingerprint": fp, **info})

    def write_table(self, name: str, frame: pd.DataFrame, fp: str, **info: Any) -> Path:
        """Write a whole table artifact (`data.parquet`) and mark it finished."""
        folder = self.path(name)
        if folder.exists():
            shutil.rmtree(folder)
        target = write_parquet_atomic(folder / "data.parquet", frame)
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
    # everything it finished and a rerun computes only what is missing.
    def chunk_paths(self, name: str) -> list[Path]:
        """The chunk files written so far for artifact `name`, in write order."""
        folder = self.path(name) / CHUNKS_DIR
        return sorted(folder.glob("part-*.parquet")) if folder.exists() else []

    def start_chunks(self, name: str, fp: str) -> pd.DataFrame | None:
        """Prepare a chunked artifact; return the rows already written for the same inputs.

        Chunks written for other inputs (another fingerprint) are discarded.
        """
        folder = self.path(name)
        progress = folder / "_progress.json"
        if progress.exists() and json.loads(progress.read_text()).get("fingerprint") == fp:
            chunks = self.chunk_paths(name)
            return pd.concat([pd.read_parquet(p) for p in chunks], ignore_index=True) if chunks else None
        if folder.exists():
            shutil.rmtree(folder)
        write_json_atomic(progress, {"fingerprint": fp})
        return None

    def append_chunk(self, name: str, frame: pd.DataFrame) -> Path:
        """Atomically add one chunk of rows to a chunked artifact."""
        index = len(self.chunk_paths(name))
        return write_parquet_atomic(self.path(name) / CHUNKS_DIR / f"part-{index:06d}.parquet", frame)

    def write_json(self, name: str, obj: Any, fp: str) -> Path:
        """Write a JSON artifact (`<name>/data.json`) and mark it finished."""
        target = write_json_atomic(self.path(name) / "data.json", obj)
        self.finish(name, fp)
        return target

    def read_json(self, name: str) -> Any:
        """Read a JSON artifact."""
        return json.loads((self.path(name) / "data.json").read_text())
