"""Dense, multi-target rewards on the tiny setup composed from the real configs: M targets per user that all
follow the older history, each profile's reward the mean over them, the probabilities f_Rec gives."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from test_samples import synthetic_interactions

from lettingo import CONFIG_DIR
from lettingo.artifacts import SAMPLES, ArtifactStore
from lettingo.data.samples import build_samples, older_history
from lettingo.data.schema import LABELS, DataFormatError, LabelThresholds
from lettingo.evaluation.reward_table import RULE_COLUMN
from lettingo.feedback.rewards import P_FLOOR, REWARD_COLUMNS, score_profiles
from lettingo.feedback.rule_reward import stated_mean_reward, user_mean
from lettingo.pipeline import run
from lettingo.profiles.explore import KEY
from lettingo.recommender.base import Recommender
from lettingo.recommender.cases import LABEL_INDEX, target_cases
from lettingo.recommender.loading import build_recommender
from lettingo.schemas import ConfigError, compose_config
from lettingo.stages import declarations

M = 3
TINY = ["debug=tiny", "logger=none", f"evaluate.targets_per_user={M}"]


@pytest.fixture(scope="module")
def tiny(tiny_model_cache, tmp_path_factory) -> tuple[pd.DataFrame, Recommender, int]:
    """The tiny setup's samples with M targets per user (its data stage), its frozen f_Rec and H."""
    folder = tmp_path_factory.mktemp("dense")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"paths.run_dir={folder}", f"paths.model_cache={tiny_model_cache}", "stage=data", *TINY])
    run(cfg)
    samples = ArtifactStore(folder).read_table(SAMPLES)
    return samples, build_recommender(cfg.recommender.model), int(cfg.history.length)


def _profiles(samples: pd.DataFrame, texts: tuple[str, ...] = ("Loves dramas.", "Rates 3.7 on average.")):
    users = samples["user_id"].astype(str).head(3)
    return pd.DataFrame([
        {"user_id": u, "split": "s", "backbone": "b", "sample_idx": j, "prompt_name": "p", "history_len": 30,
         "prompt": "...", "text": text, "degenerate": ""}
        for u in users for j, text in enumerate(texts)
    ])


def _score(tmp_path, recommender, samples, reward: str) -> pd.DataFrame:
    rows = ArtifactStore(tmp_path / reward).rows("rewards", "fp", KEY)
    return score_profiles(recommender, _profiles(samples), samples, rows, 2, reward=reward, targets=M)


def _p_true(recommender: Recommender, sample, profile: str) -> np.ndarray:
    """P(true label) of each of the sample's M target cases, one f_Rec call of our own."""
    cases = target_cases(sample, profile, M)
    return recommender.predict(cases)[np.arange(M), [LABEL_INDEX[c.label] for c in cases]]


def test_each_targets_labels_and_probabilities_are_stored(tiny, tmp_path) -> None:
    samples, recommender, _ = tiny
    rewards = _score(tmp_path, recommender, samples, "p_true")
    by_user = {str(s["user_id"]): s for s in samples.to_dict("records")}
    for row in rewards.to_dict("records"):
        cases = target_cases(by_user[row["user_id"]], row["text"], M)
        probabilities = np.stack(list(row["target_probabilities"]))
        assert probabilities == pytest.approx(recommender.predict(cases), abs=1e-4)
        assert list(row["target_labels"]) == [case.label for case in cases]
        assert list(row["target_predicted"]) == [LABELS[i] for i in probabilities.argmax(axis=1)]
        assert probabilities[np.arange(M), [LABEL_INDEX[c.label] for c in cases]] == pytest.approx(
            np.asarray(row["target_p_true"]))
        assert (row["predicted"], row["p_like"]) == (row["target_predicted"][-1], probabilities[-1, 0])


def test_the_m_targets_never_overlap_the_older_history(tiny) -> None:
    samples, _, history = tiny
    assert len(samples) > 0
    for sample in samples.to_dict("records"):
        windows = list(sample["targets"])
        assert len(windows) == M
        older = {str(i["item_id"]) for i in sample["older"]}
        shown = older_history(sample, history)
        later = [w["target"] for w in windows] + [i for w in windows for i in w["recent"]]
        assert not {str(i["item_id"]) for i in later} & older
        assert max(i["timestamp"] for i in shown) <= min(i["timestamp"] for i in later)
        assert windows[-1]["target"]["item_id"] == sample["target"]["item_id"]  # the last is the real target
        assert [i["item_id"] for i in windows[-1]["recent"]] == [i["item_id"] for i in sample["recent"]]
        for before, after in zip(windows, windows[1:], strict=False):  # each window one step later
            assert after["recent"][-1]["item_id"] == before["target"]["item_id"]


def test_the_samples_identity_holds_m() -> None:
    cfg = compose_config(["debug=tiny"], CONFIG_DIR)
    assert "evaluate.targets_per_user" in declarations(cfg)[SAMPLES].output.config


def test_m_windows_follow_the_spec_and_one_target_is_todays_sample() -> None:
    inter = synthetic_interactions()
    one = build_samples(inter, LabelThresholds(), recent=4, history=8)
    three = build_samples(inter, LabelThresholds(), recent=4, history=8, targets=3)
    for a, b in zip(one.to_dict("records"), three.to_dict("records"), strict=True):
        expected = inter[inter.user_id == a["user_id"]].sort_values("timestamp")["item_id"].tolist()
        after = expected[-(4 + 3):]
        assert [w["target"]["item_id"] for w in b["targets"]] == after[4:]
        assert [[i["item_id"] for i in w["recent"]] for w in b["targets"]] == [after[j : 4 + j] for j in range(3)]
        assert [i["item_id"] for i in b["older"]] == expected[-15:-7]
        assert b["target"] == a["target"] and b["recent"] == a["recent"]
        assert a["targets"] == [{"target": a["target"], "recent": a["recent"]}]
    with pytest.raises(DataFormatError, match="the 21 interactions needed"):
        build_samples(synthetic_interactions(per_user=12), LabelThresholds(), recent=4, history=8, targets=9)
    with pytest.raises(ValueError, match="^evaluate.targets_per_user=0: must be at least 1$"):
        build_samples(inter, LabelThresholds(), recent=4, history=8, targets=0)


@pytest.mark.parametrize(("override", "value"), [("evaluate.reward=accuracy", "accuracy"),
                                                   ("evaluate.targets_per_user=0", "0")])
def test_a_bad_reward_or_m_fails_at_composition_in_one_line(override: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compose_config([override], CONFIG_DIR)
    message = str(caught.value)
    assert message.startswith(f"{override.split('=')[0]}={value}: ") and "\n" not in message


def test_p_true_rewards_are_the_f_recs_probabilities(tiny, tmp_path) -> None:
    samples, recommender, _ = tiny
    rewards = _score(tmp_path, recommender, samples, "p_true")
    by_user = {str(s["user_id"]): s for s in samples.to_dict("records")}
    for row in rewards.to_dict("records"):
        p_true = _p_true(recommender, by_user[row["user_id"]], row["text"])
        assert np.asarray(row["target_rewards"]) == pytest.approx(p_true, abs=1e-4)
        assert np.asarray(row["target_p_true"]) == pytest.approx(p_true, abs=1e-4)
        assert row["reward"] == pytest.approx(np.mean(row["target_rewards"]))
        assert row["p_true"] == pytest.approx(p_true[-1], abs=1e-4)  # the f_Rec columns: the real target
        assert row["label"] == by_user[row["user_id"]]["target"]["label"]
    assert set(REWARD_COLUMNS) <= set(rewards.columns) and "target_p_true_empty" not in rewards


def test_log_p_gain_is_the_log_gain_over_no_profile(tiny, tmp_path) -> None:
    samples, recommender, _ = tiny
    rewards = _score(tmp_path, recommender, samples, "log_p_gain")
    by_user = {str(s["user_id"]): s for s in samples.to_dict("records")}
    for row in rewards.to_dict("records"):
        sample = by_user[row["user_id"]]
        with_profile, empty = _p_true(recommender, sample, row["text"]), _p_true(recommender, sample, "")
        gain = [math.log(max(p, P_FLOOR)) - math.log(max(q, P_FLOOR)) for p, q in zip(with_profile, empty,
                                                                                     strict=True)]
        assert np.asarray(row["target_rewards"]) == pytest.approx(gain, abs=1e-3)
        assert np.asarray(row["target_p_true_empty"]) == pytest.approx(empty, abs=1e-4)
        assert row["reward"] == pytest.approx(np.mean(row["target_rewards"]))


@pytest.mark.parametrize("reward", ["correct", "log_p_true"])
def test_every_reward_is_the_mean_over_the_m_targets(tiny, tmp_path, reward: str) -> None:
    samples, recommender, _ = tiny
    rewards = _score(tmp_path, recommender, samples, reward)
    p_true = np.stack(rewards["target_p_true"].map(np.asarray))
    targets = np.stack(rewards["target_rewards"].map(np.asarray))
    assert targets.shape == (len(rewards), M)
    assert rewards["reward"].to_numpy() == pytest.approx(targets.mean(axis=1))
    if reward == "log_p_true":
        assert targets == pytest.approx(np.log(np.maximum(p_true, P_FLOOR)))
    else:
        assert set(np.unique(targets)) <= {0.0, 1.0}
        assert (targets[:, -1] == rewards["correct"].to_numpy(float)).all()


def test_the_rewards_come_back_from_the_artifact_unchanged(tiny, tmp_path) -> None:
    samples, recommender, _ = tiny
    first = _score(tmp_path, recommender, samples, "p_true")
    scored: list[int] = []
    counting: Callable = recommender.predict

    class Counting:
        name = recommender.name

        def predict(self, cases):
            scored.append(len(cases))
            return counting(cases)

    again = _score(tmp_path, Counting(), samples, "p_true")  # finished: read back, nothing rescored
    assert not scored
    assert np.stack(again["target_rewards"].map(np.asarray)) == pytest.approx(
        np.stack(first["target_rewards"].map(np.asarray)))


def test_an_e0_evaluate_needs_no_trained_f_rec(compose_cfg, tiny_model_cache, tmp_path, capsys) -> None:
    def tiny_cfg(*overrides: str):
        return compose_cfg([*TINY, f"paths.model_cache={tiny_model_cache}", "recommender=llm_lora", *overrides])

    run(tiny_cfg("stage=data"))
    run(tiny_cfg("stage=explore"))
    summary = run(tiny_cfg("stage=evaluate", "evaluate.reward=stated_mean"))  # no train_rec: no rec_model
    out = capsys.readouterr().out
    assert "needs no f_Rec, so no sensitivity check and no baselines" in out
    assert "stated_mean reward" in out and "(the guard)" in out
    store = ArtifactStore(tmp_path / "run")
    rewards = store.read_table("rewards")
    assert summary["recommender"] is None and len(rewards) == len(store.read_table("profiles")) > 0
    assert (rewards["target_rewards"].map(len) == 1).all() and "predicted" not in rewards
    assert rewards["reward"].tolist() == [r[0] for r in rewards["target_rewards"]]
    assert not (tmp_path / "run" / "baselines").exists() and not (tmp_path / "run" / "rec_model").exists()


def test_a_learned_reward_carries_the_rule_as_a_guard_column(tiny, tmp_path) -> None:
    samples, recommender, history = tiny
    by_user = {str(s["user_id"]): s for s in samples.to_dict("records")}
    stating = f"Rates {user_mean(by_user[str(samples['user_id'].iloc[0])], history):.1f} on average."
    profiles = _profiles(samples, ("Loves dramas.", stating))
    rows = ArtifactStore(tmp_path / "guard").rows("rewards", "fp", KEY)
    rewards = score_profiles(recommender, profiles, samples, rows, 2, reward="p_true", targets=M, history=history)
    expected = [stated_mean_reward(r["text"], user_mean(by_user[r["user_id"]], history), False)
                for r in rewards.to_dict("records")]
    assert rewards[RULE_COLUMN].tolist() == expected
    assert expected[:2] == [0.0, 1.0]  # the first user's second profile states its own mean
    assert not np.allclose(rewards["reward"], rewards[RULE_COLUMN])  # the reward itself stays the f_Rec's p_true
    unguarded = ArtifactStore(tmp_path / "no_h").rows("rewards", "fp", KEY)
    without = score_profiles(recommender, profiles, samples, unguarded, 2, reward="p_true", targets=M)
    assert RULE_COLUMN not in without  # no H, no mean to check
