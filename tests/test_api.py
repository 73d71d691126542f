"""The Python API (`lettingo.compose`, `lettingo.run`, `lettingo.load_results`) as a notebook uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lettingo
from lettingo.evaluation.comparison import read_comparison
from lettingo.evaluation.methods import NO_DPO
from lettingo.schemas import ConfigError


def test_compose_checks_like_the_command_line_and_leaves_the_folder_to_run() -> None:
    cfg = lettingo.compose(["experiment=quickstart", "history=h50"])
    assert cfg.history.length == 50 and cfg.experiment_name == "quickstart" and cfg.paths.run_dir is None
    with pytest.raises(ConfigError, match="sampling.n"):
        lettingo.compose(["sampling.n=0"])


def test_run_the_tiny_pipeline_and_read_its_comparison(tmp_path: Path, monkeypatch, tiny_model_cache: Path) -> None:
    monkeypatch.setenv("LETTINGO_ROOT", str(tmp_path))  # outputs/ under tmp_path, as the command line would
    cfg = lettingo.compose(["debug=tiny", f"paths.model_cache={tiny_model_cache}", "align.methods=[dpo]"])
    results = lettingo.run(cfg)
    assert list(results) == ["data", "explore", "rec_profiles", "train_rec", "evaluate", "align", "test"]
    run_dir = Path(cfg.paths.run_dir)
    assert run_dir.parent == tmp_path / "outputs" / "debug" / "default"  # the folder the command would pick
    table = lettingo.load_results(run_dir)
    stored = read_comparison(run_dir / "results" / "comparison.json")
    assert list(table["method"]) == list(stored.methods) and NO_DPO in set(table["method"])
    row = table.set_index("method").loc[NO_DPO]
    assert row["accuracy_value"] == pytest.approx(stored.intervals[NO_DPO]["accuracy"].value)
    assert json.loads((run_dir / "run_config.json").read_text())["config"]["paths"]["run_dir"] == str(run_dir)
    with pytest.raises(FileNotFoundError, match="comparison.json is missing"):
        lettingo.load_results(tmp_path)


def test_importing_lettingo_loads_no_training_stack() -> None:
    code = ("import sys, lettingo; assert callable(lettingo.compose); "
            "print(sorted({'torch', 'lightning'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
