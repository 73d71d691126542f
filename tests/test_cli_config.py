"""The console script checks the config before Hydra starts a run: a bad value, a wrong type or an unknown key
fails in one line naming the key, with nothing written and no training stack imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lettingo import CONFIG_DIR
from lettingo import __version__ as lettingo_version

#: The bad values of issue 20's probe (and a misspelt key), each with the line it must fail with.
BAD = [
    (["--cfg", "job", "sampling.n=foo"], "sampling.n=foo: must be an integer"),
    (["stage=pipeline", "sampling.n=foo"], "sampling.n=foo: must be an integer"),
    (["stage=pipeline", "seed=abc"], "seed=abc: must be an integer"),
    (["stage=pipeline", "num_threads=0"], "num_threads=0: must be null or >= 1"),
    (["stage=pipeline", "num_threads=-1"], "num_threads=-1: must be null or >= 1"),
    (["stage=pipeline", "sampling.backbones={}"], "sampling.backbones={}: Hydra merges a mapping"),
    (["stage=pipeline", "sampling.max_new_tokens=100000"], "sampling.max_new_tokens=100000: must be in [1, 4096]"),
    (["stage=pipeline", "debug=tiny", "trainer=ddp_cpu"], "align.batch.global_size=2: must be a positive multiple "
                                                          "of align.batch.micro_size x trainer.devices"),
    (["stage=pipeline", "+sampling.temprature=1"], "sampling.temprature=1: unknown key"),
    (["-m", "stage=pipeline", "sampling.n=2,foo"], "sampling.n=foo: must be an integer"),  # every job's values
]


def lettingo(root: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python -m lettingo argv`` with its outputs under ``root``."""
    env = {**os.environ, "LETTINGO_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lettingo", *argv], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("argv", "line"), BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_a_bad_config_fails_in_one_line_and_writes_nothing(tmp_path: Path, argv: list[str], line: str) -> None:
    done = lettingo(tmp_path, *argv)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"error: {line}"), done.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no log, no .hydra


def test_cfg_job_prints_a_good_config(tmp_path: Path) -> None:
    done = lettingo(tmp_path, "--cfg", "job", "debug=tiny", "sampling.n=5")
    assert done.returncode == 0, done.stderr
    assert "\nsampling:\n" in done.stdout and "  'n': 5\n" in done.stdout  # YAML quotes n (a boolean in YAML 1.1)


def test_the_console_script_imports_no_training_stack_before_it_checks() -> None:
    code = ("import sys, lettingo.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'transformers', 'peft'}))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "[]"


def test_version_prints_the_projects_version(tmp_path: Path) -> None:
    done = lettingo(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout == f"lettingo {lettingo_version}\n"
    assert list(tmp_path.iterdir()) == []


def test_help_starts_with_the_projects_usage_then_hydras(tmp_path: Path) -> None:
    done = lettingo(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    usage, hydra_help = done.stdout.split("cli is powered by Hydra", 1)
    assert usage.startswith(f"lettingo {lettingo_version}: ")
    stages = "data, explore, rec_profiles, train_rec, evaluate, align, test, pipeline"
    assert f"stages (stage=, default pipeline): {stages}" in usage
    experiments = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
    assert all(name in usage for name in experiments) and "positive_control" in experiments
    assert "lettingo experiment=quickstart " in usage and "== Configuration groups ==" in hydra_help
    assert list(tmp_path.iterdir()) == []
