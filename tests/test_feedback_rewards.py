"""The rewards artifact: one verdict per profile row, written in chunks, resumed after a crash."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from lettingo.artifacts import ArtifactStore
from lettingo.data.schema import LABELS
from lettingo.feedback.rewards import REWARD_COLUMNS, score_profiles
from lettingo.profiles.explore import KEY
from lettingo.recommender.cases import RecCase


def item(i: int, label: str) -> dict:
    return {"item_id": str(i), "title": f"Film {i}", "attributes": [], "rating": 4.0, "label": label, "text": ""}


SAMPLES = pd.DataFrame([
    {"user_id": f"u{u}", "older": [], "recent": [item(u, "like")], "target": item(100 + u, LABELS[u % 3])}
    for u in range(5)
])
PROFILES = pd.DataFrame([
    {"user_id": f"u{u}", "split": "s", "backbone": "b", "sample_idx": j, "prompt_name": "p", "history_len": 30,
     "prompt": "...", "text": LABELS[(u + j) % 3]}
    for u in range(5) for j in range(3)
])


class NamesLabel:
    """Predicts the label the profile names with probability 0.8; fails after `fail_after` calls."""

    name = "names_label"

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after, self.scored = fail_after, 0

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        if self.fail_after is not None and self.scored >= self.fail_after:
            raise RuntimeError("killed")
        self.scored += len(cases)
        out = np.full((len(cases), 3), 0.1)
        out[np.arange(len(cases)), [LABELS.index(c.profile) for c in cases]] = 0.8
        return out


def test_every_profile_row_gets_a_verdict(tmp_path) -> None:
    rewards = score_profiles(NamesLabel(), PROFILES, SAMPLES, ArtifactStore(tmp_path).rows("rewards", "fp", KEY), 2)
    assert len(rewards) == len(PROFILES) and set(REWARD_COLUMNS) <= set(rewards.columns)
    for row in rewards.itertuples():
        assert row.label == LABELS[int(row.user_id[1:]) % 3] and row.predicted == row.text
        assert row.correct == (row.text == row.label)
        assert row.p_true == pytest.approx(0.8 if row.correct else 0.1)
    assert rewards["correct"].sum() == 5  # exactly one of each user's three profiles names the truth


def test_a_killed_run_resumes_with_only_the_missing_rows(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        score_profiles(NamesLabel(fail_after=6), PROFILES, SAMPLES, store.rows("rewards", "fp", KEY), users_per_chunk=2)
    assert len(store.read_table("rewards")) == 6 and store.meta("rewards") is None
    assert store.prepare("rewards", "fp") == "partial"  # the rows written so far are kept for these inputs
    resumed = NamesLabel()
    rewards = score_profiles(resumed, PROFILES, SAMPLES, store.rows("rewards", "fp", KEY), users_per_chunk=2)
    assert resumed.scored == 9 and len(rewards) == 15
    assert not rewards.duplicated(["user_id", "sample_idx"]).any()
    again = NamesLabel()
    score_profiles(again, PROFILES, SAMPLES, store.rows("rewards", "fp", KEY), users_per_chunk=2)
    assert again.scored == 0  # finished for these inputs: reused
    other = NamesLabel()
    score_profiles(other, PROFILES, SAMPLES, store.rows("rewards", "other-fp", KEY), users_per_chunk=2)
    assert other.scored == 15  # other inputs: rescored from scratch
    assert len(list(tmp_path.glob("rewards.stale-*"))) == 1  # the old verdicts moved aside, not deleted


def test_profiles_of_unknown_users_are_an_error(tmp_path) -> None:
    stray = PROFILES.assign(user_id="nobody")
    with pytest.raises(ValueError, match="no sample"):
        score_profiles(NamesLabel(), stray, SAMPLES, ArtifactStore(tmp_path).rows("rewards", "fp", KEY))
