"""Comparison: every method on the same users, intervals, paired differences, its JSON and its files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from lettingo.evaluation.comparison import LABELS, SCHEMA_VERSION, Comparison, read_comparison
from lettingo.evaluation.methods import DPO, NO_PROFILE

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
    assert comparison.meta == {"split": "test", "recommender": "tiny", "n_users": 8, "n_resamples": 200,
                               "confidence": 0.95, "seed": 3}
    assert comparison.details[DPO]["confusion_matrix"][2] == [1, 0, 1]  # true dislike: one right, one "like"


def test_json_round_trip(comparison: Comparison) -> None:
    obj = json.loads(json.dumps(comparison.to_json()))
    assert obj["schema_version"] == SCHEMA_VERSION and obj["kind"] == "comparison"
    assert obj["methods"][DPO]["accuracy"]["value"] == pytest.approx(7 / 8)
    assert set(obj["paired"][DPO][PALR]["accuracy"]) == {"value", "low", "high", "p_value", "n"}
    assert Comparison.from_json(obj) == comparison


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_other_schema_version_is_refused_in_one_line(comparison: Comparison, version) -> None:
    obj = comparison.to_json()
    if version is None:
        del obj["schema_version"]
    else:
        obj["schema_version"] = version
    with pytest.raises(ValueError, match=r"not a comparison of schema_version 1 \(found") as error:
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
        (USERS[:7], Y_TRUE, PRED, "8 true labels for 7 users"),
        (["u0"] * 8, Y_TRUE, PRED, "distinct"),
        (USERS, Y_TRUE, {DPO: Y_TRUE[:7]}, "7 predictions for 8 users"),
        (USERS, Y_TRUE, {DPO: ["love"] * 8}, "love"),
        (USERS, Y_TRUE, {"DPO": Y_TRUE, "dpo": Y_TRUE}, "share the tracker key 'dpo'"),
        (USERS, Y_TRUE, {"(+)": Y_TRUE}, "no letters or digits"),
        (USERS, Y_TRUE, {}, "no methods"),
    ],
)
def test_bad_input_is_refused(users, truth, predictions, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Comparison.compute(users, truth, predictions, references=(DPO,), n_resamples=10)


def test_labels_match_the_data_schema() -> None:
    from lettingo.data.schema import LABELS as SCHEMA_LABELS

    assert tuple(SCHEMA_LABELS) == LABELS


def test_comparison_is_a_leaf() -> None:
    """Importing it loads only lettingo.evaluation.* and lettingo.artifacts of ours, and no torch."""
    code = ("import json, sys, lettingo.evaluation.comparison\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('lettingo', 'torch', 'peft'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    allowed = re.compile(r"lettingo(\.artifacts|\.evaluation(\.\w+)?)?")
    assert [m for m in json.loads(result.stdout) if not allowed.fullmatch(m)] == []
