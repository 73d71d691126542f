"""Bootstrap intervals: coverage of the estimate, determinism, cluster resampling, pairing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import log_loss as sk_log_loss

from lettingo.evaluation.bootstrap import (
    Interval,
    bootstrap_interval,
    compare_methods,
    paired_bootstrap,
    resampled_metrics,
    summarize,
)
from lettingo.evaluation.metrics import classification_metrics, log_loss, mean_p_true

LABELS = ("like", "neutral", "dislike")


def noisy_predictions(n: int, accuracy: float, seed: int) -> tuple[list[str], list[str]]:
    """Random true labels and predictions that copy the truth with probability ``accuracy``."""
    rng = np.random.default_rng(seed)
    y_true = rng.choice(LABELS, size=n)
    y_pred = np.where(rng.random(n) < accuracy, y_true, rng.choice(LABELS, size=n))
    return list(y_true), list(y_pred)


def test_intervals_contain_the_point_estimate() -> None:
    y_true, y_pred = noisy_predictions(500, 0.6, seed=0)
    intervals = summarize(y_true, y_pred, LABELS)
    exact = classification_metrics(y_true, y_pred, LABELS)
    assert set(intervals) == {"accuracy", "macro_f1", "weighted_f1"}
    for name, interval in intervals.items():
        assert interval.value == exact[name]
        assert interval.low < interval.value < interval.high
        assert interval.n == 500


def test_width_shrinks_with_more_users() -> None:
    widths = []
    for n in (100, 2000):
        y_true, y_pred = noisy_predictions(n, 0.6, seed=1)
        interval = bootstrap_interval(y_true, y_pred, LABELS, "macro_f1")
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2


def test_same_seed_same_interval() -> None:
    y_true, y_pred = noisy_predictions(300, 0.5, seed=2)
    first = bootstrap_interval(y_true, y_pred, LABELS, seed=7)
    assert bootstrap_interval(y_true, y_pred, LABELS, seed=7) == first
    assert bootstrap_interval(y_true, y_pred, LABELS, seed=8) != first


def test_bounds_are_percentiles_of_the_resampled_scores() -> None:
    y_true, y_pred = noisy_predictions(300, 0.5, seed=3)
    samples = resampled_metrics(y_true, y_pred, LABELS, ("weighted_f1",), 400, seed=5)
    interval = bootstrap_interval(y_true, y_pred, LABELS, "weighted_f1", 400, 0.9, seed=5)
    assert samples["weighted_f1"].shape == (400,)
    assert (interval.low, interval.high) == tuple(np.quantile(samples["weighted_f1"], [0.05, 0.95]))


def test_resampled_scores_match_sklearn_on_the_drawn_rows() -> None:
    # Redraw the bootstrap's indices (same generator, same call) and score each resample's
    # expanded rows with scikit-learn: the vectorised path must give the same numbers.
    y_true, y_pred = noisy_predictions(40, 0.5, seed=4)
    samples = resampled_metrics(y_true, y_pred, LABELS, ("accuracy", "macro_f1"), 20, seed=9)
    draws = np.random.default_rng(9).integers(0, 40, size=(20, 40))
    truth, predicted = np.array(y_true), np.array(y_pred)
    for b, rows in enumerate(draws):
        assert samples["accuracy"][b] == pytest.approx(accuracy_score(truth[rows], predicted[rows]))
        assert samples["macro_f1"][b] == pytest.approx(
            f1_score(truth[rows], predicted[rows], labels=list(LABELS), average="macro", zero_division=0)
        )


def test_groups_keep_a_users_rows_together() -> None:
    # User "a" has two right rows, user "b" one wrong row. Drawing two users gives accuracy
    # 1 (a, a), 2/3 (a, b) or 0 (b, b); drawing rows would also give 1/3.
    y_true = ["like", "like", "like"]
    y_pred = ["like", "like", "dislike"]
    grouped = resampled_metrics(y_true, y_pred, LABELS, ("accuracy",), 2000, groups=["a", "a", "b"])
    values, counts = np.unique(np.round(grouped["accuracy"], 9), return_counts=True)
    assert values.tolist() == [0.0, round(2 / 3, 9), 1.0]
    assert counts[1] / 2000 == pytest.approx(0.5, abs=0.05)
    by_row = resampled_metrics(y_true, y_pred, LABELS, ("accuracy",), 2000)
    assert np.any(np.isclose(by_row["accuracy"], 1 / 3))
    assert bootstrap_interval(y_true, y_pred, LABELS, groups=["a", "a", "b"]).n == 2


def test_one_group_per_row_equals_row_resampling() -> None:
    y_true, y_pred = noisy_predictions(200, 0.5, seed=5)
    users = [f"user{i}" for i in range(200)]
    assert summarize(y_true, y_pred, LABELS, groups=users) == summarize(y_true, y_pred, LABELS)


def test_identical_predictions_differ_by_exactly_zero() -> None:
    y_true, y_pred = noisy_predictions(300, 0.5, seed=6)
    for metric in ("accuracy", "macro_f1", "weighted_f1"):
        difference = paired_bootstrap(y_true, y_pred, list(y_pred), LABELS, metric)
        assert (difference.value, difference.low, difference.high) == (0.0, 0.0, 0.0)
        assert difference.p_value == 1.0


def test_clearly_better_method_is_above_zero() -> None:
    y_true, good = noisy_predictions(400, 0.8, seed=7)
    _, bad = noisy_predictions(400, 0.4, seed=8)
    bad = [b if i % 2 else t for i, (t, b) in enumerate(zip(y_true, bad, strict=True))]
    difference = paired_bootstrap(y_true, good, bad, LABELS, "macro_f1")
    assert 0 < difference.low < difference.value < difference.high
    assert difference.p_value < 0.01
    reverse = paired_bootstrap(y_true, bad, good, LABELS, "macro_f1")
    assert reverse.high < 0
    assert reverse.value == pytest.approx(-difference.value)


def test_paired_resamples_are_shared() -> None:
    # b differs from a only by one wrong row, so on any shared resample a >= b: an interval
    # below zero would mean the two methods saw different users.
    y_true = ["like", "neutral", "dislike"] * 20
    pred_b = ["dislike"] + y_true[1:]
    difference = paired_bootstrap(y_true, y_true, pred_b, LABELS, "accuracy", 2000)
    assert difference.value == pytest.approx(1 / 60)
    assert difference.low == 0.0
    assert difference.high > 0.0


def test_compare_methods_equals_the_single_calls() -> None:
    # One shared bootstrap for all methods gives exactly the numbers of separate calls with the same seed.
    y_true, a = noisy_predictions(120, 0.7, seed=10)
    _, b = noisy_predictions(120, 0.4, seed=11)
    c = list(y_true)
    intervals, paired = compare_methods(y_true, {"a": a, "b": b, "c": c}, ["b", "b"], LABELS, n_resamples=300, seed=4)
    for name, pred in (("a", a), ("b", b), ("c", c)):
        assert intervals[name] == summarize(y_true, pred, LABELS, n_resamples=300, seed=4)
    assert list(paired) == ["b"] and list(paired["b"]) == ["a", "c"]
    for name, pred in (("a", a), ("c", c)):
        for metric in ("accuracy", "macro_f1", "weighted_f1"):
            assert paired["b"][name][metric] == paired_bootstrap(y_true, pred, b, LABELS, metric, 300, seed=4)
    with pytest.raises(ValueError, match="references"):
        compare_methods(y_true, {"a": a}, ["z"], LABELS)


def targets_per_user(n_users: int, m: int, seed: int) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """``m`` cases per user (rows grouped by user): true labels, probabilities, arg-max labels, user ids."""
    rng = np.random.default_rng(seed)
    y_true = list(rng.choice(LABELS, size=n_users * m))
    probabilities = rng.dirichlet(np.ones(3), size=n_users * m)
    predicted = [LABELS[i] for i in probabilities.argmax(axis=1)]
    return y_true, predicted, probabilities, [f"user{i // m}" for i in range(n_users * m)]


def test_probability_metrics_pool_a_users_targets_and_resample_users() -> None:
    # 30 users x 4 targets. The point is the mean over all 120 cases; each resample draws whole users (the
    # generator's draws, replayed here) and equals scikit-learn's log_loss on the drawn users' cases.
    y_true, predicted, probabilities, users = targets_per_user(30, 4, seed=12)
    intervals = summarize(y_true, predicted, LABELS, n_resamples=50, seed=3, groups=users, probabilities=probabilities)
    assert intervals["p_true"].value == pytest.approx(mean_p_true(y_true, probabilities, LABELS))
    assert intervals["log_loss"].value == pytest.approx(log_loss(y_true, probabilities, LABELS))
    assert intervals["accuracy"].value == pytest.approx(accuracy_score(y_true, predicted))
    assert {interval.n for interval in intervals.values()} == {30}
    samples = resampled_metrics(y_true, predicted, LABELS, n_resamples=50, seed=3, groups=users,
                                probabilities=probabilities)
    draws = np.random.default_rng(3).integers(0, 30, size=(50, 30))
    truth, order = np.array(y_true), sorted(LABELS)
    columns = [LABELS.index(label) for label in order]
    for b, drawn in enumerate(draws):
        rows = (drawn[:, None] * 4 + np.arange(4)).ravel()
        assert samples["p_true"][b] == pytest.approx(mean_p_true(list(truth[rows]), probabilities[rows], LABELS))
        assert samples["log_loss"][b] == pytest.approx(
            sk_log_loss(truth[rows], probabilities[rows][:, columns], labels=order))


def test_probability_metrics_only_with_probabilities() -> None:
    y_true, predicted, probabilities, _ = targets_per_user(20, 1, seed=13)
    assert set(summarize(y_true, predicted, LABELS, n_resamples=20)) == {"accuracy", "macro_f1", "weighted_f1"}
    with pytest.raises(ValueError, match="'p_true' needs each method's probabilities"):
        bootstrap_interval(y_true, predicted, LABELS, "p_true")
    with pytest.raises(ValueError, match="'log_loss' needs"):
        paired_bootstrap(y_true, predicted, predicted, LABELS, "log_loss", probabilities_a=probabilities)


def test_paired_probability_differences_on_planted_data() -> None:
    # Method a moves 0.05 of every case's probability onto the true label: better on every user, so the
    # differences of p_true lie above zero and those of log-loss below; a method against itself differs by 0.
    y_true, predicted, base, users = targets_per_user(60, 3, seed=14)
    truth = np.array([LABELS.index(t) for t in y_true])
    better = base * 0.95
    better[np.arange(len(truth)), truth] += 0.05
    kwargs = {"n_resamples": 500, "seed": 2, "groups": users, "probabilities_a": better, "probabilities_b": base}
    gain = paired_bootstrap(y_true, predicted, predicted, LABELS, "p_true", **kwargs)
    assert 0 < gain.low < gain.value < gain.high and gain.p_value < 0.01 and gain.n == 60
    assert gain.value == pytest.approx(mean_p_true(y_true, better, LABELS) - mean_p_true(y_true, base, LABELS))
    loss = paired_bootstrap(y_true, predicted, predicted, LABELS, "log_loss", **kwargs)
    assert loss.low < loss.value < loss.high < 0 and loss.p_value < 0.01
    for metric in ("p_true", "log_loss"):
        same = paired_bootstrap(y_true, predicted, predicted, LABELS, metric, **(kwargs | {"probabilities_a": base}))
        assert (same.value, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_compare_methods_scores_probabilities_where_given() -> None:
    y_true, predicted, probabilities, users = targets_per_user(40, 2, seed=15)
    _, labels_only = noisy_predictions(80, 0.5, seed=16)
    predictions = {"a": predicted, "b": labels_only, "c": list(y_true)}
    intervals, paired = compare_methods(y_true, predictions, ["a", "b"], LABELS, n_resamples=200, seed=4, groups=users,
                                        probabilities={"a": probabilities, "c": np.eye(3)[[LABELS.index(t)
                                                                                           for t in y_true]]})
    assert list(intervals["a"]) == ["accuracy", "macro_f1", "weighted_f1", "p_true", "log_loss"]
    assert list(intervals["b"]) == ["accuracy", "macro_f1", "weighted_f1"]
    assert intervals["c"]["p_true"].value == 1.0
    assert intervals["a"] == summarize(y_true, predicted, LABELS, n_resamples=200, seed=4, groups=users,
                                       probabilities=probabilities)
    assert list(paired["a"]["b"]) == ["accuracy", "macro_f1", "weighted_f1"]  # b has no probabilities
    assert list(paired["a"]["c"]) == ["accuracy", "macro_f1", "weighted_f1", "p_true", "log_loss"]
    assert list(paired["b"]["c"]) == ["accuracy", "macro_f1", "weighted_f1"]
    with pytest.raises(ValueError, match="probabilities"):
        compare_methods(y_true, predictions, [], LABELS, probabilities={"z": probabilities})


def test_to_dict_is_plain_json() -> None:
    y_true, y_pred = noisy_predictions(50, 0.5, seed=9)
    interval = bootstrap_interval(y_true, y_pred, LABELS)
    assert Interval(**json.loads(json.dumps(interval.to_dict()))) == interval
    difference = paired_bootstrap(y_true, y_pred, y_true, LABELS).to_dict()
    assert set(difference) == {"value", "low", "high", "p_value", "n"}
    assert all(type(v) in (float, int) for v in difference.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "auc"}, "unknown metrics"),
        ({"n_resamples": 0}, "n_resamples"),
        ({"confidence": 1.0}, "confidence"),
        ({"groups": ["a"]}, "groups"),
    ],
)
def test_bad_options_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(["like", "like"], ["like", "neutral"], LABELS, **kwargs)
