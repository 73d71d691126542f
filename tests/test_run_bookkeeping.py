"""The runner's own bookkeeping: an unreadable `stage_times.json` never stops a run (it is named and kept aside);
the ranks of an outside launch name one run folder; a stage's inputs are checked before it runs."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

import lettingo.pipeline
from lettingo.artifacts import MissingArtifact
from lettingo.pipeline import TIMES_FILE, record_time
from lettingo.run_folders import outside_launch


@pytest.mark.parametrize("content", ['{"data": 1.', "[1, 2]", ""])
def test_a_corrupted_stage_times_file_is_moved_aside_named_and_started_anew(tmp_path: Path, caplog,
                                                                           content: str) -> None:
    (tmp_path / TIMES_FILE).write_text(content)
    with caplog.at_level(logging.WARNING):
        record_time(tmp_path, "explore", 2.0)
    assert json.loads((tmp_path / TIMES_FILE).read_text()) == {"explore": 2.0}
    (aside,) = tmp_path.glob(f"{TIMES_FILE}.corrupt-*")
    assert aside.read_text() == content  # kept, not deleted
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / TIMES_FILE) in line and str(aside) in line


def test_stage_times_add_up_over_invocations(tmp_path: Path) -> None:
    record_time(tmp_path, "explore", 2.0)
    record_time(tmp_path, "explore", 1.5)
    record_time(tmp_path, "data", 0.5)
    assert json.loads((tmp_path / TIMES_FILE).read_text()) == {"explore": 3.5, "data": 0.5}


@pytest.mark.parametrize(("env", "folder"), [
    ({"SLURM_NTASKS": "2", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"}, "slurm-4242-0"),
    ({"SLURM_NTASKS": "2", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "interactive"}, None),  # a shell, not a step
    ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242"}, None),  # one task: a dated folder as usual
    ({"WORLD_SIZE": "2", "RANK": "1", "TORCHELASTIC_RUN_ID": "ab12"}, "torchrun-ab12"),
    ({"WORLD_SIZE": "2", "RANK": "1", "TORCHELASTIC_RUN_ID": "none"}, None),  # no id: rank 0 tells the others
    ({}, None),
])
def test_the_ranks_of_an_outside_launch_name_one_run_folder(env: dict[str, str], folder: str | None) -> None:
    assert outside_launch(env) == folder


def test_the_runner_checks_what_a_stage_needs_before_the_stage_runs(compose_cfg, tmp_path: Path,
                                                                   monkeypatch) -> None:
    called = []
    stages = {**lettingo.pipeline.BY_NAME}
    stages["align"] = dataclasses.replace(stages["align"], run=lambda ctx: called.append(ctx) or {})
    monkeypatch.setattr(lettingo.pipeline, "BY_NAME", stages)
    cfg = compose_cfg(["debug=tiny", "stage=align", "logger=none"], run_dir=tmp_path / "run")
    with pytest.raises(MissingArtifact, match=r"no finished 'pairs' in .*lettingo stage=evaluate"):
        lettingo.pipeline.run(cfg)
    assert called == []  # refused before the stage loaded anything
