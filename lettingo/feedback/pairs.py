"""Preference pairs from rewards: (generator prompt, chosen profile, rejected profile) per user.

Profiles compete only with profiles written for the same user from the same prompt template and
history length. Rule ``all`` (the paper's): every correct x incorrect pair, so users whose
profiles are all right or all wrong give none. Rule ``margin``: one pair per user, the profile
with the highest probability of the true label over the one with the lowest, kept only when the
gap exceeds ``min_margin``. At most ``max_pairs_per_user`` pairs are kept per user, drawn with a
seed that depends only on (seed, user), so adding users never changes another user's pairs.
"""

from __future__ import annotations

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
    "rejected_sample_idx", "chosen_p_true", "rejected_p_true", "rejected_prompt", "label",
)


def _candidates(group: pd.DataFrame, rule: str, min_margin: float) -> list[tuple[int, int]]:
    """(chosen, rejected) positional index pairs of one user's profiles under ``rule``."""
    if rule == "all":
        correct = np.flatnonzero(group["correct"].to_numpy(bool))
        wrong = np.flatnonzero(~group["correct"].to_numpy(bool))
        return [(int(c), int(w)) for c, w in product(correct, wrong)]
    p_true = group["p_true"].to_numpy(float)
    best, worst = int(np.argmax(p_true)), int(np.argmin(p_true))
    return [(best, worst)] if p_true[best] - p_true[worst] > min_margin else []


def build_pairs(
    rewards: pd.DataFrame,
    rule: str = "all",
    max_pairs_per_user: int | None = None,
    min_margin: float = 0.0,
    seed: int = 0,
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
    rows: list[dict[str, Any]] = []
    rewards = rewards[rewards["text"].fillna("").str.len() > 0]
    for key, group in rewards.groupby(list(GROUP), sort=True):
        group = group.sort_values(["backbone", "sample_idx"], kind="stable").reset_index(drop=True)
        chosen_rejected = _candidates(group, rule, min_margin)
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
                "rejected_sample_idx": int(rejected["sample_idx"]), "chosen_p_true": float(chosen["p_true"]),
                "rejected_p_true": float(rejected["p_true"]), "rejected_prompt": rejected["prompt"],
                "label": chosen["label"],
            })
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def pairs_summary(rewards: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, Any]:
    """Users, users with pairs, pairs per user, and the share of users whose profiles were all right / all wrong."""
    per_user = rewards.groupby(list(GROUP))["correct"].agg(["all", "any"])
    n_users = len(per_user)
    counts = pairs.groupby(list(GROUP)).size() if len(pairs) else pd.Series(dtype=int)
    return {
        "users": int(n_users),
        "profiles": int(len(rewards)),
        "profile_accuracy": float(rewards["correct"].mean()) if len(rewards) else float("nan"),
        "users_with_pairs": int(len(counts)),
        "pairs": int(len(pairs)),
        "pairs_per_user_mean": float(counts.mean()) if len(counts) else 0.0,
        "pairs_per_user_max": int(counts.max()) if len(counts) else 0,
        "share_all_right": float(per_user["all"].mean()) if n_users else float("nan"),
        "share_all_wrong": float((~per_user["any"]).mean()) if n_users else float("nan"),
    }


def format_pairs_summary(summary: dict[str, Any], rule: str) -> str:
    """The pairs summary as one readable line."""
    return (
        f"pairs ({rule}): {summary['pairs']} from {summary['users_with_pairs']} of {summary['users']} users "
        f"({summary['pairs_per_user_mean']:.1f} per user with pairs, max {summary['pairs_per_user_max']}); "
        f"profiles right {100 * summary['profile_accuracy']:.1f}%; users all right "
        f"{100 * summary['share_all_right']:.1f}%, all wrong {100 * summary['share_all_wrong']:.1f}%"
    )

