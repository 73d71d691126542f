"""A Hydra multirun of two tiny jobs writes two complete run folders, one per swept value."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_multirun_of_two_tiny_jobs(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETTINGO_MODEL_CACHE": str(tmp_path / "models")}
    subprocess.run(
        [sys.executable, "-m", "lettingo", "-m", "stage=explore", "backbone=tiny_random", "logger=csv",
         "sampling.max_users=2", "sampling.n=2", "sampling.max_new_tokens=4", "num_threads=1", "seed=0,1",
         f"hydra.sweep.dir={sweep_dir}"],
        check=True, capture_output=True, text=True, env=env,
    )
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and ["seed=0" in jobs[0].name, "seed=1" in jobs[1].name] == [True, True]
    for job, seed in zip(jobs, (0, 1), strict=True):
        config = json.loads((job / "run_config.json").read_text())["config"]
        assert config["seed"] == seed
        assert (job / "profiles" / "_meta.json").exists()
        assert (job / "logs" / "metrics.csv").exists()
