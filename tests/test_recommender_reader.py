"""The reader control f_Rec (E1): the tabular f_Rec's features plus the mean rating the profile states, fitted on
oracle-fact and empty profiles; stage train_rec fits it and the evaluate and test stages reward profiles with it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from test_recommender_tabular import GENRES, SMALL_GRID, item

from lettingo.artifacts import REC_MODEL, REC_TRAIN_PROFILES, REWARDS, SAMPLES, ArtifactStore
from lettingo.data.schema import LABELS
from lettingo.pipeline import run
from lettingo.profiles.oracle import oracle_profiles
from lettingo.recommender.cases import LABEL_INDEX, RecCase, case_from_sample, target_cases
from lettingo.recommender.loading import build_recommender
from lettingo.recommender.reader import STATED_MEAN, ReaderRecommender, stated_mean, stated_mean_feature
from lettingo.recommender.tabular import TabularRecommender
from lettingo.recommender.training import training_cases
from lettingo.schemas import config_object, validate_config

H, K = 8, 4
FACTS = {"rating_stats": True, "genre_preferences": True, "attribute_label": "genres", "min_support": 3, "top_k": 3}
#: On top of `debug=tiny`: the reader as f_Rec, a 1-point grid scored by accuracy (a CV fold of 4 users may miss a
#: label, which log-loss cannot score), M = 2, one method.
TINY_READER = ["debug=tiny", "recommender=tabular_reader", "recommender.model.cv_folds=2",
               "recommender.model.grid={learning_rate:[0.1],max_leaf_nodes:[7],l2_regularization:[0.0],max_iter:[20]}",
               "recommender.model.scoring=accuracy", "evaluate.targets_per_user=2", "align.methods=[dpo]",
               "logger=none"]


def planted_samples(n_users: int, seed: int = 0) -> pd.DataFrame:
    """Users whose older mean decides the target: a high-mean user likes it, a low-mean one dislikes it; the recent
    ratings are uniform noise, so without the older history the label is a coin flip."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        high = bool(rng.integers(2))
        older = np.clip(np.round((4.3 if high else 1.7) + rng.normal(0, 0.5, H)), 1, 5)
        recent = rng.integers(1, 6, K)
        rows.append({"user_id": f"u{u}", "split": "rec_train",
                     "older": [item(f"i{rng.integers(40)}", r, str(rng.choice(GENRES))) for r in older],
                     "recent": [item(f"i{rng.integers(40)}", r, str(rng.choice(GENRES))) for r in recent],
                     "target": item(f"i{rng.integers(40)}", 5.0 if high else 1.0, str(rng.choice(GENRES)))})
    return pd.DataFrame(rows)


def real_target_cases(samples: pd.DataFrame, oracle: dict[str, str] | None = None) -> list[RecCase]:
    """Each sample's real-target case, with its oracle facts as the profile (or none)."""
    return [case_from_sample(s, (oracle or {}).get(str(s["user_id"]), "")) for s in samples.to_dict("records")]


def p_true(model: TabularRecommender, cases: list[RecCase]) -> np.ndarray:
    """The model's probability of each case's true label."""
    return model.predict(cases)[np.arange(len(cases)), [LABEL_INDEX[c.label] for c in cases]]


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.DataFrame, list[RecCase]]:
    """Training samples, held-out samples, and the training cases as stage train_rec draws them (half oracle facts,
    half empty, a seeded draw per case)."""
    samples = planted_samples(300)
    train, test = samples.iloc[:200].reset_index(drop=True), samples.iloc[200:].reset_index(drop=True)
    cases = training_cases(train, {}, 1, 0.5, 0, oracle=oracle_profiles(train, H, FACTS), oracle_profile_rate=0.5)
    return train, test, cases


@pytest.fixture(scope="module")
def reader(planted) -> ReaderRecommender:
    train, _, cases = planted
    return ReaderRecommender(name="tabular_reader", grid=SMALL_GRID, n_targets=1).fit_cases(cases, train)


def test_the_oracle_facts_state_the_true_mean_and_the_training_mix_is_half_and_half(planted) -> None:
    train, _, cases = planted
    oracle = oracle_profiles(train, H, FACTS)
    for sample in train.head(20).to_dict("records"):
        mean = np.mean([i["rating"] for i in sample["older"]])
        assert abs(stated_mean(oracle[sample["user_id"]]) - mean) <= 0.05 + 1e-9  # written to one decimal
    stated = [bool(c.profile) for c in cases]
    assert 0.35 < np.mean(stated) < 0.65
    assert math.isnan(stated_mean_feature("Loves dramas, hates horror.")) and stated_mean_feature("avg 3.5") == 3.5


def test_stating_the_true_mean_raises_p_true_where_the_older_mean_decides(planted, reader) -> None:
    _, test, _ = planted
    oracle = oracle_profiles(test, H, FACTS)
    with_mean, empty = p_true(reader, real_target_cases(test, oracle)), p_true(reader, real_target_cases(test))
    assert with_mean.mean() > empty.mean() + 0.2
    assert np.mean(with_mean > empty) > 0.9
    # stating the mirrored mean (6 - mean) lowers it: the reader reads the number, not the wording
    opposite = [c.with_profile(f"Average rating {6 - stated_mean(oracle[c.user_id]):.1f}.")
                for c in real_target_cases(test)]
    assert p_true(reader, opposite).mean() < empty.mean()


def test_predictions_are_the_tabular_features_plus_the_parsed_value(planted, reader) -> None:
    train, test, cases = planted
    tabular = TabularRecommender(grid=SMALL_GRID, n_targets=1).fit_cases(cases, train)
    oracle = oracle_profiles(test, H, FACTS)
    judged = [*real_target_cases(test, oracle), *real_target_cases(test), *(c.with_profile("Rates 3.7 on average.")
                                                                            for c in real_target_cases(test))]
    pairs = [(case, None) for case in judged]
    x = reader.matrix(pairs)
    np.testing.assert_array_equal(x[:, :-1], tabular.matrix(pairs))
    parsed = np.array([stated_mean(c.profile) or math.nan for c in judged])
    np.testing.assert_array_equal(x[:, -1], parsed)
    assert np.isnan(x[len(test) : 2 * len(test), -1]).all() and (x[2 * len(test) :, -1] == 3.7).all()
    assert reader.feature_names == [*tabular.feature_names, STATED_MEAN]
    expected = np.zeros((len(judged), len(LABELS)))
    expected[:, reader.model_.classes_] = reader.model_.predict_proba(np.column_stack([tabular.matrix(pairs), parsed]))
    np.testing.assert_allclose(reader.predict(judged), expected)


def test_save_and_load_keep_the_reader(tmp_path, planted, reader) -> None:
    _, test, _ = planted
    reader.save(tmp_path / "model.pkl")
    loaded = ReaderRecommender.load(tmp_path / "model.pkl")
    cases = real_target_cases(test, oracle_profiles(test, H, FACTS))
    np.testing.assert_allclose(loaded.predict(cases), reader.predict(cases))
    TabularRecommender(grid=SMALL_GRID, n_targets=1).fit(test.head(20), test.head(20)).save(tmp_path / "plain.pkl")
    with pytest.raises(TypeError, match="not a ReaderRecommender"):
        ReaderRecommender.load(tmp_path / "plain.pkl")


def test_the_pipeline_fits_the_reader_and_rewards_profiles_with_it(compose_cfg, tiny_model_cache, tmp_path) -> None:
    cfg = compose_cfg([*TINY_READER, "stage=pipeline", f"paths.model_cache={tiny_model_cache}"], tmp_path / "run")
    results = run(cfg)
    store = ArtifactStore(tmp_path / "run")
    assert {"train_rec", "evaluate", "align", "test"} <= set(results)
    meta = results["train_rec"]
    assert meta["trained"] and meta["checkpoint"] == "model.pkl" and meta["train_users"] == 4
    assert not (tmp_path / "run" / REC_TRAIN_PROFILES).exists()  # oracle facts and empty profiles only
    reader = build_recommender(cfg.recommender.model, store.path(REC_MODEL) / meta["checkpoint"])
    assert isinstance(reader, ReaderRecommender) and reader.name == "tabular_reader"
    rewards = store.read_table(REWARDS)
    samples = store.read_table(SAMPLES).set_index("user_id")
    for row in rewards.to_dict("records"):  # each profile's reward: the reader's p_true, mean over M = 2 targets
        cases = target_cases(samples.loc[row["user_id"]].to_dict() | {"user_id": row["user_id"]}, row["text"], 2)
        assert row["reward"] == pytest.approx(p_true(reader, cases).mean(), abs=1e-6)
    assert results["evaluate"]["recommender"] == "tabular_reader"


def test_the_reader_control_experiment_composes(compose_cfg) -> None:
    cfg = compose_cfg(["experiment=reader_control"])
    validate_config(cfg)
    conf = config_object(cfg)
    assert conf.recommender.name == "tabular_reader" and conf.recommender.trainable
    assert conf.recommender.training.empty_profile_rate == conf.recommender.training.oracle_profile_rate == 0.5
    assert (conf.evaluate.reward, conf.evaluate.targets_per_user) == ("p_true", 5)
    assert (conf.pairs.rule, conf.pairs.min_margin, conf.pairs.gate) == ("margin", "auto", "report")
    assert (conf.dataset.name, conf.history.length, conf.history.recent, conf.sampling.n) == ("ml100k", 30, 1, 8)
    assert list(conf.align.methods) == ["dpo", "grpo"] and conf.align.rounds == 2
    assert dict(conf.dataset.splits) == {"test": 200, "rec_train": 100, "profile_train": 300}
    assert isinstance(instantiate(cfg.recommender.model), ReaderRecommender)
