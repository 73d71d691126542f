"""Comparison: every method on the same users, intervals, paired differences, its JSON and its files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss

from lettingo.evaluation.comparison import LABELS, SCHEMA_VERSION, Comparison, read_comparison
from lettingo.evaluation.methods import DPO, MAJORITY, NO_DPO, NO_PROFILE

USERS = [f"u{i}" for i in range(8)]
Y_TRUE = ["like", "like", "neutral", "dislike", "like", "dislike", "neutral", "like"]
PALR = "palr (smollm2_135m)"
PRED = {
    DPO: ["like", "like", "neutral", "dislike", "like", "like", "neutral", "like"],  # 7 of 8 right
    PALR: ["like", "neutral", "like", "dislike", "like", "like", "like", "like"],  # 4 of 8 right
    NO_PROFILE: ["like"] * 8,  # 4 of 8 right
}


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    return Comparison.compute(USERS, Y_TRUE, PRED, references=(DPO, "SFT"), n_resamples=200, seed=3,
                              meta={"split": "test", "recommender": "tiny"})


def test_values_match_sklearn(comparison: Comparison) -> None:
    for method, pred in PRED.items():
        row = comparison.intervals[method]
        assert row["accuracy"].value == pytest.approx(accuracy_score(Y_TRUE, pred))
        for average in ("macro", "weighted"):
            expected = f1_score(Y_TRUE, pred, labels=list(LABELS), average=average, zero_division=0)
            assert row[f"{average}_f1"].value == pytest.approx(expected)
            assert comparison.details[method][f"{average}_f1"] == pytest.approx(expected)
        for interval in row.values():
            assert interval.low <= interval.value <= interval.high and interval.n == 8


def test_paired_difference_is_method_minus_reference(comparison: Comparison) -> None:
    # PALR gets 4 of 8 right, DPO 7 of 8: PALR minus DPO is -3/8.
    assert list(comparison.paired) == [DPO]  # "SFT" is not among the methods: skipped
    assert set(comparison.paired[DPO]) == {PALR, NO_PROFILE}
    difference = comparison.paired[DPO][PALR]["accuracy"]
    assert difference.value == pytest.approx(4 / 8 - 7 / 8)
    assert difference.high <= 0 and 0 < difference.p_value <= 1
    reverse = Comparison.compute(USERS, Y_TRUE, PRED, references=(PALR,), n_resamples=200, seed=3)
    assert reverse.paired[PALR][DPO]["accuracy"].value == pytest.approx(3 / 8)


def test_meta_records_the_bootstrap(comparison: Comparison) -> None:
    assert comparison.meta == {"split": "test", "recommender": "tiny", "n_users": 8, "n_cases": 8, "n_resamples": 200,
                               "confidence": 0.95, "seed": 3}
    assert comparison.details[DPO]["confusion_matrix"][2] == [1, 0, 1]  # true dislike: one right, one "like"


def test_json_round_trip(comparison: Comparison) -> None:
    obj = json.loads(json.dumps(comparison.to_json()))
    assert obj["schema_version"] == SCHEMA_VERSION and obj["kind"] == "comparison"
    assert obj["methods"][DPO]["accuracy"]["value"] == pytest.approx(7 / 8)
    assert set(obj["paired"][DPO][PALR]["accuracy"]) == {"value", "low", "high", "p_value", "n"}
    assert Comparison.from_json(obj) == comparison


@pytest.mark.parametrize("version", [None, 0, 3, "1", True, 2.0])
def test_other_schema_version_is_refused_in_one_line(comparison: Comparison, version) -> None:
    obj = comparison.to_json()
    if version is None:
        del obj["schema_version"]
    else:
        obj["schema_version"] = version
    with pytest.raises(ValueError, match=r"not a comparison of schema_version 1 or 2 \(found") as error:
        Comparison.from_json(obj)
    assert "\n" not in str(error.value)


def test_old_results_file_is_refused_naming_it(tmp_path: Path) -> None:
    old = tmp_path / "results.json"  # the shape the test stage wrote before schema_version existed
    old.write_text(json.dumps({"split": "test", "users": 8, "methods": {}, "versus_dpo": {}}))
    with pytest.raises(ValueError, match=f"{re.escape(str(old))}: not a comparison of schema_version 1"):
        read_comparison(old)


def test_tracker_keys_are_clean(comparison: Comparison) -> None:
    metrics = comparison.tracker_metrics("test/Held-Out Test")
    assert all(re.fullmatch(r"[a-z0-9_/]+", key) for key in metrics), sorted(metrics)
    assert metrics["test/held_out_test/10h_no_profile/accuracy"] == pytest.approx(0.5)
    assert metrics["test/held_out_test/palr_smollm2_135m/macro_f1_low"] == comparison.intervals[PALR]["macro_f1"].low
    assert metrics["test/held_out_test/vs_dpo/palr_smollm2_135m/accuracy"] == pytest.approx(-3 / 8)
    assert "test/held_out_test/vs_dpo/10h_no_profile/weighted_f1_p_value" in metrics
    assert len(metrics) == 3 * 3 * 3 + 2 * 3 * 4  # value/low/high per interval; + p_value per difference


def test_tables_and_markdown(comparison: Comparison) -> None:
    table = comparison.table(methods=[DPO, PALR], metrics=("accuracy",))
    assert list(table.index) == [DPO, PALR] and table.loc[DPO, ("accuracy", "value")] == pytest.approx(7 / 8)
    paired = comparison.paired_table(DPO)
    assert paired.loc[PALR, ("Δ accuracy vs DPO", "value")] == pytest.approx(-3 / 8)
    assert list(comparison.flat_table().columns[:4]) == ["method", "accuracy_value", "accuracy_low", "accuracy_high"]
    markdown = comparison.markdown("Held-out users")
    assert markdown.startswith("## Held-out users\n\n8 users, 95% percentile bootstrap CIs over users (200 resamples)")
    assert "| DPO " in markdown and "| 87.5 [" in markdown
    assert "### Paired differences vs DPO (method minus DPO" in markdown and "| -37.5 [" in markdown
    with pytest.raises(ValueError, match="SFT"):
        comparison.paired_table("SFT")
    with pytest.raises(ValueError, match="not in this comparison"):
        comparison.table(methods=["SFT"])


def test_write_is_complete_and_reads_back(comparison: Comparison, tmp_path: Path) -> None:
    paths = comparison.write(tmp_path / "run", "results", "Held-out users")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.json", "results.md", "results.png"]
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")
    assert paths["markdown"].read_text() == comparison.markdown("Held-out users")
    assert read_comparison(paths["json"]) == comparison


@pytest.mark.parametrize(
    ("users", "truth", "predictions", "message"),
    [
        (USERS[:7], Y_TRUE, PRED, "8 true labels for 7 cases"),
        (["u0"] * 8, Y_TRUE, PRED, "distinct"),
        (USERS, Y_TRUE, {DPO: Y_TRUE[:7]}, "7 predictions for 8 cases"),
        (USERS, Y_TRUE, {DPO: ["love"] * 8}, "love"),
        (USERS, Y_TRUE, {"DPO": Y_TRUE, "dpo": Y_TRUE}, "share the tracker key 'dpo'"),
        (USERS, Y_TRUE, {"(+)": Y_TRUE}, "no letters or digits"),
        (USERS, Y_TRUE, {}, "no methods"),
    ],
)
def test_bad_input_is_refused(users, truth, predictions, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Comparison.compute(users, truth, predictions, references=(DPO,), n_resamples=10)


def probability_rows(truth: list[str], p_true: np.ndarray) -> np.ndarray:
    """Rows in LABELS order giving each true label ``p_true`` and splitting the rest evenly."""
    rows = np.repeat(((1 - p_true) / 2)[:, None], 3, axis=1)
    rows[np.arange(len(truth)), [LABELS.index(t) for t in truth]] = p_true
    return rows


@pytest.fixture(scope="module")
def targets() -> Comparison:
    """12 users x 3 targets; DPO and no DPO give probabilities (DPO 0.1 more on each true label), majority labels."""
    rng = np.random.default_rng(0)
    users = [f"u{i // 3}" for i in range(36)]
    truth = list(rng.choice(LABELS, size=36))
    base = rng.uniform(0.2, 0.8, size=36)
    probabilities = {NO_DPO: probability_rows(truth, base), DPO: probability_rows(truth, base + 0.1)}
    predictions = {m: [LABELS[i] for i in rows.argmax(axis=1)] for m, rows in probabilities.items()}
    return Comparison.compute(users, truth, predictions | {MAJORITY: ["like"] * 36}, references=(NO_DPO,),
                              n_resamples=300, seed=1, probabilities=probabilities, targets=[i % 3 for i in range(36)])


def test_several_targets_per_user_with_probabilities(targets: Comparison) -> None:
    order = sorted(LABELS)
    for method in (DPO, NO_DPO):
        row, rows = targets.intervals[method], np.array(targets.probabilities[method])
        p_true = rows[np.arange(36), [LABELS.index(t) for t in targets.truth]]
        assert row["p_true"].value == pytest.approx(p_true.mean())
        assert row["log_loss"].value == pytest.approx(
            log_loss(targets.truth, rows[:, [LABELS.index(label) for label in order]], labels=order))
        assert {interval.n for interval in row.values()} == {12}  # intervals over users, not cases
    assert list(targets.intervals[MAJORITY]) == ["accuracy", "macro_f1", "weighted_f1"]
    assert targets.metrics == ("accuracy", "macro_f1", "weighted_f1", "p_true", "log_loss")
    gain = targets.paired[NO_DPO][DPO]["p_true"]
    assert gain.value == pytest.approx(0.1) and 0.1 - 1e-9 < gain.low <= gain.high < 0.1 + 1e-9
    assert targets.paired[NO_DPO][DPO]["log_loss"].high < 0
    assert list(targets.paired[NO_DPO][MAJORITY]) == ["accuracy", "macro_f1", "weighted_f1"]
    assert targets.meta["n_users"] == 12 and targets.meta["n_cases"] == 36
    assert targets.difference(DPO, NO_DPO, "log_loss") == targets.paired[NO_DPO][DPO]["log_loss"]
    with pytest.raises(ValueError, match="needs each method's probabilities"):
        targets.difference(MAJORITY, NO_DPO, "p_true")


def test_probability_metrics_in_tracker_tables_and_json(targets: Comparison) -> None:
    metrics = targets.tracker_metrics("test/test")
    assert metrics["test/test/dpo/p_true"] == targets.intervals[DPO]["p_true"].value
    assert "test/test/vs_no_dpo/dpo/log_loss_p_value" in metrics
    assert not any(key.startswith("test/test/majority_class/p_true") for key in metrics)
    assert len(metrics) == 3 * (2 * 5 + 3) + 4 * (5 + 3)
    markdown = targets.markdown("M targets")
    assert markdown.startswith("## M targets\n\n12 users x targets (36 cases), 95% percentile bootstrap CIs over "
                               "users (300 resamples); values in %, log_loss in nats.")
    assert " p_true |" in markdown and " Δ log_loss vs no DPO |" in markdown and "| 0.529 [0.434, 0.625] |" in markdown
    assert "negative favours no DPO; for log_loss (lower is better) positive does)" in markdown
    flat = targets.flat_table()
    assert "log_loss_high" in flat.columns and flat.set_index("method")["p_true_value"].isna()[MAJORITY]
    obj = json.loads(json.dumps(targets.to_json()))
    assert obj["targets"][:4] == ["0", "1", "2", "0"] and set(obj["probabilities"]) == {DPO, NO_DPO}
    assert Comparison.from_json(obj) == targets


def test_version_1_json_still_reads(tmp_path: Path) -> None:
    old = {  # written by schema_version 1: one case per user, no targets and no probabilities
        "schema_version": 1, "kind": "comparison", "users": ["u0", "u1"], "labels": list(LABELS),
        "truth": ["like", "dislike"], "predictions": {DPO: ["like", "like"], NO_PROFILE: ["like", "dislike"]},
        "methods": {m: {"accuracy": {"value": v, "low": v, "high": v, "n": 2}}
                    for m, v in ((DPO, 0.5), (NO_PROFILE, 1.0))},
        "paired": {DPO: {NO_PROFILE: {"accuracy": {"value": 0.5, "low": 0.0, "high": 1.0, "p_value": 0.5, "n": 2}}}},
        "details": {DPO: {}, NO_PROFILE: {}}, "meta": {"n_users": 2},
    }
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(old))
    comparison = read_comparison(path)
    assert comparison.targets is None and comparison.probabilities == {}
    assert comparison.metrics == ("accuracy",) and comparison.paired[DPO][NO_PROFILE]["accuracy"].value == 0.5
    assert comparison.to_json()["schema_version"] == SCHEMA_VERSION == 2
    assert Comparison.from_json(comparison.to_json()) == comparison


@pytest.mark.parametrize(
    ("users", "cases", "probabilities", "message"),
    [
        (USERS[:4] * 2, None, {}, "4 repeated (several targets per user need `targets`)"),
        (USERS[:4] * 2, [0] * 8, {}, "user x target cases must be distinct: 4 repeated"),
        (USERS, [0] * 7, {}, "7 targets for 8 cases"),
        (USERS, None, {"SFT": [[1, 0, 0]] * 8}, "probabilities name methods ['SFT']"),
        (USERS, None, {DPO: [[1, 0, 0]] * 7}, "7 probability rows for 8 cases"),
        (USERS, None, {DPO: [[0.5, 0.0, 0.0]] * 8}, "do not sum to 1"),
    ],
)
def test_bad_cases_are_refused(users, cases, probabilities, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Comparison.compute(users, Y_TRUE, {DPO: PRED[DPO]}, references=(), n_resamples=10, probabilities=probabilities,
                           targets=cases)


def test_labels_match_the_data_schema() -> None:
    from lettingo.data.schema import LABELS as SCHEMA_LABELS

    assert tuple(SCHEMA_LABELS) == LABELS


def test_comparison_is_a_leaf() -> None:
    """Importing it loads only lettingo.evaluation.*, lettingo.artifacts and lettingo.schemas of ours (the package
    registers its config schema when imported; schemas imports only omegaconf and hydra), and no torch."""
    code = ("import json, sys, lettingo.evaluation.comparison\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('lettingo', 'torch', 'peft'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    allowed = re.compile(r"lettingo(\.artifacts|\.schemas|\.evaluation(\.\w+)?)?")
    assert [m for m in json.loads(result.stdout) if not allowed.fullmatch(m)] == []
