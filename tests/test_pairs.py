"""Preference pairs from hand-made rewards: the paper's rule, the cap, the margin rule (with top-k), the summary."""

from __future__ import annotations

import pandas as pd
import pytest

from lettingo.feedback.pairs import build_pairs, format_pairs_summary, pairs_summary


def rewards_of(users: dict[str, list[tuple[bool, float]]]) -> pd.DataFrame:
    """One row per (user, profile): correct and P(true label); two backbones alternate."""
    rows = []
    for user, profiles in users.items():
        for j, (correct, p_true) in enumerate(profiles):
            rows.append({"user_id": user, "split": "s", "backbone": f"b{j % 2}", "sample_idx": j // 2,
                         "prompt_name": "lettingo", "history_len": 30, "prompt": f"prompt of {user} b{j % 2}",
                         "text": f"{user}-p{j}", "correct": correct, "p_true": p_true, "label": "like"})
    return pd.DataFrame(rows)


REWARDS = rewards_of({
    "all_right": [(True, 0.9), (True, 0.8), (True, 0.7)],
    "all_wrong": [(False, 0.2), (False, 0.1)],
    "mixed": [(True, 0.6), (False, 0.3), (True, 0.9), (False, 0.1), (False, 0.2)],
    "close": [(True, 0.40), (False, 0.35)],
})


def test_rule_all_pairs_every_correct_with_every_incorrect_profile() -> None:
    pairs = build_pairs(REWARDS, rule="all")
    assert set(pairs["user_id"]) == {"mixed", "close"}  # all right / all wrong users give none
    mixed = pairs[pairs["user_id"] == "mixed"]
    assert len(mixed) == 2 * 3
    assert set(zip(mixed["chosen"], mixed["rejected"], strict=True)) == {
        (c, r) for c in ("mixed-p0", "mixed-p2") for r in ("mixed-p1", "mixed-p3", "mixed-p4")
    }
    row = mixed[(mixed["chosen"] == "mixed-p2") & (mixed["rejected"] == "mixed-p1")].iloc[0]
    assert row["chosen_p_true"] == 0.9 and row["rejected_p_true"] == 0.3
    assert row["chosen_backbone"] == "b0" and row["rejected_backbone"] == "b1"
    assert row["prompt"] == "prompt of mixed b0" and row["rejected_prompt"] == "prompt of mixed b1"


def test_cap_per_user_is_seeded_and_a_subset() -> None:
    full = build_pairs(REWARDS, rule="all")
    capped = build_pairs(REWARDS, rule="all", max_pairs_per_user=2, seed=7)
    assert capped.groupby("user_id").size().to_dict() == {"mixed": 2, "close": 1}
    key = ["user_id", "chosen", "rejected"]
    assert set(map(tuple, capped[key].to_numpy())) <= set(map(tuple, full[key].to_numpy()))
    pd.testing.assert_frame_equal(capped, build_pairs(REWARDS, rule="all", max_pairs_per_user=2, seed=7))
    draws = {tuple(build_pairs(REWARDS, "all", 2, seed=s)["rejected"]) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_margin_rule_keeps_best_over_worst_above_the_threshold() -> None:
    pairs = build_pairs(REWARDS, rule="margin", min_margin=0.1)
    got = {u: (c, r) for u, c, r in pairs[["user_id", "chosen", "rejected"]].itertuples(index=False)}
    # "close" has a gap of 0.05 only; all-right users count under this rule (0.9 vs 0.7 > 0.1).
    assert got == {"all_right": ("all_right-p0", "all_right-p2"), "mixed": ("mixed-p2", "mixed-p3")}
    assert len(build_pairs(REWARDS, rule="margin", min_margin=0.85)) == 0
    assert len(build_pairs(REWARDS, rule="margin", min_margin=0.0)) == 4
    assert pairs["chosen_reward"].tolist() == pairs["chosen_p_true"].tolist()  # rewards without `reward`


def test_margin_pairs_point_from_higher_to_lower_reward_above_the_margin_and_top_k() -> None:
    rewards = REWARDS.assign(reward=1 - REWARDS["p_true"])  # the reward, not P(true label), orders the profiles
    pairs = build_pairs(rewards, rule="margin", min_margin=0.35, top_k=5)
    got = {(u, c, r) for u, c, r in pairs[["user_id", "chosen", "rejected"]].itertuples(index=False)}
    # mixed by reward: p3 0.9, p4 0.8, p1 0.7, p0 0.4, p2 0.1; five profiles make two pairs, p1 is left out.
    # The other users' gaps are 0.2 at most.
    assert got == {("mixed", "mixed-p3", "mixed-p2"), ("mixed", "mixed-p4", "mixed-p0")}
    assert (pairs["chosen_reward"] - pairs["rejected_reward"] > 0.35).all()
    assert pairs[["chosen_p_true", "rejected_p_true"]].notna().all().all()
    assert set(build_pairs(rewards, rule="margin", min_margin=0.5, top_k=5)["chosen"]) == {"mixed-p3"}
    assert len(build_pairs(rewards, rule="margin", min_margin=0.35, top_k=0)) == 1  # best vs worst only
    assert len(build_pairs(rewards, rule="margin", min_margin=0.15, top_k=1)) == 3  # + all_right (gap 0.2)
    with pytest.raises(ValueError, match="top_k"):
        build_pairs(rewards, rule="margin", top_k=-1)


def test_pairs_summary_counts_users_and_shares() -> None:
    pairs = build_pairs(REWARDS, rule="all")
    summary = pairs_summary(REWARDS, pairs)
    assert summary["users"] == 4 and summary["users_with_pairs"] == 2 and summary["pairs"] == 7
    assert summary["pairs_per_user_mean"] == pytest.approx(3.5) and summary["pairs_per_user_max"] == 6
    assert summary["share_all_right"] == pytest.approx(0.25) and summary["share_all_wrong"] == pytest.approx(0.25)
    assert summary["profile_accuracy"] == pytest.approx(6 / 12)
    assert "7 from 2 of 4 users" in format_pairs_summary(summary, "all")


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="rule"):
        build_pairs(REWARDS, rule="best")
    with pytest.raises(ValueError, match="max_pairs_per_user"):
        build_pairs(REWARDS, max_pairs_per_user=0)


def test_empty_profiles_take_part_in_no_pair() -> None:
    """A tiny generator can stop at once; before the fix such a profile became a pair's chosen text and the
    align stage failed with "1 pairs have an empty 'chosen'" (found by a paper_ml10m smoke run)."""
    rewards = pd.DataFrame([
        {"user_id": "u", "split": "s", "backbone": "b", "sample_idx": i, "prompt_name": "lettingo", "history_len": 70,
         "prompt": "p", "text": text, "correct": correct, "p_true": p_true, "label": "like"}
        for i, (text, correct, p_true) in enumerate([("", True, 0.9), ("likes dramas", True, 0.6),
                                                     ("hates everything", False, 0.1)])
    ])
    for rule in ("all", "margin"):
        pairs = build_pairs(rewards, rule=rule)
        assert pairs[["chosen", "rejected"]].values.tolist() == [["likes dramas", "hates everything"]], rule


def test_a_rule_reward_without_f_rec_verdicts_makes_margin_pairs_only() -> None:
    rewards = REWARDS.drop(columns=["correct", "p_true"]).assign(reward=REWARDS["p_true"])
    pairs = build_pairs(rewards, rule="margin", min_margin=0.1)
    assert len(pairs) == 2 and pairs["chosen_p_true"].isna().all()
    summary = pairs_summary(rewards, pairs)
    assert summary["users"] == 4 and summary["pairs"] == 2 and pd.isna(summary["share_all_right"])
    assert format_pairs_summary(summary | {"min_margin": 0.1}, "margin").endswith("reward gap > 0.1")
    with pytest.raises(ValueError, match="pairs.rule=all needs"):
        build_pairs(rewards, rule="all")
