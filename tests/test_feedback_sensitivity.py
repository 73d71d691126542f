"""profile_sensitivity on hand-made recommenders that do and do not read the profile."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from lettingo.data.schema import LABELS
from lettingo.feedback.sensitivity import profile_sensitivity, sensitivity_message, shuffle_profiles
from lettingo.recommender.cases import RecCase


class ReadsProfile:
    """Predicts the label the profile names (uniform when it names none)."""

    name = "reads_profile"

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        out = np.full((len(cases), 3), 1 / 3)
        for i, case in enumerate(cases):
            if case.profile in LABELS:
                out[i] = np.eye(3)[LABELS.index(case.profile)]
        return out


class IgnoresProfile:
    """Predicts the label of the user's last recent item, whatever the profile says."""

    name = "ignores_profile"

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        return np.stack([np.eye(3)[LABELS.index(c.recent[-1]["label"])] for c in cases])


def cases(n_users: int = 60, per_user: int = 2) -> list[RecCase]:
    """Users whose true label cycles through LABELS; each profile names the truth; recent hints it half the time."""
    out = []
    for u in range(n_users):
        label = LABELS[u % 3]
        hint = label if u % 2 else LABELS[(u + 1) % 3]
        for _ in range(per_user):
            out.append(RecCase(f"u{u}", label, ({"label": hint},), {"label": label}))
    return out


def test_shuffle_gives_every_user_another_users_profiles() -> None:
    data = [RecCase(f"u{u}", f"p{u}-{j}", (), {"label": "like"}) for u in range(5) for j in range(2 + u % 2)]
    shuffled = shuffle_profiles(data, seed=3)
    assert [c.user_id for c in shuffled] == [c.user_id for c in data]
    donors = {}
    for before, after in zip(data, shuffled, strict=True):
        donor = after.profile.split("-")[0][1:]
        assert donor != before.user_id[1:]
        donors.setdefault(before.user_id, set()).add(donor)
    assert all(len(d) == 1 for d in donors.values())  # one donor per user
    assert len({d.pop() for d in donors.values()}) == 5  # a permutation: every user's profiles are used
    assert shuffle_profiles(data, seed=3) == shuffled
    with pytest.raises(ValueError, match="2 users"):
        shuffle_profiles(data[:2], seed=0)


def test_recommender_reading_the_profile_is_sensitive() -> None:
    data = cases()
    result = profile_sensitivity(ReadsProfile(), data, seed=1, n_resamples=500)
    shuffled = shuffle_profiles(data, seed=1)
    expected_shuffled = np.mean([s.profile == c.label for s, c in zip(shuffled, data, strict=True)])
    assert result.accuracy_true == 1.0
    assert result.accuracy_shuffled == pytest.approx(expected_shuffled)
    assert result.value == pytest.approx(1.0 - expected_shuffled) and result.value > 0.4
    assert 0 < result.low <= result.value <= result.high
    assert result.users == 60 and result.cases == 120
    assert result.flip_rate == pytest.approx(1.0 - expected_shuffled)  # every changed prediction is a miss here
    assert result.clearly_positive(0.02)
    assert not sensitivity_message(result, "reads_profile", 0.02).startswith("WARNING")


def test_recommender_ignoring_the_profile_scores_zero_and_warns() -> None:
    data = cases()
    result = profile_sensitivity(IgnoresProfile(), data, seed=1, n_resamples=500)
    assert result.value == 0.0 and result.low == 0.0 and result.high == 0.0
    assert result.accuracy_true == pytest.approx(0.5) and result.flip_rate == 0.0
    assert not result.clearly_positive(0.02)
    assert sensitivity_message(result, "ignores_profile", 0.02).startswith("WARNING")


def test_precomputed_true_probabilities_skip_one_scoring_pass() -> None:
    class Counting(ReadsProfile):
        calls: Counter = Counter()

        def predict(self, batch: Sequence[RecCase]) -> np.ndarray:
            self.calls["predict"] += 1
            return super().predict(batch)

    data = cases(12, 1)
    recommender = Counting()
    reference = profile_sensitivity(ReadsProfile(), data, seed=0, n_resamples=100)
    result = profile_sensitivity(recommender, data, seed=0, n_resamples=100,
                                 true_probabilities=ReadsProfile().predict(data))
    assert recommender.calls["predict"] == 1 and result == reference
