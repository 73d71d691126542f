"""A Hydra multirun of two tiny pipelines writes two complete run folders, one per swept value; the same
command with the same `hydra.sweep.dir` continues them (how a killed sweep resumes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from lettingo.provenance import read_invocations


def test_multirun_of_two_tiny_jobs(tmp_path, tiny_model_cache) -> None:
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETTINGO_ROOT": str(tmp_path),
           "LETTINGO_MODEL_CACHE": str(tiny_model_cache)}
    command = [sys.executable, "-m", "lettingo", "-m", "stage=pipeline", "debug=tiny", "logger=csv", "seed=0,1",
               f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: int(p.name.split("_")[0]))
    assert len(jobs) == 2, jobs
    for number, (job, seed) in enumerate(zip(jobs, (0, 1), strict=True)):
        assert job.name.split("_")[0] == str(number)  # named by the job number
        assert f"seed={seed}" in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        config = json.loads((job / "run_config.json").read_text())["config"]
        assert config["seed"] == seed and config["paths"]["run_dir"] == str(job)
        comparison = json.loads((job / "results" / "comparison.json").read_text())
        assert comparison["meta"]["seed"] == seed and comparison["users"]
        assert (job / "profiles" / "_meta.json").exists()
        assert (job / "logs" / "metrics.csv").exists()

    written = {path: path.stat().st_mtime_ns for job in jobs for path in job.rglob("*")
               if path.is_file() and ("results" in path.parts or path.name == "_meta.json")}
    assert len(written) > 2 * 3
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == \
        [job.name for job in jobs]  # the same job folders, no new ones
    assert {path: path.stat().st_mtime_ns for path in written} == written  # every artifact reused, none rewritten
    for job in jobs:
        assert len(read_invocations(job)) == 2
