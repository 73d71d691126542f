"""E2, the real loop (`lettingo experiment=ml1m_loop`): ONE finished run folder -> results/ml1m_loop.md and .csv.

The judge is the frozen cross-encoder f_Rec trained on generated, oracle-fact and empty profiles; the reward is
`log_p_gain` (log p of the true label with the profile minus without it) over M targets per user. Writes, through
`lettingo.loop_report`: the run, stage times, the f_Rec, the loop per method and round (the stated-mean rule's
rate beside the reward), round 1's reliability gate, the held-out reward of every generator (paired difference
against the base, shuffled guard, degenerate share), the endpoints (aligned − base: Δ mean p_true and Δ
log-loss, then accuracy and macro-F1, over all M targets and on the real target), every row of the f_Rec's
comparisons (no profile, shuffled, oracle facts, tabular, no DPO, SFT, each round of DPO and GRPO), and examples.
An effect is claimed only where its paired interval excludes zero.

Run: python experiments/ml1m_loop.py outputs/ml1m_loop/latest [--out results] [--remark "..."]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lettingo.artifacts import META_FILE, REC_MODEL
from lettingo.loop_report import LoopExperiment, main
from lettingo.reports import config_value, read_json, rec_model_line


def describe_judge(folder: Path, config: Mapping[str, Any]) -> str:
    """The judge (the frozen f_Rec, as stage train_rec recorded it) and the reward read from it."""
    meta_path = folder / REC_MODEL / META_FILE
    trained = rec_model_line(read_json(meta_path) if meta_path.is_file() else {})
    return (f"`recommender={config_value(config, 'recommender.name')}` judges every round, frozen: {trained}. "
            f"`evaluate.reward={config_value(config, 'evaluate.reward')}` over M = "
            f"{config_value(config, 'evaluate.targets_per_user')} targets per user (each after the older history the "
            f"profile was written from, with its own K = {config_value(config, 'history.recent')} recent items): "
            f"log p(true label | profile) − log p(true label | no profile), averaged over the M targets, so each "
            f"target's difficulty cancels.\n")


E2 = LoopExperiment(name="ml1m_loop", title="E2, the real loop: ML-1M judged by the frozen cross-encoder f_Rec",
                    reward="log_p_gain", describe_reward=describe_judge)

if __name__ == "__main__":
    main(E2, __doc__)
