"""Preference pairs from rewards: (generator prompt, chosen profile, rejected profile) per user.

Profiles compete only with profiles written for the same user from the same prompt template and
history length. Rule ``all`` (the paper's): every correct x incorrect pair, so users whose
profiles are all right or all wrong give none. Rule ``margin``: the profile with the highest reward
over the one with the lowest, then up to ``top_k`` more top-vs-bottom pairs (2nd best vs 2nd worst,
...; a profile is in at most one pair), each kept only when the reward gap exceeds ``min_margin``.
The reward is the `reward` column (the mean over the M targets); rewards written before it existed
have ``p_true``. At most ``max_pairs_per_user`` pairs are kept per user, drawn with a seed that
depends only on (seed, user), so adding users never changes another user's pairs.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np
import pandas as pd

from lettingo.seeding import derive_seed

RULES = ("all", "margin")
#: A user's competing profiles: written for the same user with the same prompt template and H.
GROUP: tuple[str, ...] = ("user_id", "prompt_name", "history_len")
PAIR_COLUMNS: tuple[str, ...] = (
    *GROUP, "prompt", "chosen", "rejected", "chosen_backbone", "rejected_backbone", "chosen_sample_idx",
    "rejected_sample_idx", "chosen_p_true", "rejected_p_true", "chosen_reward", "rejected_reward",
    "rejected_prompt", "label",
)


def reward_column(rewards: pd.DataFrame) -> str:
    """The column holding each profile's reward: `reward`, or `p_true` in rewards written before it existed."""
    return "reward" if "reward" in rewards.columns else "p_true"


def pairable(rewards: pd.DataFrame) -> pd.DataFrame:
    """The profiles that may be in a pair: not empty (alignment cannot train on a generator that stopped at once)."""
    return rewards[rewards["text"].fillna("").str.len() > 0]


def top_bottom(reward: np.ndarray, min_margin: float, top_k: int) -> list[tuple[int, int]]:
    """(chosen, rejected) positions: i-th best vs i-th worst for i = 1..1 + ``top_k``, each profile once,
    kept when the reward gap exceeds ``min_margin``."""
    order = np.argsort(-reward, kind="stable")
    ranks = range(min(top_k + 1, len(order) // 2))
    return [(int(order[i]), int(order[-1 - i])) for i in ranks if reward[order[i]] - reward[order[-1 - i]] > min_margin]


def _candidates(group: pd.DataFrame, rule: str, min_margin: float, top_k: int) -> list[tuple[int, int]]:
    """(chosen, rejected) positional index pairs of one user's profiles under ``rule``."""
    if rule == "all":
        correct = np.flatnonzero(group["correct"].to_numpy(bool))
        wrong = np.flatnonzero(~group["correct"].to_numpy(bool))
        return [(int(c), int(w)) for c, w in product(correct, wrong)]
    return top_bottom(group[reward_column(group)].to_numpy(float), min_margin, top_k)


def build_pairs(
    rewards: pd.DataFrame,
    rule: str = "all",
    max_pairs_per_user: int | None = None,
    min_margin: float = 0.0,
    seed: int = 0,
    top_k: int = 0,
) -> pd.DataFrame:
    """Preference pairs from the rewards of profiles (see the module docstring for the rules).

    ``prompt`` is the chosen profile's generator prompt verbatim; ``rejected_prompt`` the rejected
    one's (they differ only when two backbones with different chat templates wrote them). Empty
    profiles (a generator that stopped at once) take part in no pair: alignment cannot train on them.
    """
    if rule not in RULES:
        raise ValueError(f"pairs.rule must be one of {RULES}, got {rule!r}")
    if max_pairs_per_user is not None and max_pairs_per_user < 1:
        raise ValueError(f"max_pairs_per_user must be at least 1 or null, got {max_pairs_per_user}")
    if top_k < 0:
        raise ValueError(f"top_k must be at least 0, got {top_k}")
    if rule == "all" and "correct" not in rewards.columns:
        raise ValueError("pairs.rule=all needs f_Rec's verdicts (`correct`), which a rule reward has none of: "
                         "use pairs=margin")
    rows: list[dict[str, Any]] = []
    rewards = pairable(rewards)
    reward = reward_column(rewards)
    for key, group in rewards.groupby(list(GROUP), sort=True):
        group = group.sort_values(["backbone", "sample_idx"], kind="stable").reset_index(drop=True)
        chosen_rejected = _candidates(group, rule, min_margin, top_k)
        if max_pairs_per_user is not None and len(chosen_rejected) > max_pairs_per_user:
            user_rng = np.random.default_rng(derive_seed(seed, key[0], bits=64))
            keep = user_rng.choice(len(chosen_rejected), max_pairs_per_user, replace=False)
            chosen_rejected = [chosen_rejected[i] for i in sorted(keep)]
        for c, r in chosen_rejected:
            chosen, rejected = group.iloc[c], group.iloc[r]
            rows.append({
                **dict(zip(GROUP, key, strict=True)), "prompt": chosen["prompt"], "chosen": chosen["text"],
                "rejected": rejected["text"], "chosen_backbone": chosen["backbone"],
                "rejected_backbone": rejected["backbone"], "chosen_sample_idx": int(chosen["sample_idx"]),
                "rejected_sample_idx": int(rejected["sample_idx"]),
                "chosen_p_true": float(chosen.get("p_true", np.nan)),  # a rule reward has no f_Rec verdict
                "rejected_p_true": float(rejected.get("p_true", np.nan)), "chosen_reward": float(chosen[reward]),
                "rejected_reward": float(rejected[reward]), "rejected_prompt": rejected["prompt"],
                "label": chosen["label"],
            })
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def verdict_shares(rewards: pd.DataFrame) -> dict[str, float]:
    """The share of profiles f_Rec got right and of users whose profiles were all right / all wrong (nan without
    f_Rec's verdicts: a rule reward)."""
    if "correct" not in rewards.columns or rewards.empty:
        return dict.fromkeys(("profile_accuracy", "share_all_right", "share_all_wrong"), float("nan"))
    per_user = rewards.groupby(list(GROUP))["correct"].agg(["all", "any"])
    return {"profile_accuracy": float(rewards["correct"].mean()), "share_all_right": float(per_user["all"].mean()),
            "share_all_wrong": float((~per_user["any"]).mean())}


def pairs_summary(rewards: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, Any]:
    """Users, users with pairs, pairs per user, and the shares of :func:`verdict_shares`."""
    counts = pairs.groupby(list(GROUP)).size() if len(pairs) else pd.Series(dtype=int)
    return {
        "users": int(rewards.groupby(list(GROUP)).ngroups),
        "profiles": int(len(rewards)),
        "users_with_pairs": int(len(counts)),
        "pairs": int(len(pairs)),
        "pairs_per_user_mean": float(counts.mean()) if len(counts) else 0.0,
        "pairs_per_user_max": int(counts.max()) if len(counts) else 0,
    } | verdict_shares(rewards)


def format_pairs_summary(summary: dict[str, Any], rule: str) -> str:
    """The pairs summary as one readable line."""
    line = (f"pairs ({rule}): {summary['pairs']} from {summary['users_with_pairs']} of {summary['users']} users "
            f"({summary['pairs_per_user_mean']:.1f} per user with pairs, max {summary['pairs_per_user_max']})")
    if summary.get("min_margin") is not None and rule == "margin":
        line += f", reward gap > {summary['min_margin']:.3g}"
    if math.isnan(summary["profile_accuracy"]):
        return line
    return (f"{line}; profiles right {100 * summary['profile_accuracy']:.1f}%; users all right "
            f"{100 * summary['share_all_right']:.1f}%, all wrong {100 * summary['share_all_wrong']:.1f}%")

