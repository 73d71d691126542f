"""What a profile can be worth to a trained f_Rec, before a loop is run against it: oracle facts - no profile.

Reads run folders whose stages data and train_rec have run (no generation needed) and scores each held-out
(test) user's M targets (`evaluate.targets_per_user`) with the user's oracle-fact profile and with none; prints
the mean probability of the true label for both and their paired difference with its 95% bootstrap interval over
users. When the difference is near zero, no generator can raise this f_Rec's reward with a true fact, and a loop
judged by it can only learn to avoid wrong ones (E1 at K = 10: results/reader_control_k10/reader_control.md).

Run, e.g. for the reader control at K = 10 and K = 1:

    for k in 10 1; do for s in data train_rec; do
      lettingo experiment=reader_control experiment_name=reader_ceiling_k$k history.recent=$k stage=$s; done; done
    python experiments/reader_ceiling.py outputs/reader_ceiling_k10/latest outputs/reader_ceiling_k1/latest
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lettingo.artifacts import META_FILE, REC_MODEL, SAMPLES, ArtifactStore
from lettingo.data.schema import LABELS
from lettingo.evaluation.bootstrap import paired_mean_difference
from lettingo.evaluation.metrics import true_label_probabilities
from lettingo.profiles.oracle import oracle_profile
from lettingo.recommender.cases import target_cases
from lettingo.reports import RUN_CONFIG_FILE, config_value, read_json, require_files

if TYPE_CHECKING:
    from lettingo.recommender.base import Recommender

TEST_SPLIT = "test"
NEEDS = (RUN_CONFIG_FILE, f"{SAMPLES}/{META_FILE}", f"{REC_MODEL}/{META_FILE}")  # what stages data and train_rec write


def user_p_true(recommender: Recommender, users: list[Mapping[str, Any]], profiles: list[str],
                targets: int) -> np.ndarray:
    """Each user's mean probability of the true label over their last ``targets`` targets, given their profile."""
    cases = [case for user, profile in zip(users, profiles, strict=True)
             for case in target_cases(user, profile, targets)]
    truth = true_label_probabilities([case.label for case in cases], recommender.predict(cases), LABELS)
    return truth.reshape(len(users), targets).mean(axis=1)


def ceiling_line(folder: Path) -> str:
    """One line: the run's H, K and M, p_true without and with oracle facts, and their paired difference."""
    require_files(folder, NEEDS, "<name> stage=train_rec")
    config = read_json(folder / RUN_CONFIG_FILE)["config"]
    samples = ArtifactStore(folder, read_only=True).read_table(SAMPLES)
    users = samples[samples["split"] == TEST_SPLIT].to_dict("records")
    from lettingo.recommender.loading import build_recommender  # the model stack, only once a run is scored

    checkpoint = folder / REC_MODEL / read_json(folder / REC_MODEL / META_FILE)["checkpoint"]
    recommender = build_recommender(config_value(config, "recommender.model"), checkpoint)
    history, targets = config_value(config, "history.length"), config_value(config, "evaluate.targets_per_user")
    facts = config_value(config, "prompt.facts")
    empty = user_p_true(recommender, users, [""] * len(users), targets)
    oracle = user_p_true(recommender, users, [oracle_profile(u, history, facts) for u in users], targets)
    gain = paired_mean_difference(oracle, empty)
    return (f"{folder}: H = {history}, K = {config_value(config, 'history.recent')}, M = {targets}, "
            f"{len(users)} held-out users; p_true no profile {empty.mean():.4f}, oracle facts "
            f"{oracle.mean():.4f}; oracle - no profile {gain.value * 100:+.2f} pp "
            f"[{gain.low * 100:+.2f}, {gain.high * 100:+.2f}], p = {gain.p_value:.3f}")


def main() -> None:
    """Print :func:`ceiling_line` for every run folder given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders whose stages data and train_rec have run")
    for folder in parser.parse_args().runs:
        try:
            print(ceiling_line(folder))
        except (FileNotFoundError, ValueError) as error:
            parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
