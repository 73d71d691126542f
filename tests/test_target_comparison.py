"""The test stage's second comparison, over every held-out user x all M targets (`evaluate.targets_per_user`), on
the tiny setup through the real config and the stage runner: what it counts and that its metrics are the ones the
`predictions` artifact alone gives."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from sklearn.metrics import log_loss

from lettingo import CONFIG_DIR
from lettingo.artifacts import PREDICTIONS, RESULTS, ArtifactStore
from lettingo.data.schema import LABELS
from lettingo.evaluation.comparison import read_comparison
from lettingo.evaluation.methods import ORACLE_FACTS
from lettingo.pipeline import run

M = 3
USERS = 5
TINY = ["debug=tiny", "logger=csv", f"evaluate.targets_per_user={M}", f"dataset.splits.test={USERS}",
        f"test.max_users={USERS}", "test.max_new_tokens=4", "bootstrap.n_resamples=20",
        "evaluate.tabular.enabled=false"]


@pytest.fixture(scope="module")
def tested(tiny_model_cache, tmp_path_factory) -> tuple[Path, str]:
    """The run folder of a data and a test stage with M targets per user, and what the test stage printed."""
    folder, out = tmp_path_factory.mktemp("targets"), io.StringIO()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for stage in ("data", "test"):
            cfg = compose(config_name="config", overrides=[f"paths.run_dir={folder}",
                                                           f"paths.model_cache={tiny_model_cache}", f"stage={stage}",
                                                           *TINY])
            with contextlib.redirect_stdout(out):
                run(cfg)
    return folder, out.getvalue()


def per_target(rows: pd.DataFrame, column: str) -> list:
    """Every entry of the per-target list ``column`` over ``rows``, user by user."""
    return [value for values in rows[column] for value in values]


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 rows, as stored
def test_the_all_targets_comparison_is_every_user_x_target_of_the_predictions(tested) -> None:
    tested, _ = tested
    headline = read_comparison(tested / RESULTS / "comparison.json")
    every = read_comparison(tested / RESULTS / "comparison_targets.json")
    assert headline.targets is None and len(headline.users) == USERS  # the real target's, unchanged
    assert every.meta["n_users"] == USERS and every.meta["n_cases"] == len(every.users) == USERS * M
    assert set(every.methods) == set(headline.methods)
    order = sorted(LABELS)  # scikit-learn's column order
    predictions = ArtifactStore(tested).read_table(PREDICTIONS)
    for method, rows in predictions[predictions["method"].isin(every.methods)].groupby("method"):
        rows = rows.sort_values("user_id", key=lambda ids: ids.astype(str))
        truth, p_true = per_target(rows, "target_labels"), per_target(rows, "target_p_true")
        probabilities = np.array(per_target(rows, "target_probabilities"))
        row = every.intervals[method]
        assert row["p_true"].value == pytest.approx(sum(p_true) / (USERS * M))
        assert row["log_loss"].value == pytest.approx(
            log_loss(truth, probabilities[:, [LABELS.index(label) for label in order]], labels=order))
        assert row["accuracy"].value == pytest.approx(np.mean(np.array(per_target(rows, "target_predicted"))
                                                              == np.array(truth)))
        assert {interval.n for interval in row.values()} == {USERS}  # resampled by user
        assert headline.intervals[method]["p_true"].value == pytest.approx(rows["p_true"].mean())
    assert ORACLE_FACTS in every.paired and set(every.paired) == set(headline.paired)


def test_it_is_printed_after_the_headline_and_logged_under_all_targets(tested) -> None:
    tested, out = tested
    headline, every = out.index("results: "), out.index(f": all {M} targets per user")
    assert headline < every and f"{USERS} users x targets ({USERS * M} cases)" in out[every:]
    metrics = pd.read_csv(tested / "logs" / "metrics.csv")
    keys = set(metrics["key"])
    assert {"test/test/oracle_facts/p_true", "test/test/all_targets/oracle_facts/p_true",
            "test/test/all_targets/oracle_facts/log_loss_low"} <= keys
    every = read_comparison(tested / RESULTS / "comparison_targets.json")
    logged = metrics.set_index("key")["value"]
    assert logged["test/test/all_targets/oracle_facts/accuracy"] == pytest.approx(
        every.intervals[ORACLE_FACTS]["accuracy"].value)
    assert (tested / "logs" / "tables" / "test__test__all_targets__results.csv").is_file()
    markdown = (tested / RESULTS / "comparison_targets.md").read_text()
    assert f": all {M} targets per user" in markdown.splitlines()[0]
    assert f"{USERS} users x targets ({USERS * M} cases)" in markdown
