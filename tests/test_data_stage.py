"""The data stage on the real ML-100K files, through the real config and the command line."""

from __future__ import annotations

import os
import subprocess
import sys

from lettingo.pipeline import run


def test_data_stage_summary_and_reuse(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(["stage=data", "logger=none"])
    summary = run(cfg)
    assert summary["interactions"] == 100_000 and summary["users"] == 943 and summary["items"] == 1682
    assert summary["eligible_users_per_H"]["70"] == 407  # users with >= 81 ratings
    assert summary["split_sizes"]["test"] == 120 and summary["split_sizes"]["profile_train_h30"] == 60
    samples_file = tmp_path / "run" / "samples" / "data.parquet"
    first_mtime = samples_file.stat().st_mtime_ns
    assert run(cfg) == summary
    assert samples_file.stat().st_mtime_ns == first_mtime  # reused, not rebuilt
    assert (tmp_path / "run" / "run_config.json").exists()


def test_command_line_prints_summary(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "lettingo", "stage=data", "logger=csv", f"hydra.run.dir={tmp_path}/cli"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout
    assert "100,000 interactions, 943 users, 1,682 items" in out
    assert "H=30: 638, H=50: 494, H=70: 407" in out
    assert (tmp_path / "cli" / "logs" / "metrics.csv").exists()
