"""Artifacts: atomic writes, one decision (done / partial / new) for every artifact, stale ones moved
aside (never deleted), chunks resume and grow, files readable by the group, one process per run folder."""

from __future__ import annotations

import multiprocessing
import stat

import pandas as pd
import pytest

from lettingo.artifacts import ArtifactStore, MissingArtifact, RunFolderInUse, atomic_path, fingerprint


def test_atomic_write_leaves_nothing_on_error(tmp_path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_written_files_are_readable_by_the_group(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    path = store.write_table("t", pd.DataFrame({"x": [1]}), "fp")
    for file in (path, store.path("t") / "_meta.json"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644


def test_fingerprint_is_order_independent_and_sensitive() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_identity_joins_the_inputs_fingerprints(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    store.write_table("up", pd.DataFrame({"x": [1]}), "fp-a")
    first = store.identity({"k": 1}, ["up"])
    assert first == store.identity({"k": 1}, ["up"]) and first != store.identity({"k": 2}, ["up"])
    store.write_table("up", pd.DataFrame({"x": [2]}), "fp-b")
    assert store.identity({"k": 1}, ["up"]) != first


def test_prepare_reuses_same_inputs_and_moves_other_inputs_aside(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    frame = pd.DataFrame({"x": [1, 2]})
    store.write_table("t", frame, "fp1", note="hi")
    assert store.prepare("t", "fp1") == "done"
    assert store.meta("t")["note"] == "hi" and store.meta("t")["rows"] == 2
    pd.testing.assert_frame_equal(store.read_table("t"), frame)
    assert store.prepare("t", "fp2") == "new"
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("t.stale-")]
    assert len(stale) == 1 and (stale[0] / "data.parquet").exists()  # kept, not deleted
    assert not store.path("t").exists()


def test_a_nested_artifact_is_moved_aside_inside_its_parent_folder(tmp_path) -> None:
    store = ArtifactStore(tmp_path)  # e.g. align/dpo, an adapter's work folder inside the align folder
    store.write_table("align/dpo", pd.DataFrame({"x": [1]}), "fp1")
    assert store.prepare("align/dpo", "fp2") == "new"
    stale = [p for p in (tmp_path / "align").iterdir() if p.name.startswith("dpo.stale-")]
    assert len(stale) == 1 and (stale[0] / "data.parquet").exists()
    assert not store.path("align/dpo").exists()


def test_chunks_resume_grow_and_move_aside_on_new_inputs(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.start_chunks("c", "fp") is None
    store.append_chunk("c", pd.DataFrame({"x": [1]}))
    assert ArtifactStore(tmp_path).prepare("c", "fp") == "partial"
    store.append_chunk("c", pd.DataFrame({"x": [2]}))
    store.finish("c", "fp")
    assert store.prepare("c", "fp") == "done"
    assert store.start_chunks("c", "fp")["x"].tolist() == [1, 2]  # a finished table can grow
    store.append_chunk("c", pd.DataFrame({"x": [3]}))
    assert store.meta("c") is None and store.read_table("c")["x"].tolist() == [1, 2, 3]
    assert store.start_chunks("c", "other") is None
    assert store.chunk_paths("c") == [] and any(p.name.startswith("c.stale-") for p in tmp_path.iterdir())


def test_require_names_the_folder_and_the_command(tmp_path) -> None:
    with pytest.raises(MissingArtifact, match=rf"no finished 'pairs' in {tmp_path}.*lettingo stage=evaluate"):
        ArtifactStore(tmp_path).require("pairs", "evaluate")


def _hold_lock(root: str, ready, release) -> None:
    with ArtifactStore(root).lock():
        ready.set()
        release.wait(30)


def test_a_second_process_on_the_run_folder_is_refused(tmp_path) -> None:
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunFolderInUse, match=rf"in use by pid {holder.pid}"), ArtifactStore(tmp_path).lock():
            pass
    finally:
        release.set()
        holder.join(30)
    with ArtifactStore(tmp_path).lock():  # free again once the holder is gone
        pass
