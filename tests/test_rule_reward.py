"""The stated-mean rule reward (E0's positive control): strict, so sprayed numbers and degenerate texts lose."""

from __future__ import annotations

import pandas as pd
import pytest

from lettingo.artifacts import ArtifactStore
from lettingo.feedback.rewards import REWARD_COLUMNS, score_profiles
from lettingo.feedback.rule_reward import shuffled_mean_rewards, stated_mean, stated_mean_reward, user_mean
from lettingo.profiles.explore import KEY


@pytest.mark.parametrize(
    ("text", "degenerate", "expected"),
    [
        ("This viewer rates films 3.7 on a five-point scale.", False, 1.0),  # the prompt's value, exact
        ("Mean rating 3.72, generous with dramas.", False, 1.0),  # within +-0.05
        ("Average rating 3.6 over 30 items.", False, 0.0),  # off by 0.1
        ("Rates around 3.8 and loves comedies.", False, 0.0),  # off by 0.1 the other way
        ("Average 3.7, dramas 4.2, comedies 2.9, horror 1.5.", False, 1.0 - 3 * 0.25),  # sprayed decimals
        ("3.1 3.7 3.7 3.7", False, -0.75),  # a spray whose first number misses
        ("Gives an average of 4 to most films.", False, 0.0),  # "average" form, wrong value
        ("She AVERAGES 3.7 stars.", False, 1.0),  # "averages", any case
        ("The user likes slow, quiet films.", False, 0.0),  # no number
        ("Watched 12 films in 1998 and 4 of them twice.", False, 0.0),  # integers are no stated mean
        ("3.7 3.7 3.7 3.7", True, -1.0),  # degenerate wins over everything
    ],
)
def test_the_rule_on_hand_written_texts(text: str, degenerate: bool, expected: float) -> None:
    assert stated_mean_reward(text, 3.7, degenerate) == pytest.approx(expected)


def test_the_average_form_states_an_integer_mean_and_the_first_statement_counts() -> None:
    assert stated_mean("Gives an average of 4 to most films.") == 4.0
    assert stated_mean_reward("Gives an average of 4 to most films.", 4.0, False) == 1.0
    assert stated_mean("Loves 4.5-star epics; average: 3.2") == 4.5  # the first statement is the decimal
    assert stated_mean("Rates 7.5 of 10; average is 3.9.") == 3.9  # 7.5 is outside [1, 5]
    assert stated_mean("no numbers at all") is None


def _sample(user: str, ratings: list[float]) -> dict:
    older = [{"item_id": f"{user}{i}", "rating": r, "label": "like"} for i, r in enumerate(ratings)]
    target = {"item_id": f"{user}t", "title": "T", "attributes": [], "rating": 4.0, "label": "like", "text": ""}
    return {"user_id": user, "older": older, "recent": [target], "target": target}


def test_the_mean_is_over_the_h_older_items_the_prompt_shows() -> None:
    sample = _sample("u", [1.0, 5.0, 3.0, 4.0])  # the prompt of H = 2 shows the last two
    assert user_mean(sample, 2) == 3.5 and user_mean(sample, 4) == 3.25


def test_the_shuffled_guard_scores_each_profile_against_another_users_mean() -> None:
    means = {"a": 1.5, "b": 2.5, "c": 3.5, "d": 4.5}
    users = ["a", "a", "b", "c", "d"]
    texts = ["mean 1.5", "mean 1.5", "mean 2.5", "mean 3.5", "mean 4.5"]  # each states its own user's mean
    true = [stated_mean_reward(t, means[u], False) for u, t in zip(users, texts, strict=True)]
    shuffled = shuffled_mean_rewards(users, texts, [False] * 5, means, seed=0)
    assert true == [1.0] * 5 and shuffled == [0.0] * 5  # nobody keeps their own mean
    assert shuffled_mean_rewards(users, texts, [False] * 5, means, seed=0) == shuffled  # a fixed derangement


def test_the_rule_scores_profiles_without_an_f_rec(tmp_path) -> None:
    samples = pd.DataFrame([_sample("u1", [3.0, 4.0]), _sample("u2", [2.0, 2.0])])
    profiles = pd.DataFrame([
        {"user_id": u, "split": "s", "backbone": "b", "sample_idx": j, "prompt_name": "p", "history_len": 2,
         "prompt": "...", "text": text, "degenerate": bad}
        for j, (u, text, bad) in enumerate([("u1", "Mean 3.5.", ""), ("u1", "Mean 3.5.", "repetition"),
                                             ("u2", "Mean 3.5.", ""), ("u2", "average of 2", "")])
    ])
    rewards = score_profiles(None, profiles, samples, ArtifactStore(tmp_path).rows("rewards", "fp", KEY),
                             reward="stated_mean", history=2)
    assert rewards["reward"].tolist() == [1.0, -1.0, 0.0, 1.0]
    assert [list(r) for r in rewards["target_rewards"]] == [[1.0], [-1.0], [0.0], [1.0]]
    assert rewards["label"].tolist() == ["like"] * 4 and not set(REWARD_COLUMNS[1:]) & set(rewards.columns)
    with pytest.raises(ValueError, match="needs an f_Rec"):
        score_profiles(None, profiles, samples, ArtifactStore(tmp_path / "x").rows("rewards", "fp", KEY),
                       reward="p_true")
