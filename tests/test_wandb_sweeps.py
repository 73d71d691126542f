"""W&B is where runs are compared: across an offline H = 30/50/70 sweep and a single/multi-LLM sweep of the tiny
pipeline, read back with the `wandb` package (its `wandb leet inspect`, which reads a run's transaction log),
every run logs the same summary keys, is named from its experiment and swept value, tagged with them, grouped by
its experiment, typed by its stage, and the config's `compare` fields separate the runs of each ablation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WANDB = Path(sys.executable).parent / "wandb"
#: Keys W&B adds to every summary itself.
OWN_KEYS = {"_runtime", "_step", "_timestamp", "_wandb"}


def inspect_run(folder: Path) -> dict:
    """The offline run under ``folder``, read with `wandb leet inspect`: its summary view (name, tags, config,
    summary) and the run record's group and job type."""
    [run] = folder.glob("wandb/offline-run-*")
    summary = json.loads(subprocess.run([str(WANDB), "leet", "inspect", "--summary", "--json", str(run)],
                                        capture_output=True, text=True, check=True, timeout=120).stdout)
    records = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(run)], capture_output=True, text=True,
                             check=True, timeout=120).stdout.splitlines()
    [record] = [json.loads(line)["run"] for line in records if json.loads(line).get("type") == "run"]
    return summary | {"group": record.get("run_group"), "job_type": record.get("job_type")}


def sweep(tmp_path: Path, name: str, models: Path, *overrides: str) -> list[dict]:
    """Run a tiny offline multirun of ``overrides`` into ``tmp_path/name``; return its runs in job order."""
    folder = tmp_path / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETTINGO_ROOT": str(tmp_path), "LETTINGO_MODEL_CACHE": str(models),
           "WANDB_MODE": "offline", "HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "lettingo", "-m", "experiment=quickstart", "debug=tiny", "logger=wandb",
               f"hydra.sweep.dir={folder}", *overrides]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: int(p.name.split("_")[0]))
    return [inspect_run(job) for job in jobs]


def metric_keys(run: dict) -> set[str]:
    """The run's summary keys that a stage logged."""
    return set(run["summary"]) - OWN_KEYS


def assert_shared_keys(runs: list[dict]) -> None:
    """Every run logged the same summary keys, none holding a swept value."""
    keys = [metric_keys(run) for run in runs]
    assert all(k == keys[0] for k in keys), [sorted(k ^ keys[0]) for k in keys]
    assert len(keys[0]) > 100  # every stage logged
    swept_values = ("h30", "h50", "h70", "tiny_random", "tiny_second", "10h_")
    assert not [k for k in keys[0] if any(value in k for value in swept_values)]


@pytest.fixture(scope="module")
def second_tiny_sampling(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config folder adding `sampling=tiny_multi`: the tiny generator and a second random one (other weights)."""
    folder = tmp_path_factory.mktemp("conf")
    (folder / "sampling").mkdir()
    (folder / "sampling" / "tiny_multi.yaml").write_text(
        "defaults:\n  - single\n  - /backbone@backbones.second: tiny_random\n  - _self_\n"
        "backbones:\n  second:\n    name: tiny_second\n    model: tiny_random:1\n")
    return folder


@pytest.mark.slow
def test_history_sweep_runs_share_every_key_and_are_named_tagged_grouped(tmp_path, tiny_model_cache) -> None:
    runs = sweep(tmp_path, "h", tiny_model_cache, "history=h30,h50,h70")
    assert_shared_keys(runs)
    assert [run["name"] for run in runs] == [f"quickstart history=h{h}" for h in (30, 50, 70)]
    for run, history in zip(runs, (30, 50, 70), strict=True):
        assert f"history=h{history}" in run["tags"] and "debug:tiny" in run["tags"]
        assert run["group"] == "debug/quickstart" and run["job_type"] == "pipeline"
        compare = run["config"]["compare"]
        assert compare["history_length"] == history and compare["experiment"] == "quickstart"
    assert len({run["config"]["compare"]["history_length"] for run in runs}) == 3
    # The same metric, one key, three values: what a "profile sensitivity against H" chart plots.
    key = "evaluate/test/no_profile/accuracy"
    assert all(key in run["summary"] for run in runs)


@pytest.mark.slow
def test_single_and_multi_llm_runs_share_every_key_and_group_apart(tmp_path, tiny_model_cache,
                                                                   second_tiny_sampling) -> None:
    runs = sweep(tmp_path, "s", tiny_model_cache, "sampling=single,tiny_multi",
                 f"hydra.searchpath=[file://{second_tiny_sampling}]")
    assert_shared_keys(runs)
    single, multi = (run["config"]["compare"] for run in runs)
    assert (single["sampling"], multi["sampling"]) == ("single", "tiny_multi")
    assert (single["backbones"], multi["backbones"]) == ("tiny_random", "tiny_random+tiny_second")
    assert single["generator"] == multi["generator"] == "tiny_random"
    assert [run["name"] for run in runs] == ["quickstart sampling=single", "quickstart sampling=tiny_multi"]
