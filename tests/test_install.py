"""A non-editable install (a built wheel in a fresh venv) ships the config tree: every experiment composes."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMPOSE_EVERY_EXPERIMENT = """
import pathlib, sys
import lettingo
from hydra import compose, initialize_config_dir
from lettingo.run_folders import register_resolvers
from lettingo.schemas import validate_config
register_resolvers()
conf = pathlib.Path(lettingo.CONFIG_DIR)
assert conf.is_relative_to(sys.prefix), (conf, sys.prefix)
external = {"paper_ml10m", "paper_amazon_books", "paper_yelp"}  # read files the user points dataset.path at
names = sorted(p.stem for p in (conf / "experiment").glob("*.yaml"))
with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
    for name in names:
        extra = ["dataset.path=/data/unused"] if name in external else []
        validate_config(compose("config", overrides=[f"experiment={name}", "paths.run_dir=/tmp/unused", *extra]))
print("composed", " ".join(names))
"""


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_composes_every_experiment(tmp_path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("lettingo-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    packages = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                              capture_output=True, text=True).stdout.strip()
    # The dependencies come from the test venv (read-only, via a .pth line); lettingo itself from the wheel.
    Path(packages, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    done = subprocess.run([str(python), "-c", COMPOSE_EVERY_EXPERIMENT], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "quickstart" in done.stdout and "paper_yelp" in done.stdout
