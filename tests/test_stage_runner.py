"""The stage runner on the tiny debug setup: stage by stage from the command line equals the pipeline,
growing inputs computes only new rows, bad values fail before any model loads, one process per folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lettingo
import lettingo.llm.pool
import lettingo.pipeline
import lettingo.recommender.loading
import lettingo.stages.data
from lettingo.artifacts import PROFILES, ArtifactStore
from lettingo.cli import sigterm_as_exit
from lettingo.pipeline import TIMES_FILE, record_time, run
from lettingo.provenance import read_invocations
from lettingo.schemas import ConfigError
from lettingo.stages.base import Stage

STAGES = ("data", "explore", "rec_profiles", "train_rec", "evaluate", "align", "test")


def lettingo_cli(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run the console script (as `python -m lettingo`) with outputs under ``root``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETTINGO_ROOT": str(root),
           "LETTINGO_MODEL_CACHE": str(root / "models")}
    return subprocess.run([sys.executable, "-m", "lettingo", "debug=tiny", *overrides], capture_output=True,
                          text=True, env=env, cwd=root)


def comparison(run_dir: Path) -> dict:
    return json.loads((run_dir / "results" / "comparison.json").read_text())


def test_stage_by_stage_continues_the_latest_folder_and_equals_the_pipeline(tmp_path) -> None:
    for stage in STAGES:
        done = lettingo_cli(tmp_path, f"stage={stage}", "experiment_name=steps")
        assert done.returncode == 0, done.stderr[-2000:]
    debug_runs = tmp_path / "outputs" / "debug"  # debug=tiny's runs, apart from the experiments' own
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["debug"]
    folders = [p for p in (debug_runs / "steps").iterdir() if p.name != "latest"]
    assert len(folders) == 1, folders  # six invocations, one run folder, none named by the user
    assert (debug_runs / "steps" / "latest").resolve() == folders[0].resolve()
    assert sorted(p.stem for p in (folders[0] / "configs").glob("*.json")) == sorted(STAGES)
    # Every invocation is recorded, with its own overrides and the code's commit (this checkout's HEAD).
    invocations = read_invocations(folders[0])
    assert [entry["stage"] for entry in invocations] == list(STAGES)
    assert [entry["overrides"] for entry in invocations] == [["debug=tiny", f"stage={s}", "experiment_name=steps"]
                                                             for s in STAGES]
    head = subprocess.run(["git", "-C", str(Path(lettingo.__file__).parents[1]), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert {entry["git_commit"] for entry in invocations} == {head}
    assert json.loads((folders[0] / "run_config.json").read_text())["git_commit"] == head

    done = lettingo_cli(tmp_path, "stage=pipeline", "experiment_name=whole")
    assert done.returncode == 0, done.stderr[-2000:]
    steps, whole = comparison(folders[0]), comparison(debug_runs / "whole" / "latest")
    assert steps["predictions"] == whole["predictions"] and steps["methods"] == whole["methods"]

    # The whole pipeline continues its own folder through the `latest` link (how a killed run resumes).
    latest = debug_runs / "whole" / "latest"
    first = latest.resolve()
    done = lettingo_cli(tmp_path, "stage=pipeline", "experiment_name=whole", f"run_dir={latest}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert latest.resolve() == first and [p.name for p in first.parent.iterdir() if p.name != "latest"] == [first.name]
    assert comparison(first) == whole


def test_a_missing_upstream_artifact_names_the_folder_and_the_command(tmp_path) -> None:
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()  # an existing folder without the data stage's samples (a folder that is not there is refused)
    done = lettingo_cli(tmp_path, "stage=explore", f"run_dir={run_dir}")
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert f"no finished 'samples' in {run_dir}" in line and "lettingo stage=data" in line
    assert "Traceback" not in done.stderr and (run_dir / "cli.log").read_text().count("Traceback") == 1


def test_a_second_process_on_a_run_folder_is_refused_and_writes_nothing_there(tmp_path) -> None:
    run_dir = tmp_path / "busy"
    with ArtifactStore(run_dir).lock():
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        done = lettingo_cli(tmp_path, "stage=data", f"run_dir={run_dir}")
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # no `.hydra/`, no log, no lock
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: run folder {run_dir} is in use by pid {os.getpid()}; wait "
                                                "for it to finish or pick another folder with run_dir=<folder>"]


@pytest.fixture
def tiny(compose_cfg, tiny_model_cache):
    def _compose(*overrides: str):
        return compose_cfg(["debug=tiny", f"paths.model_cache={tiny_model_cache}", *overrides])
    return _compose


def test_growing_max_users_generates_only_the_new_users(tiny) -> None:
    run(tiny("stage=data"))
    run(tiny("stage=explore", "sampling.max_users=2"))
    store = ArtifactStore(tiny().paths.run_dir)
    first = store.read_table(PROFILES)
    assert first["user_id"].nunique() == 2 and len(store.chunk_paths(PROFILES)) == 1
    run(tiny("stage=explore", "sampling.max_users=3"))
    chunks = store.chunk_paths(PROFILES)
    assert len(chunks) == 2  # the first chunk kept as written, one new chunk
    import pandas as pd
    new = pd.read_parquet(chunks[1])
    assert set(new["user_id"]).isdisjoint(first["user_id"]) and new["user_id"].nunique() == 1


BAD_VALUES = [
    ("sampling.temperature=-1", "sampling.temperature"),
    ("recommender.model.model=/nope/model", "recommender.model.model"),
    ("bootstrap.confidence=1.5", "bootstrap.confidence"),
    ("pairs.rule=best", "pairs.rule"),
    ("align.methods=[orpo]", "align.methods"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_bad_values_fail_before_any_model_or_data_loads(tiny, monkeypatch, override, key) -> None:
    def loader_called(*args, **kwargs):
        raise AssertionError("a model or the dataset was loaded before the config was checked")

    for module in (lettingo.llm.pool, lettingo.recommender.loading, lettingo.stages.data):
        monkeypatch.setattr(module, "instantiate", loader_called)
    with pytest.raises(ConfigError) as error:
        run(tiny("stage=pipeline", override))
    message = str(error.value)
    assert key in message and "\n" not in message


def test_any_history_length_gets_its_own_profile_training_group(tiny) -> None:
    run(tiny("stage=data", "history.length=40"))
    samples = ArtifactStore(tiny().paths.run_dir).read_table("samples")
    assert (samples["split"] == "profile_train_h40").sum() == 4
    assert {"profile_train_h30", "profile_train_h50", "profile_train_h70"} <= set(samples["split"])


def test_a_history_longer_than_the_data_fails_in_one_line(tiny) -> None:
    expected = "history.length=500.*only 5 users of ml100k have the 511 interactions"
    with pytest.raises(ValueError, match=expected) as error:
        run(tiny("stage=data", "history.length=500"))
    assert "\n" not in str(error.value)


def test_stage_times_add_up_over_the_invocations_of_a_folder(tmp_path) -> None:
    record_time(tmp_path, "explore", 60.0)
    record_time(tmp_path, "data", 2.04)
    record_time(tmp_path, "explore", 30.5)  # the same stage resumed in a later invocation
    assert json.loads((tmp_path / TIMES_FILE).read_text()) == {"explore": 90.5, "data": 2.0}


def test_sigterm_inside_a_stage_records_its_time_and_exits_143(tiny, monkeypatch) -> None:
    def killed(ctx) -> dict:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill <pid>` or a cluster's preemption would
        raise AssertionError("SIGTERM did not stop the stage")

    slow = Stage(name="slow", run=killed, needs=(), outputs=lambda cfg: [])
    monkeypatch.setattr(lettingo.pipeline, "selected_stages", lambda name, stop_after=None: [slow])

    def unhandled(signum, frame) -> None:
        raise AssertionError("the console script left SIGTERM to the handler it found")

    cfg = tiny("stage=data")
    before = signal.signal(signal.SIGTERM, unhandled)  # fails the test (not the whole session) if unhandled
    try:
        with pytest.raises(SystemExit) as stopped, sigterm_as_exit():  # what the console script wraps run in
            run(cfg)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the handler it found is back after the run
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "slow" in json.loads((Path(cfg.paths.run_dir) / TIMES_FILE).read_text())


