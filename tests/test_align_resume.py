"""A kill anywhere in align, then a rerun, gives the adapter an uninterrupted run writes, bit for bit."""

from __future__ import annotations

import shutil
import warnings

import pytest

from lettingo.align.dpo import DpoModule
from lettingo.artifacts import adapter_artifact
from lettingo.pipeline import run

ADAPTER_FILE = "adapter_model.safetensors"


class Killed(RuntimeError):
    """Stands for the process dying mid-training."""


@pytest.fixture
def evaluated(compose_cfg, tiny_model_cache, tmp_path):
    """A run folder holding everything align needs (tiny setup), and a compose function for it."""
    def compose(run_dir, *overrides):
        return compose_cfg(["debug=tiny", f"paths.model_cache={tiny_model_cache}", "align.methods=[dpo]",
                            "align.epochs=3", "align.data.val_fraction=0", "align.batch.global_size=1",
                            "align.batch.micro_size=1", *overrides], run_dir=run_dir)

    first = tmp_path / "a"
    for stage in ("data", "explore", "rec_profiles", "train_rec", "evaluate"):
        run(compose(first, f"stage={stage}"))
    return compose, first


def test_killed_align_resumes_to_the_same_adapter(evaluated, tmp_path, monkeypatch) -> None:
    compose, uninterrupted = evaluated
    killed = tmp_path / "b"
    shutil.copytree(uninterrupted, killed, ignore=shutil.ignore_patterns(".lock"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(compose(uninterrupted, "stage=align"))
    # No validation users: no validation loop at all, so Lightning has no empty one to warn about.
    assert not [w for w in caught if "Total length" in str(w.message)], [str(w.message) for w in caught]

    calls = {"n": 0}
    original = DpoModule.training_step

    def dies_in_the_second_epoch(self, batch, batch_idx):
        calls["n"] += 1
        if self.current_epoch == 1 and batch_idx == 0:
            raise Killed("kill -9")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DpoModule, "training_step", dies_in_the_second_epoch)
    with pytest.raises(Killed):
        run(compose(killed, "stage=align"))
    assert calls["n"] >= 2 and not (killed / adapter_artifact("dpo") / ADAPTER_FILE).exists()
    monkeypatch.setattr(DpoModule, "training_step", original)
    summary = run(compose(killed, "stage=align"))["dpo"]
    assert summary["resumed"] is True
    expected = (uninterrupted / adapter_artifact("dpo") / ADAPTER_FILE).read_bytes()
    assert (killed / adapter_artifact("dpo") / ADAPTER_FILE).read_bytes() == expected
