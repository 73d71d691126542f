"""Artifacts: atomic writes leave nothing behind on failure; fingerprints decide reuse; chunks resume."""

from __future__ import annotations

import pandas as pd
import pytest

from lettingo.artifacts import ArtifactStore, atomic_path, fingerprint


def test_atomic_write_leaves_nothing_on_error(tmp_path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_fingerprint_is_order_independent_and_sensitive() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_table_reuse_only_for_same_inputs(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    frame = pd.DataFrame({"x": [1, 2]})
    store.write_table("t", frame, "fp1", note="hi")
    assert store.is_done("t", "fp1") and not store.is_done("t", "fp2")
    assert store.meta("t")["note"] == "hi" and store.meta("t")["rows"] == 2
    pd.testing.assert_frame_equal(store.read_table("t"), frame)


def test_chunks_resume_and_reset_on_new_inputs(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.start_chunks("c", "fp") is None
    store.append_chunk("c", pd.DataFrame({"x": [1]}))
    store.append_chunk("c", pd.DataFrame({"x": [2]}))
    assert ArtifactStore(tmp_path).start_chunks("c", "fp")["x"].tolist() == [1, 2]
    assert store.start_chunks("c", "other") is None
    assert store.chunk_paths("c") == []
