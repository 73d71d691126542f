"""DDP-safe stages: under a multi-process trainer only the fits are distributed; every other stage and every
artifact write happens once, on rank 0; the checkpoint metric and the DPO reference are computed over all ranks.

The two-process runs use `trainer=ddp_cpu` (gloo on the CPU); `align.batch.micro_size=1` keeps the global
batch of the tiny setup (2 pairs = 1 x 2 processes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from fixtures_llm import free_port

import lettingo
from lettingo.artifacts import ArtifactStore, ReadOnlyStore
from lettingo.data.schema import LABELS
from lettingo.evaluation.metrics import classification_metrics
from lettingo.launch import RANK_LOGS, DistributedSchema, RankFailed, launch, process_group
from lettingo.pipeline import run
from lettingo.recommender.base import RecClassifierModule, logged_key
from lettingo.recommender.training import RecDataModule

DDP = ("trainer=ddp_cpu", "align.batch.micro_size=1")
ROUNDS = "align.rounds=2"  # a later round's data is made by rank 0 alone and shared


# --- the store of the other ranks -----------------------------------------------------------------------
def test_a_read_only_store_reads_and_answers_but_never_writes(tmp_path: Path) -> None:
    writer = ArtifactStore(tmp_path)
    writer.write_table("t", pd.DataFrame({"a": [1, 2]}), "fp1")
    writer.begin("work", "fp1")
    reader = ArtifactStore(tmp_path, read_only=True)
    assert reader.read_table("t")["a"].tolist() == [1, 2]
    assert reader.prepare("t", "fp1") == "done" and reader.begin("work", "fp1") == "partial"
    assert reader.prepare("t", "fp2") == "new" and (tmp_path / "t" / "_meta.json").exists()  # not moved aside
    assert reader.begin("other", "fp1") == "new" and not (tmp_path / "other").exists()
    for write in (lambda: reader.finish("t", "fp1"), lambda: reader.write_table("t", pd.DataFrame(), "fp1"),
                  lambda: reader.append_chunk("t", pd.DataFrame()), lambda: reader.write_json("j", {}, "fp1"),
                  lambda: reader.move_aside("t"), lambda: reader.lock().__enter__()):
        with pytest.raises(ReadOnlyStore):
            write()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "work"]


# --- how the ranks are started and meet ---------------------------------------------------------------
#: Short waits for the tests: a rank that fails, dies or hangs must end the run within seconds.
QUICK = DistributedSchema(timeout_s=20.0, stage_wait_s=20.0, monitor_interval_s=0.2, shutdown_timeout_s=2)


def _ranks_meet(behaviour: str) -> str:
    """One rank of a launch: rank 1 misbehaves as told before the first check point; every rank then meets."""
    with process_group(QUICK, "gloo") as ranks:
        run_dir = ranks.agree(f"folder of rank {ranks.rank}")
        if ranks.rank == 1 and behaviour == "raise":
            error = ValueError("bad pairs in rank 1")
            ranks.sync("stage align", error)
            raise error
        if ranks.rank == 1 and behaviour in ("kill", "hang"):
            os.kill(os.getpid(), signal.SIGKILL if behaviour == "kill" else signal.SIGSTOP)
        ranks.sync("stage align")
        return run_dir


def test_the_elastic_launcher_runs_every_rank_and_they_agree_on_rank_0s_values(tmp_path: Path) -> None:
    assert launch(_ranks_meet, ("none",), 2, QUICK, tmp_path / "logs") == "folder of rank 0"


@pytest.mark.parametrize(("behaviour", "line"), [
    ("raise", r"^rank 1 failed .*ValueError: bad pairs in rank 1; its log: .*/attempt_0/1/$"),
    ("kill", r"^rank 1 was killed by SIGKILL; its log: .*/attempt_0/1/$"),
    ("hang", r"^rank 0 waited in vain for the others at the end of stage align: .*Ranks? 1 .*; its log: "),
])
def test_a_rank_that_fails_dies_or_hangs_ends_the_run_in_one_line_naming_it(tmp_path: Path, behaviour: str,
                                                                             line: str) -> None:
    with pytest.raises(RankFailed) as failed:
        launch(_ranks_meet, (behaviour,), 2, QUICK, tmp_path / "logs")
    message = str(failed.value)
    assert len(message.splitlines()) == 1 and re.match(line, message), message
    log_folder = Path(message.rsplit("its log: ", 1)[1])
    assert log_folder.is_dir() and log_folder.is_relative_to(tmp_path / "logs")


def test_slurm_tasks_must_match_the_trainers_processes(compose_cfg, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "lettingo")
    cfg = compose_cfg(["debug=tiny", *DDP, "stage=pipeline"], run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="tasks_per_node"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # refused before any stage


def test_the_library_starts_no_process_and_sets_no_handler_outside_the_entry_point() -> None:
    package = Path(lettingo.__file__).parent
    pattern = re.compile(r"subprocess\.Popen|import _thread|os\._exit|\.ranks|signal\.signal\(")
    found = [f"{path.relative_to(package)}:{number}" for path in package.rglob("*.py") if path.name != "cli.py"
             for number, text in enumerate(path.read_text().splitlines(), start=1) if pattern.search(text)]
    assert found == []


# --- what is computed over all ranks --------------------------------------------------------------------
def _pairs(tokenizer) -> pd.DataFrame:
    def render(text: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)

    prompts = [render(f"{title} {r} of 5. Write a profile.") for title, r in
               [("Toy Story (1995)", 5), ("Alien (1979)", 1), ("Fargo (1996)", 4), ("Titanic (1997)", 3),
                ("Heat (1995)", 2)]]
    return pd.DataFrame({"user_id": list("12345"), "prompt": prompts,
                         "chosen": ["Likes crime dramas.", "Dislikes horror.", "Neutral on romance.", "Likes noir.",
                                    "Rates comedies low."],
                         "rejected": ["Likes horror.", "Star Wars.", "Toy Story Toy Story.", "Hates films.", "Fargo."]})


def _reference(cache: Path, rank: int, world: int, batch_size: int) -> list[list[float]]:
    from lettingo.align.adapters import attach_lora
    from lettingo.align.data import batch_loader, preference_examples
    from lettingo.align.dpo import attach_reference_logps
    from lettingo.llm.models import load_causal_lm

    model, tokenizer = load_causal_lm("tiny_random", cache, dtype="float32")
    torch.manual_seed(0)
    model = attach_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    examples, _ = preference_examples(_pairs(tokenizer), tokenizer, 512, 64)
    loader = batch_loader(examples, batch_size, tokenizer.pad_token_id, seed=0, shuffle=True)
    assert attach_reference_logps(model, examples, loader, rank=rank, world=world) == len(examples)
    return [e["ref_logps"] for e in examples]


class FixedPredictions(RecClassifierModule):
    """Cases are (true label, predicted label) codes; the logits say the prediction."""

    def __init__(self) -> None:
        super().__init__("fixed", optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
        self.bias = torch.nn.Parameter(torch.zeros(len(LABELS)))

    def collate(self, cases):
        return {"labels": torch.tensor([t for t, _ in cases]), "pred": torch.tensor([p for _, p in cases])}

    def logits(self, batch):
        return torch.nn.functional.one_hot(batch["pred"], len(LABELS)).float() * 10 + self.bias


VAL_CASES = [(0, 0), (1, 1), (2, 1), (0, 2), (1, 1), (2, 2), (0, 1)]  # 7 cases: shards of 4 and 3


def _validation_macro_f1(rank: int) -> float:
    """Lightning validation on two gloo processes (the group made by the DDP strategy)."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    module, data = FixedPredictions(), RecDataModule(VAL_CASES, VAL_CASES, None, batch_size=2)
    data.collate = module.collate
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=data, verbose=False)
    return float(trainer.callback_metrics[logged_key("val", "macro_f1")])


def _two_ranks_worker(rank: int, port: int, cache: str, out: str) -> None:
    """One of two processes: the validation macro-F1, then the DPO reference in the same process group."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "NODE_RANK": "0"})
    torch.set_num_threads(1)
    import torch.distributed as dist

    macro_f1 = _validation_macro_f1(rank)
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {"macro_f1": macro_f1, "reference": [_reference(Path(cache), rank, 2, b) for b in (1, 2)]}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def two_ranks(tiny_model_cache: Path, tmp_path_factory) -> list[dict]:
    """What each of two processes computed together (one start of two processes for both tests below)."""
    out = tmp_path_factory.mktemp("two_ranks")
    _reference(tiny_model_cache, 0, 1, 1)  # the tiny model is built here once, not by two processes at once
    torch.multiprocessing.spawn(_two_ranks_worker, args=(free_port(), str(tiny_model_cache), str(out)), nprocs=2,
                                join=True)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture
def one_thread():
    """One torch thread here too, as in the two workers (the same sums in the same order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gathered_reference_logps_equal_one_process(two_ranks, tiny_model_cache: Path, one_thread) -> None:
    alone = [_reference(tiny_model_cache, 0, 1, b) for b in (1, 2)]  # 5 examples: shards of 3 and 2 batches
    assert [r["reference"] for r in two_ranks] == [alone, alone]  # every rank has every example's, the same


def test_validation_macro_f1_is_over_the_cases_of_every_rank(two_ranks) -> None:
    shards = [RecDataModule(VAL_CASES, VAL_CASES, list, 2) for _ in range(2)]
    for rank, data in enumerate(shards):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)
    seen = [case for data in shards for batch in data.val_dataloader() for case in batch]
    assert sorted(seen) == sorted(VAL_CASES)  # every case once: no padding repeats
    true, pred = zip(*VAL_CASES, strict=True)
    expected = classification_metrics([LABELS[i] for i in true], [LABELS[i] for i in pred], LABELS)["macro_f1"]
    shard0 = classification_metrics([LABELS[t] for t, _ in VAL_CASES[::2]], [LABELS[p] for _, p in VAL_CASES[::2]],
                                    LABELS)["macro_f1"]
    assert shard0 != pytest.approx(expected)  # the test can tell one rank's cases from all of them
    assert [r["macro_f1"] for r in two_ranks] == [pytest.approx(expected, abs=1e-6)] * 2


# --- the whole loop on two processes --------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One project root (and model cache) for the command-line runs of this module."""
    return tmp_path_factory.mktemp("ddp")


def lettingo_cli(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETTINGO_ROOT": str(root),
           "LETTINGO_MODEL_CACHE": str(root / "models")}
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    done = subprocess.run([sys.executable, "-m", "lettingo", *flags, "debug=tiny", *rest], capture_output=True,
                          text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def only_folder(parent: Path) -> Path:
    folders = [p for p in parent.iterdir() if p.is_dir() and p.name != "latest"]
    assert len(folders) == 1, folders
    return folders[0]


def files(run_dir: Path) -> list[str]:
    """The files of a run folder, without the elastic agent's logs of each rank."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and
                  p.relative_to(run_dir).parts[0] != RANK_LOGS)


def rank_log(run_dir: Path, rank: int) -> str:
    """What rank ``rank`` wrote to stderr in the one launch of ``run_dir`` (the elastic agent's copy)."""
    (log,) = run_dir.glob(f"{RANK_LOGS}/*/attempt_0/{rank}/stderr.log")
    return log.read_text()


def metas(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/_meta.json")}


KEYS = {"profiles": ["user_id", "backbone", "sample_idx", "prompt_name", "history_len"],
        "rec_train_profiles": ["user_id", "backbone", "sample_idx", "prompt_name", "history_len"]}


def assert_written_once(single: Path, ddp: Path) -> None:
    """The same files, every artifact with the rows of the one-process run, no duplicates, no rank left over."""
    assert files(ddp) == files(single)  # every chunk, checkpoint and table once; no stale or rank folders
    assert not list(ddp.glob("*.stale-*"))
    one, two = metas(single), metas(ddp)
    assert sorted(two) == sorted(one)
    for name, meta in one.items():
        assert two[name].get("rows") == meta.get("rows"), name
    store = ArtifactStore(ddp)
    for name, key in KEYS.items():
        if name in one:
            assert not store.read_table(name).duplicated(key).any(), name


@pytest.fixture(scope="module")
def runs(root: Path) -> SimpleNamespace:
    """One process each for a zero-shot and a trainable f_Rec, and a two-job multirun of the same two on two
    processes per job (`-m recommender=llm_zero_shot,llm_lora trainer=ddp_cpu`); two on-policy rounds each, so a
    later round's explore, rewards and pairs (rank 0's, shared with the other rank) are compared too."""
    for recommender in ("llm_zero_shot", "llm_lora"):
        lettingo_cli(root, "stage=pipeline", f"experiment_name=one_{recommender}", f"recommender={recommender}",
                     "align.batch.micro_size=1", ROUNDS)
    began = time.perf_counter()
    done = lettingo_cli(root, "-m", "stage=pipeline", "experiment_name=two", "recommender=llm_zero_shot,llm_lora",
                        *DDP, ROUNDS)
    print(f"two-process multirun of two tiny pipelines: {time.perf_counter() - began:.1f} s")
    experiment = root / "outputs" / "debug" / "two"
    sweep = only_folder(experiment / "multirun")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    single = {r: only_folder(root / "outputs" / "debug" / f"one_{r}") for r in ("llm_zero_shot", "llm_lora")}
    return SimpleNamespace(output=done.stdout + done.stderr, experiment=experiment, sweep=sweep, jobs=jobs,
                           single=single)


def job_of(runs: SimpleNamespace, recommender: str) -> Path:
    (job,) = [j for j in runs.jobs if json.loads((j / "run_config.json").read_text())["config"]["recommender"][
        "name"] == recommender]
    return job


@pytest.mark.slow
def test_a_multirun_on_two_processes_makes_one_folder_per_job_and_nothing_else(runs) -> None:
    assert [p.name for p in runs.experiment.iterdir()] == ["multirun"]  # no run folder besides the sweep's
    assert [p.name for p in runs.sweep.iterdir() if not p.is_dir()] == ["multirun.yaml"]
    assert len(runs.jobs) == 2  # one multirun, two jobs: no rank re-ran the command line or the sweep
    for job in runs.jobs:
        assert (job / "results" / "comparison.json").exists()
        assert "=== stage align" in rank_log(job, 1) and "=== stage explore" not in rank_log(job, 1)


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(runs) -> None:
    single, ddp = runs.single["llm_zero_shot"], job_of(runs, "llm_zero_shot")
    assert_written_once(single, ddp)
    a, b = ArtifactStore(single), ArtifactStore(ddp)
    for name in ("samples", "profiles", "rewards", "pairs"):  # zero-shot f_Rec: the very same pairs
        pd.testing.assert_frame_equal(a.read_table(name).drop(columns=["seconds"], errors="ignore"),
                                      b.read_table(name).drop(columns=["seconds"], errors="ignore"))
    assert metas(ddp)["adapter_dpo"]["steps"] == metas(single)["adapter_dpo"]["steps"]
    # Round 2 explored, judged and paired by rank 0 with round 1's adapter, trained on both ranks.
    assert metas(ddp)["adapter_dpo_r2"]["round"] == 2 and metas(ddp)["pairs_dpo_r2"]["rows"] > 0
    assert metas(ddp)["adapter_dpo_r2"]["steps"] == metas(single)["adapter_dpo_r2"]["steps"]


@pytest.mark.slow
def test_two_processes_train_the_f_rec_on_the_cases_one_process_does(runs) -> None:
    single, ddp = runs.single["llm_lora"], job_of(runs, "llm_lora")
    assert_written_once(single, ddp)
    one, two = metas(single)["rec_model"], metas(ddp)["rec_model"]
    assert two["trained"] and (ddp / "rec_model" / "best.ckpt").exists()
    keys = ("train_cases", "val_cases", "train_users", "val_users")
    assert {k: two[k] for k in keys} == {k: one[k] for k in keys}
    assert two["steps"] == one["steps"] // 2  # the same cases in steps of two processes' batches
    assert two["select_by"] == "macro_f1" and 0.0 <= two["val_score"] <= 1.0
    pd.testing.assert_frame_equal(ArtifactStore(single).read_table("rec_train_profiles").drop(columns="seconds"),
                                  ArtifactStore(ddp).read_table("rec_train_profiles").drop(columns="seconds"))


def launcher_env(root: Path) -> dict[str, str]:
    """The environment of a command started as a launcher starts it (no rank variables of this process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "HF_HUB_OFFLINE": "1", "LETTINGO_ROOT": str(root), "LETTINGO_MODEL_CACHE": str(root / "models")}


@pytest.mark.slow
def test_slurm_tasks_are_the_ranks_and_share_one_run_folder(root: Path, runs) -> None:
    """Two processes started as SLURM starts the tasks of a step (as submitit with tasks_per_node=2 does): the
    rank comes from SLURM_PROCID, no process starts another, and both use one run folder, named by the step."""
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "lettingo",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    command = [sys.executable, "-m", "lettingo", "debug=tiny", "stage=pipeline", "experiment_name=slurm", *DDP, ROUNDS]
    tasks = [subprocess.Popen(command, env={**launcher_env(root), **slurm, "SLURM_PROCID": str(r),
                                            "SLURM_LOCALID": str(r)}, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [task.communicate(timeout=900)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "=== stage data" not in outputs[1]  # rank 1 ran no single-process stage
    run_dir = only_folder(root / "outputs" / "debug" / "slurm")  # one folder for both ranks
    assert_written_once(runs.single["llm_zero_shot"], run_dir)
    pd.testing.assert_frame_equal(ArtifactStore(runs.single["llm_zero_shot"]).read_table("pairs"),
                                  ArtifactStore(run_dir).read_table("pairs"))


@pytest.mark.slow
def test_torchrun_runs_the_same_command_on_two_ranks(root: Path, runs) -> None:
    """`torchrun --nproc-per-node=2 -m lettingo ...` writes what one process writes, in one run folder."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lettingo",
               "debug=tiny", "stage=pipeline", "experiment_name=torchrun", *DDP, ROUNDS]
    done = subprocess.run(command, env=launcher_env(root), cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_folder(root / "outputs" / "debug" / "torchrun")
    assert_written_once(runs.single["llm_zero_shot"], run_dir)
    pd.testing.assert_frame_equal(ArtifactStore(runs.single["llm_zero_shot"]).read_table("pairs"),
                                  ArtifactStore(run_dir).read_table("pairs"))


def worker_pids(parent: int) -> list[int]:
    """The processes the elastic agent of ``parent`` spawned as ranks, in the order they started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields, cmdline = stat.read_text().rsplit(")", 1)[1].split(), (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return sorted(pids)


@pytest.mark.slow
def test_killing_a_rank_mid_fit_ends_the_run_in_one_line_naming_it(root: Path) -> None:
    """SIGKILL to rank 1 while it fits the f_Rec: the agent ends rank 0 and the command fails naming rank 1."""
    run_dir = root / "killed"
    command = [sys.executable, "-m", "lettingo", "debug=tiny", "stage=pipeline", "recommender=llm_lora",
               f"run_dir={run_dir}", "distributed.monitor_interval_s=0.2", "distributed.shutdown_timeout_s=2", *DDP]
    started = subprocess.Popen(command, env=launcher_env(root), cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    logs = run_dir / RANK_LOGS
    while started.poll() is None and not any("=== stage train_rec" in log.read_text()
                                             for log in logs.glob("*/attempt_0/1/stderr.log")):
        time.sleep(0.2)
    ranks = worker_pids(started.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGKILL)
    stderr = started.communicate(timeout=120)[1]  # the bound: far below the fit's own length
    assert started.returncode == 1
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]  # one line says why
    assert re.match(r"error: rank 1 was killed by SIGKILL; its log: .*/attempt_0/1/", line), line
    assert not (run_dir / "rec_model" / "_meta.json").exists()  # nothing half-written is marked finished
