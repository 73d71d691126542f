"""DDP-safe stages: under a multi-process trainer only the fits are distributed; every other stage and every
artifact write happens once, on rank 0; the checkpoint metric and the DPO reference are computed over all ranks.

The two-process runs use `trainer=ddp_cpu` (gloo on the CPU); `align.batch.micro_size=1` keeps the global
batch of the tiny setup (2 pairs = 1 x 2 processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.artifacts import ArtifactStore, ReadOnlyStore
from lettingo.data.schema import LABELS
from lettingo.evaluation.metrics import classification_metrics
from lettingo.pipeline import RANKS_DIR, RankFailed, Ranks, free_port, rank_overrides, run
from lettingo.recommender.base import RecClassifierModule
from lettingo.recommender.training import RecDataModule
from lettingo.stages import BY_NAME

DDP = ("trainer=ddp_cpu", "align.batch.micro_size=1")


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


# --- how the runner starts and meets the other ranks ----------------------------------------------------
@pytest.fixture
def hydra_job():
    """Compose like the `lettingo` command line does for one job and make it the current Hydra job (undone after)."""
    before = HydraConfig.instance().cfg

    def _job(overrides: list[str], hydra_overrides: list[str]):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, *hydra_overrides], return_hydra_config=True)
        cfg.hydra.overrides.task = overrides  # what Hydra records for the job (the hydra.* ones go elsewhere)
        cfg.hydra.overrides.hydra = hydra_overrides
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _job
    HydraConfig.instance().cfg = before


def test_another_rank_gets_the_jobs_own_overrides_and_the_same_config(hydra_job, tmp_path: Path) -> None:
    run_dir = tmp_path / "multirun" / "0_ab"
    job = ["stage=pipeline", "debug=tiny", "trainer=ddp_cpu", "seed=1", f"run_dir={tmp_path / 'elsewhere'}",
           "sweep=seeds"]
    cfg = hydra_job(job, ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'multirun'}"])
    command = rank_overrides(cfg, run_dir, tmp_path / RANKS_DIR / "x" / "rank1")
    assert command[0] == "--config-name=config"
    assert "seed=1" in command and "sweep=seeds" in command and "hydra.mode=RUN" in command
    assert not any("MULTIRUN" in o or "sweep.dir" in o or "elsewhere" in o for o in command)
    assert command.count("stage=pipeline") == 1 and f"run_dir='{run_dir.absolute()}'" in command
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        rank1 = compose("config", overrides=command[1:], return_hydra_config=True)
    assert rank1.hydra.mode.name == "RUN" and rank1.hydra.output_subdir is None
    assert rank1.paths.run_dir == str(run_dir.absolute())
    ours = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("hydra", "run_dir", "paths")}
    theirs = {k: v for k, v in OmegaConf.to_container(rank1).items() if k not in ("hydra", "run_dir", "paths")}
    assert ours == theirs


def test_slurm_tasks_must_match_the_trainers_processes(compose_cfg, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "lettingo")
    cfg = compose_cfg(["debug=tiny", "trainer=ddp_cpu", "stage=pipeline"], run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="tasks_per_node"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # refused before any stage


def test_a_waiting_rank_follows_rank_0s_markers(tmp_path: Path) -> None:
    align, train_rec = BY_NAME["align"], BY_NAME["train_rec"]
    rank0 = Ranks(0, 2, tmp_path, distributed=("train_rec", "align"))
    rank1 = Ranks(1, 2, tmp_path)
    rank0.end_stage(train_rec)  # ended without a fit: nothing to join
    assert rank1.wait_for_stage(train_rec) is False
    threading.Timer(0.3, rank0.gate(align)).start()  # rank 0 reaches its first fit a little later
    assert rank1.wait_for_stage(align) is True
    rank1.gate(align)()  # fit 0: joined at once
    rank0.end_stage(align)
    with pytest.raises(RuntimeError, match="without it"):
        rank1.gate(align)()  # a second fit rank 0 never started


def test_a_waiting_rank_stops_when_rank_0_fails(tmp_path: Path) -> None:
    rank0, rank1 = Ranks(0, 2, tmp_path), Ranks(1, 2, tmp_path)
    threading.Timer(0.3, rank0.mark_failed, [ValueError("bad pairs")]).start()
    began = time.monotonic()
    with pytest.raises(RankFailed, match="bad pairs"):
        rank1.wait_for_stage(BY_NAME["align"])
    assert time.monotonic() - began < 5
    rank1.mark_failed(RuntimeError("out of memory"))  # and rank 0 learns of a failed rank at its next fit
    with pytest.raises(RankFailed, match="rank1 failed .*out of memory"):
        rank0.gate(BY_NAME["align"])()


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
    return float(trainer.callback_metrics["val/macro_f1"])


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
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def metas(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/_meta.json")}


KEYS = {"profiles": ["user_id", "backbone", "sample_idx", "prompt_name", "history_len"],
        "rec_train_profiles": ["user_id", "backbone", "sample_idx", "prompt_name", "history_len"]}


def assert_written_once(single: Path, ddp: Path) -> None:
    """The same files, every artifact with the rows of the one-process run, no duplicates, no rank left over."""
    assert files(ddp) == files(single)  # every chunk, checkpoint and table once; no stale or rank folders
    assert not (ddp / RANKS_DIR).exists() and not list(ddp.glob("*.stale-*"))
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
    processes per job (`-m recommender=llm_zero_shot,llm_lora trainer=ddp_cpu`)."""
    for recommender in ("llm_zero_shot", "llm_lora"):
        lettingo_cli(root, "stage=pipeline", f"experiment_name=one_{recommender}", f"recommender={recommender}",
                     "align.batch.micro_size=1")
    began = time.perf_counter()
    done = lettingo_cli(root, "-m", "stage=pipeline", "experiment_name=two", "recommender=llm_zero_shot,llm_lora",
                        *DDP)
    print(f"two-process multirun of two tiny pipelines: {time.perf_counter() - began:.1f} s")
    experiment = root / "outputs" / "two"
    sweep = only_folder(experiment / "multirun")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    single = {r: only_folder(root / "outputs" / f"one_{r}") for r in ("llm_zero_shot", "llm_lora")}
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
        assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in (job / "cli.log").read_text()


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(runs) -> None:
    single, ddp = runs.single["llm_zero_shot"], job_of(runs, "llm_zero_shot")
    assert_written_once(single, ddp)
    a, b = ArtifactStore(single), ArtifactStore(ddp)
    for name in ("samples", "profiles", "rewards", "pairs"):  # zero-shot f_Rec: the very same pairs
        pd.testing.assert_frame_equal(a.read_table(name).drop(columns=["seconds"], errors="ignore"),
                                      b.read_table(name).drop(columns=["seconds"], errors="ignore"))
    assert metas(ddp)["adapter_dpo"]["steps"] == metas(single)["adapter_dpo"]["steps"]


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


@pytest.mark.slow
def test_slurm_tasks_are_the_ranks_without_a_launch_of_ours(root: Path, runs) -> None:
    """Two processes started as SLURM starts the tasks of a step (as submitit with tasks_per_node=2 does): the
    rank comes from SLURM_PROCID, no process starts another, and the run folder is the one-process one."""
    run_dir, port = root / "slurm", free_port()
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "lettingo"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETTINGO_ROOT": str(root),
           "LETTINGO_MODEL_CACHE": str(root / "models"), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **slurm}
    command = [sys.executable, "-m", "lettingo", "debug=tiny", "stage=pipeline", f"run_dir={run_dir}", *DDP]
    tasks = [subprocess.Popen(command, env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [task.communicate(timeout=900)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "started ranks" not in outputs[0] and "=== stage data" not in outputs[1]  # rank 1 ran no stage of its own
    assert_written_once(runs.single["llm_zero_shot"], run_dir)
    pd.testing.assert_frame_equal(ArtifactStore(runs.single["llm_zero_shot"]).read_table("pairs"),
                                  ArtifactStore(run_dir).read_table("pairs"))
