"""The tabular f_Rec: item statistics from training users only, oracle features from the older history only,
a tuned fit that beats the majority class where the label follows the recent ratings."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.validation import check_is_fitted

from lettingo.data.schema import LABELS, LabelThresholds
from lettingo.recommender.baselines import majority_label
from lettingo.recommender.cases import case_from_sample, predicted_labels
from lettingo.recommender.tabular import ItemStats, MissingColumnTolerantTrees, TabularRecommender

THRESHOLDS = LabelThresholds(4.0, 2.0)
GENRES = ["Drama", "Comedy", "Horror", "Action"]
SMALL_GRID = {"learning_rate": [0.1], "max_leaf_nodes": [7, 15], "l2_regularization": [0.0], "max_iter": [60]}
H, K = 6, 4


def item(item_id: str, rating: float, *genres: str) -> dict:
    return {"item_id": item_id, "title": f"Film {item_id}", "attributes": np.array(genres, dtype=object),
            "rating": float(rating), "label": THRESHOLDS.label(rating), "text": "", "timestamp": 0}


def synthetic_samples(n_users: int, seed: int = 0) -> pd.DataFrame:
    """Users with a rating bias; the target's rating is a deterministic function of the recent mean."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        bias = rng.choice([1.5, 3.0, 4.5])

        def draw(n: int, bias: float = bias) -> list[dict]:
            ratings = np.clip(np.round(bias + rng.normal(0, 0.8, n)), 1, 5)
            return [item(f"i{rng.integers(40)}", r, str(rng.choice(GENRES))) for r in ratings]

        older, recent = draw(H + 2), draw(K)
        mean = np.mean([i["rating"] for i in recent])
        target_rating = 5.0 if mean >= 3.5 else 1.0 if mean <= 2.5 else 3.0
        rows.append({"user_id": f"u{u}", "older": older, "recent": recent, "split": "rec_train",
                     "target": item(f"i{rng.integers(40)}", target_rating, str(rng.choice(GENRES)))})
    return pd.DataFrame(rows)


def accuracy(model: TabularRecommender, samples: pd.DataFrame) -> float:
    predicted = predicted_labels(model.predict(samples))
    return float(np.mean([p == t["label"] for p, t in zip(predicted, samples["target"], strict=True)]))


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = synthetic_samples(240)
    return samples.iloc[:160].reset_index(drop=True), samples.iloc[160:].assign(split="test").reset_index(drop=True)


@pytest.fixture(scope="module")
def fitted(data) -> TabularRecommender:
    train, _ = data
    return TabularRecommender(grid=SMALL_GRID, n_targets=1, cv_folds=3).fit(train, train)


@pytest.fixture(scope="module")
def fitted_oracle(data) -> TabularRecommender:
    train, _ = data
    return TabularRecommender(with_oracle=True, history_len=H, grid=SMALL_GRID, n_targets=2, cv_folds=3).fit(
        train, train)


# --- training and metric ---------------------------------------------------------------------------------


def test_fit_tunes_over_the_grid_by_user_folds(fitted: TabularRecommender) -> None:
    assert fitted.is_fitted
    check_is_fitted(fitted.model_)
    settings = [dict(zip(SMALL_GRID, values, strict=True)) for values in itertools.product(*SMALL_GRID.values())]
    assert fitted.best_params_ in settings
    assert len(fitted.search_.cv_results_["params"]) == len(settings)
    assert fitted.search_.cv.get_n_splits() == 3
    assert 0 < fitted.cv_score_ <= 1 and fitted.cv_seconds_ > 0
    assert fitted.model_.n_iter_ <= fitted.best_params_["max_iter"]


def test_beats_the_majority_class_when_the_label_follows_the_recent_mean(data, fitted) -> None:
    train, test = data
    majority = majority_label([t["label"] for t in train["target"]])
    majority_accuracy = float(np.mean([t["label"] == majority for t in test["target"]]))
    assert accuracy(fitted, test) > majority_accuracy + 0.2


def test_predict_gives_probabilities_in_label_order(data, fitted) -> None:
    _, test = data
    probabilities = fitted.predict(test)
    assert probabilities.shape == (len(test), len(LABELS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    # Over cases (the Recommender protocol) it scores the same real targets.
    cases = [case_from_sample(s, profile="ignored") for s in test.to_dict("records")]
    np.testing.assert_allclose(fitted.predict(cases), probabilities)
    assert fitted.predict([]).shape == (0, 3)


def test_a_label_missing_from_training_keeps_its_column(data) -> None:
    train, test = data
    no_neutral = train[[t["label"] != "neutral" for t in train["target"]]]
    model = TabularRecommender(grid=SMALL_GRID, n_targets=1).fit(no_neutral, no_neutral)
    probabilities = model.predict(test)
    assert (probabilities[:, LABELS.index("neutral")] == 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_shifted_training_cases_multiply_the_data(data) -> None:
    train, _ = data
    model = TabularRecommender(n_targets=3)
    pairs = model.training_cases(train.iloc[:2])
    assert len(pairs) == 6
    first = train.iloc[0]
    # the second case predicts the newest recent item from the K items before it
    assert pairs[1][0].target["item_id"] == first["recent"][-1]["item_id"]
    assert [i["item_id"] for i in pairs[1][0].recent] == [i["item_id"] for i in [*first["older"][-1:],
                                                                                 *first["recent"][:-1]]]


def test_unfitted_and_bad_settings_are_errors(data) -> None:
    train, _ = data
    with pytest.raises(RuntimeError, match="not fitted"):
        TabularRecommender().predict(train)
    with pytest.raises(ValueError, match="n_targets"):
        TabularRecommender(n_targets=0)
    with pytest.raises(ValueError, match="grid"):
        TabularRecommender(grid={"learning_rate": []})


def test_save_and_load(tmp_path, data, fitted) -> None:
    _, test = data
    fitted.save(tmp_path / "model" / "tabular.pkl")
    loaded = TabularRecommender.load(tmp_path / "model" / "tabular.pkl")
    np.testing.assert_allclose(loaded.predict(test), fitted.predict(test))


# --- item statistics: training users only ----------------------------------------------------------------


def test_item_statistics_exclude_test_users(data) -> None:
    train, test = data
    test = copy.deepcopy(test)
    planted = item("planted", 5.0, "Drama")  # only this test user rated it
    test.at[0, "target"] = planted
    test.at[1, "recent"] = [*test.at[1, "recent"][1:], planted]  # another test user also saw it
    shared = train.iloc[0]["target"]["item_id"]  # an item a training user rated
    test.at[2, "target"] = item(shared, 1.0, "Drama")
    model = TabularRecommender(grid=SMALL_GRID, n_targets=1).fit(train, train)
    features = model.feature_frame(test)
    assert features.loc[0, "item_count"] == 0 and math.isnan(features.loc[0, "item_mean"])
    assert math.isnan(features.loc[0, "item_like_share"])
    assert features.loc[2, "item_count"] >= 1 and not math.isnan(features.loc[2, "item_mean"])
    assert "planted" not in model.features_.stats.counts


def test_test_users_in_the_statistics_or_training_are_refused(data) -> None:
    train, test = data
    with pytest.raises(ValueError, match="item_stats_samples holds users of the held-out"):
        TabularRecommender(grid=SMALL_GRID).fit(train, pd.concat([train, test]))
    with pytest.raises(ValueError, match="train_samples holds users of the held-out"):
        TabularRecommender(grid=SMALL_GRID).fit(pd.concat([train, test]), train)


def test_a_user_is_left_out_of_their_own_item_statistics() -> None:
    samples = pd.DataFrame([
        {"user_id": "a", "older": [item("x", 5)], "recent": [item("y", 4)], "target": item("t", 1)},
        {"user_id": "b", "older": [item("x", 1)], "recent": [item("z", 2)], "target": item("y", 5)},
    ])
    stats = ItemStats.from_samples(samples)
    mean, count, _, _ = stats.lookup("t", "a")  # only a rated t: left out of their own lookup
    assert count == 0 and math.isnan(mean)
    assert stats.lookup("t", "b") == (1.0, 1, 0.0, 1.0)  # b did not rate t: a's rating counts
    assert stats.lookup("x", "a")[:2] == (1.0, 1) and stats.lookup("x", "test_user")[:2] == (3.0, 2)
    assert stats.lookup("unseen", "a")[1] == 0


# --- oracle features: the older history only -------------------------------------------------------------


def oracle_columns(model: TabularRecommender) -> list[str]:
    names = model.features_.names
    columns = [n for n in names if n.startswith("older_")]
    assert columns and "older_mean" in columns and "older_genre_mean" in columns and "older_offset" in columns
    return columns


def test_oracle_features_ignore_the_recent_items_and_the_target_rating(data, fitted_oracle) -> None:
    _, test = data
    base = test.iloc[:5].reset_index(drop=True)
    changed = copy.deepcopy(base)
    for row in range(len(changed)):
        changed.at[row, "recent"] = [{**i, "rating": 6 - i["rating"], "label": THRESHOLDS.label(6 - i["rating"])}
                                     for i in changed.at[row, "recent"]]
        target = changed.at[row, "target"]
        changed.at[row, "target"] = {**target, "rating": 6 - target["rating"], "label": "neutral"}
    columns = oracle_columns(fitted_oracle)
    before, after = fitted_oracle.feature_frame(base), fitted_oracle.feature_frame(changed)
    pd.testing.assert_frame_equal(before[columns], after[columns])
    assert not before["recent_mean"].equals(after["recent_mean"])  # the window features did change


def test_oracle_features_follow_the_last_h_older_items(data, fitted_oracle) -> None:
    _, test = data
    base = test.iloc[:3].reset_index(drop=True)
    columns = oracle_columns(fitted_oracle)
    newest_older, before_h = copy.deepcopy(base), copy.deepcopy(base)
    for row in range(len(base)):
        older = list(base.at[row, "older"])
        last = older[-1]
        newest_older.at[row, "older"] = [*older[:-1], {**last, "rating": 6 - last["rating"] + 0.5}]
        first = older[0]  # H + 2 older items: the first is outside the last H
        before_h.at[row, "older"] = [{**first, "rating": 6 - first["rating"] + 0.5}, *older[1:]]
    reference = fitted_oracle.feature_frame(base)[columns]
    assert not reference.equals(fitted_oracle.feature_frame(newest_older)[columns])
    assert (reference["older_mean"] != fitted_oracle.feature_frame(newest_older)["older_mean"]).all()
    pd.testing.assert_frame_equal(reference, fitted_oracle.feature_frame(before_h)[columns])


def test_oracle_over_cases_needs_the_attached_histories(data, fitted_oracle) -> None:
    _, test = data
    cases = [case_from_sample(s) for s in test.to_dict("records")]
    with pytest.raises(KeyError, match="no older history"):
        fitted_oracle.predict(cases)
    fitted_oracle.attach_histories(test)
    np.testing.assert_allclose(fitted_oracle.predict(cases), fitted_oracle.predict(test))


def test_the_oracle_model_beats_the_majority_class(data, fitted_oracle) -> None:
    train, test = data
    majority = majority_label([t["label"] for t in train["target"]])
    majority_accuracy = float(np.mean([t["label"] == majority for t in test["target"]]))
    assert accuracy(fitted_oracle, test) > majority_accuracy + 0.2


# --- configs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "oracle"), [("tabular", False), ("tabular_oracle", True)])
def test_configs_build_the_model(compose_cfg, option: str, oracle: bool) -> None:
    cfg = compose_cfg([f"recommender={option}"])
    model = instantiate(cfg.recommender.model)
    assert isinstance(model, TabularRecommender)
    assert model.with_oracle is oracle and model.name == option and model.history_len == cfg.history.length
    assert isinstance(model.grid, dict) and all(isinstance(v, list) for v in model.grid.values())
    assert len(list(itertools.product(*model.grid.values()))) <= 12  # small enough for ~1 minute on 1,000 users


def test_trees_fit_past_a_column_missing_in_every_row_and_ignore_it() -> None:
    # scikit-learn's own trees fail on such a column (a small fold of the reader: every profile empty).
    rng = np.random.default_rng(0)
    x = rng.random((60, 3))
    y = (x[:, 0] + 0.3 * rng.random(60) > 0.6).astype(int)
    with_gap = x.copy()
    with_gap[:, 1] = np.nan
    with pytest.raises(ValueError, match="window shape"):
        HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(with_gap, y)
    trees = MissingColumnTolerantTrees(max_iter=20, random_state=0).fit(with_gap, y)
    without = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x[:, [0, 2]], y)
    queries = rng.random((10, 3))  # the missing column has values now: they must not matter
    assert trees.all_missing_.tolist() == [False, True, False]
    np.testing.assert_allclose(trees.predict_proba(queries), without.predict_proba(queries[:, [0, 2]]))
    assert trees.predict(queries).tolist() == without.predict(queries[:, [0, 2]]).tolist()
