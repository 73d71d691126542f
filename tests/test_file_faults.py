"""Faults of files and bookkeeping: an unreadable `_meta.json` / `_progress.json`, an interrupted artifact, a
truncated adapter, two runs started in the same second, a read-only folder and a full disk each end in one line
naming the file (or are rebuilt, with a log line naming it), and leave nothing half-written; library code sets
no process-wide state."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

import lettingo
from lettingo.artifacts import ArtifactStore, CorruptRecord, MissingArtifact, WriteFailed
from lettingo.run_folders import LATEST, WritableRunFolder, check_writable, run_folder

#: chmod does not stop root: there the refusal of a read-only folder is simulated on the real writer.
AS_ROOT = os.geteuid() == 0
FRAME = pd.DataFrame({"x": [1, 2]})


def one_line(text: str) -> str:
    """``text`` without its trailing newline, asserting that it is a single line."""
    assert "\n" not in text.strip(), text
    return text.strip()


def moved_aside(parent: Path, name: str) -> Path:
    """The one folder artifact ``name`` was moved aside to."""
    [stale] = [p for p in parent.iterdir() if p.name.startswith(f"{name}.stale-")]
    return stale


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, str], AbstractContextManager[None]]:
    """A block in which ``folder`` refuses writes: chmod 0555, or as root the refusal (errno EACCES) of the
    write the code under test makes, ``what`` (a ``module.function`` to replace)."""

    @contextmanager
    def refuse(folder: Path, what: str) -> Iterator[None]:
        if AS_ROOT:
            def refused(*args: object, **kwargs: object) -> None:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

            with monkeypatch.context() as patch:
                patch.setattr(what, refused)
                yield
            return
        mode = stat.S_IMODE(folder.stat().st_mode)
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)

    return refuse


def test_a_truncated_meta_is_named_and_its_artifact_moved_aside_and_remade(tmp_path, caplog) -> None:
    store = ArtifactStore(tmp_path)
    store.write_table("t", FRAME, "fp")
    meta = store.path("t") / "_meta.json"
    truncated = meta.read_bytes()[:10]
    meta.write_bytes(truncated)
    with pytest.raises(CorruptRecord) as bad:
        store.meta("t")
    assert str(meta) in one_line(str(bad.value))
    with pytest.raises(MissingArtifact) as missing:
        store.require("t", "data")
    assert str(meta) in one_line(str(missing.value)) and "lettingo stage=data" in str(missing.value)
    with caplog.at_level(logging.WARNING, logger="lettingo.artifacts"):
        assert store.prepare("t", "fp") == "new"  # never trusted as finished
    assert "unreadable _meta.json" in one_line(caplog.text) and "other inputs" not in caplog.text
    stale = moved_aside(tmp_path, "t")
    assert (stale / "_meta.json").read_bytes() == truncated and (stale / "data.parquet").exists()  # kept
    store.write_table("t", FRAME, "fp")
    assert store.prepare("t", "fp") == "done"


def test_a_truncated_progress_record_restarts_the_work_and_keeps_the_old_chunks(tmp_path, caplog) -> None:
    store = ArtifactStore(tmp_path)
    store.start_chunks("c", "fp")
    store.append_chunk("c", FRAME)
    progress = store.path("c") / "_progress.json"
    progress.write_text('{"finger')
    with caplog.at_level(logging.WARNING, logger="lettingo.artifacts"):
        assert store.start_chunks("c", "fp") is None  # unknown inputs: nothing of it is resumed
    assert "unreadable _progress.json" in one_line(caplog.text)
    assert len(list((moved_aside(tmp_path, "c") / "chunks").glob("part-*.parquet"))) == 1
    assert store.progress("c") == {"fingerprint": "fp"} and store.chunk_paths("c") == []


def test_an_interrupted_whole_file_artifact_is_moved_aside_as_unfinished(tmp_path, caplog, monkeypatch) -> None:
    store = ArtifactStore(tmp_path)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the run ends after the data, before `_meta.json`

    monkeypatch.setattr(ArtifactStore, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_table("t", FRAME, "fp")
    monkeypatch.undo()
    (store.path("t") / ".data.parquet.abc123.tmp").write_bytes(b"PAR1")  # what a SIGKILL mid-write leaves
    with caplog.at_level(logging.WARNING, logger="lettingo.artifacts"):
        assert store.prepare("t", "fp") == "new"
    line = one_line(caplog.text)
    assert "left unfinished by an interrupted run" in line and ".data.parquet.abc123.tmp" in line
    assert "other inputs" not in line
    assert (moved_aside(tmp_path, "t") / "data.parquet").exists()


def test_a_truncated_file_of_a_finished_artifact_is_named_and_remade(tmp_path, caplog) -> None:
    store = ArtifactStore(tmp_path)
    store.write_table("t", FRAME, "fp")
    data = store.path("t") / "data.parquet"
    data.write_bytes(data.read_bytes()[:-20])
    with pytest.raises(MissingArtifact) as missing:
        store.require("t", "data")
    assert str(data) in one_line(str(missing.value)) and "where" in str(missing.value)
    with caplog.at_level(logging.WARNING, logger="lettingo.artifacts"):
        assert store.prepare("t", "fp") == "new"
    assert "damaged file" in one_line(caplog.text) and str(data) in caplog.text
    assert moved_aside(tmp_path, "t").joinpath("data.parquet").exists()


def test_adapters_are_readable_by_the_group_and_a_truncated_one_is_named(tmp_path, caplog) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lettingo.align.adapters import attach_lora, save_adapter

    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = attach_lora(LlamaForCausalLM(config), {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]})
    store = ArtifactStore(tmp_path)
    umask = os.umask(0o077)  # a private umask must not make the adapter private
    try:
        folder = save_adapter(model, store.path("adapter_dpo"))
    finally:
        os.umask(umask)
    store.finish("adapter_dpo", "fp")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(MissingArtifact) as missing:  # the test stage's check of its inputs
        store.require("adapter_dpo", "align")
    assert str(weights) in one_line(str(missing.value)) and "lettingo stage=align" in str(missing.value)
    with caplog.at_level(logging.WARNING, logger="lettingo.artifacts"):
        assert store.prepare("adapter_dpo", "fp") == "new"  # align trains it again
    assert str(weights) in one_line(caplog.text)
    assert not store.path("adapter_dpo").exists() and list(tmp_path.glob(".adapter_dpo.tmp-*")) == []


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    store = ArtifactStore(tmp_path)

    def full(self: pd.DataFrame, path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"PAR1")  # a part of the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(WriteFailed) as failed:
        store.write_table("t", FRAME, "fp")
    line = one_line(str(failed.value))
    assert str(store.path("t") / "data.parquet") in line and "No space left" in line and "free space" in line
    assert list(store.path("t").iterdir()) == []  # no data, no temp file, no _meta.json


def test_a_read_only_folder_names_the_file_and_leaves_nothing(tmp_path, read_only) -> None:
    store = ArtifactStore(tmp_path)
    store.write_table("t", FRAME, "fp")
    before = sorted(tmp_path.rglob("*"))
    with read_only(tmp_path, "pathlib.Path.mkdir"), pytest.raises(WriteFailed) as failed:
        store.write_json("j", {"a": 1}, "fp")
    line = one_line(str(failed.value))
    assert str(store.path("j") / "data.json") in line and "writable" in line
    with read_only(tmp_path, "filelock.FileLock.acquire"), pytest.raises(WriteFailed) as locked:
        with store.lock():
            pass
    assert str(tmp_path / ".lock") in one_line(str(locked.value))
    assert sorted(tmp_path.rglob("*")) == before


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path) -> None:
    root = tmp_path / "experiment"
    clock = lambda: datetime(2025, 1, 2, 3, 4, 5)  # noqa: E731
    first, second = (Path(run_folder(str(root), "pipeline", None, now=clock)) for _ in range(2))
    assert first.name == "2025-01-02_03-04-05" and second.name == "2025-01-02_03-04-05_2"
    assert first.is_dir() and second.is_dir()
    (root / LATEST).symlink_to(first.name)
    assert run_folder(str(root), "explore", None, now=clock) == str(first.resolve())  # a stage continues latest
    assert run_folder(str(root), "explore", str(tmp_path / "given"), now=clock) == str(tmp_path / "given")
    assert sorted(p.name for p in root.iterdir()) == [first.name, second.name, LATEST]  # nothing else made


def test_a_run_folder_that_cannot_be_written_ends_in_one_line_before_hydra_writes(tmp_path, read_only, capsys,
                                                                                   monkeypatch) -> None:
    check_writable(tmp_path / "new" / "run")  # a folder still to be made: its parent is probed
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing
    existing = tmp_path / "run"
    existing.mkdir()
    config = OmegaConf.create({"hydra": {"run": {"dir": str(existing)}}})
    with read_only(existing, "lettingo.run_folders.tempfile.TemporaryFile"), pytest.raises(SystemExit) as ended:
        WritableRunFolder().on_run_start(config)
    assert ended.value.code == 1
    assert str(existing) in one_line(capsys.readouterr().err) and list(existing.iterdir()) == []

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr("lettingo.run_folders.os.fsync", full)
        WritableRunFolder().on_run_start(config)
    assert "free space" in one_line(capsys.readouterr().err) and list(existing.iterdir()) == []
    root = tmp_path / "outputs"
    root.mkdir()
    fresh = OmegaConf.create({"hydra": {"run": {"dir": f"${{lettingo_run_dir:{root},pipeline,null}}"}}})
    with read_only(root, "pathlib.Path.mkdir"), pytest.raises(SystemExit):
        WritableRunFolder().on_run_start(fresh)  # the new dated folder cannot be made
    assert str(root) in one_line(capsys.readouterr().err) and list(root.iterdir()) == []


@pytest.mark.skipif(AS_ROOT, reason="chmod does not stop root (the callback's refusal is simulated above)")
def test_the_command_on_a_read_only_run_folder_prints_one_line(tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o555)
    done = subprocess.run([sys.executable, "-m", "lettingo", "stage=data", "debug=tiny", f"run_dir={run_dir}"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1 and str(run_dir) in one_line(done.stderr)
    assert list(run_dir.iterdir()) == []


def test_library_code_sets_no_process_wide_state() -> None:
    """Environment variables, torch's thread count and signal handlers belong to the entry points."""
    entry_points = {"cli.py", "runtime.py"}  # runtime.seed_everything is what the entry point calls
    pattern = re.compile(r"os\.environ\[[^]]+\]\s*=|os\.environ\.(update|setdefault|pop)|os\.putenv|"
                         r"set_num_threads|signal\.signal")
    package = Path(lettingo.__file__).parent
    found = [f"{path.relative_to(package)}:{number}" for path in package.rglob("*.py")
             if path.name not in entry_points or path.parent != package
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []

