"""The held-out reward table: means, paired differences and the shuffled guard against hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lettingo.evaluation.bootstrap import mean_interval, paired_mean_difference
from lettingo.evaluation.reward_table import reward_markdown, reward_table


def test_mean_interval_and_paired_difference_by_hand() -> None:
    values = np.array([0.0, 1.0, 1.0, 0.5])
    interval = mean_interval(values, n_resamples=2000, seed=0)
    assert interval.value == pytest.approx(0.625) and interval.n == 4
    assert 0.0 <= interval.low < 0.625 < interval.high <= 1.0
    other = values - 0.25  # every user exactly 0.25 lower: the paired difference has no spread at all
    diff = paired_mean_difference(values, other, n_resamples=500, seed=0)
    assert (diff.value, diff.low, diff.high) == pytest.approx((0.25, 0.25, 0.25))
    assert diff.p_value == pytest.approx(2 / 501)
    same = paired_mean_difference(values, values, n_resamples=500, seed=0)
    assert same.value == 0.0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="one per unit"):
        paired_mean_difference(values, values[:3])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([np.nan])


def _rows() -> pd.DataFrame:
    users = [str(u) for u in range(6)]
    table = {"no DPO": [0, 0, 0, 1, 0, 0], "shuffled": [0, 0, 0, 0, 0, 0],
             "DPO": [1, 1, 1, 1, 0, 1], "DPO shuffled": [0, 1, 0, 0, 0, 0]}
    rows = [{"user_id": u, "method": m, "reward": float(r), "degenerate": "loop" if (m == "DPO" and u == "4") else ""}
            for m, rewards in table.items() for u, r in zip(users, rewards, strict=True)]
    return pd.DataFrame(rows)


def test_reward_table_means_differences_and_guard() -> None:
    table = reward_table(_rows(), {"no DPO": "shuffled", "DPO": "DPO shuffled"}, "no DPO", 400, 0.95, 0)
    assert list(table) == ["no DPO", "DPO"]
    dpo = table["DPO"]
    assert dpo["users"] == 6
    assert dpo["reward"]["value"] == pytest.approx(5 / 6)
    assert dpo["vs_reference"]["value"] == pytest.approx(5 / 6 - 1 / 6)
    assert dpo["shuffled"]["value"] == pytest.approx(1 / 6)
    assert dpo["true_minus_shuffled"]["value"] == pytest.approx(4 / 6)
    assert dpo["vs_reference"]["low"] > 0  # 4 of 6 users up, none down
    assert dpo["degenerate_share"] == pytest.approx(1 / 6)
    assert table["no DPO"]["vs_reference"]["value"] == 0.0
    markdown = reward_markdown(table, "stated_mean", "no DPO")
    assert "| DPO" in markdown and "+0.833" in markdown and "16.7%" in markdown


def test_reward_table_compares_only_users_every_method_has() -> None:
    rows = _rows()
    rows = rows[~((rows["method"] == "DPO") & (rows["user_id"] == "0"))]
    table = reward_table(rows, {"DPO": "DPO shuffled"}, "no DPO", 100, 0.95, 0)
    assert table["DPO"]["users"] == 5 and table["DPO"]["reward"]["value"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="columns"):
        reward_table(rows.drop(columns="degenerate"), {"DPO": "DPO shuffled"}, "no DPO", 100, 0.95, 0)


def test_the_rule_columns_full_share_rides_beside_any_reward() -> None:
    rows = _rows().assign(rule_reward=0.0)
    rows.loc[(rows["method"] == "DPO") & rows["user_id"].isin(["0", "1"]), "rule_reward"] = 1.0
    rows.loc[(rows["method"] == "DPO") & (rows["user_id"] == "2"), "rule_reward"] = 0.75  # stated, one extra number
    table = reward_table(rows, {"no DPO": "shuffled", "DPO": "DPO shuffled"}, "no DPO", 100, 0.95, 0)
    assert table["DPO"]["rule_full_share"] == pytest.approx(2 / 6)
    assert table["no DPO"]["rule_full_share"] == 0.0
    markdown = reward_markdown(table, "p_true", "no DPO")
    assert "states the mean (rule)" in markdown and "33.3%" in markdown
    assert "rule_full_share" not in reward_table(_rows(), {"DPO": "DPO shuffled"}, "no DPO", 100, 0.95, 0)["DPO"]
    assert "states the mean" not in reward_markdown(reward_table(_rows(), {"DPO": "DPO shuffled"}, "no DPO", 100,
                                                                  0.95, 0), "p_true", "no DPO")
