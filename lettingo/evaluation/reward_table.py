"""The held-out reward of every generator: the loop's own objective, measured where no model learned from.

One row per method: its mean reward over the held-out users with a bootstrap interval, the paired
difference against the reference generator (the base, "no DPO"), the same profiles' reward when
given to other users (the shuffled guard: a gain that survives shuffling is reward hacking, not
information about the user), true - shuffled with its paired interval, the degenerate share and,
where the rows carry the stated-mean rule's reward (E0's), the share of profiles that earn it in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lettingo.evaluation.bootstrap import mean_interval, paired_mean_difference
from lettingo.evaluation.tables import render_markdown

#: Columns of the rows :func:`reward_table` reads: one row per (user, method).
ROW_COLUMNS = ("user_id", "method", "reward", "degenerate")
#: The optional column of the stated-mean rule's reward (`lettingo.feedback.rewards.RULE_COLUMN`).
RULE_COLUMN = "rule_reward"
#: The rule's full reward: the profile states the user's mean and no other rating-like number.
RULE_FULL_REWARD = 1.0


def _cell(interval: Mapping[str, float]) -> str:
    return f"{interval['value']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"


def reward_table(rows: pd.DataFrame, shuffled: Mapping[str, str], reference: str, n_resamples: int,
                 confidence: float, seed: int) -> dict[str, dict[str, Any]]:
    """Method -> its held-out reward summary, for every method of ``rows`` that ``shuffled`` names.

    ``rows`` holds one row per (user, method) (:data:`ROW_COLUMNS`; ``degenerate`` a non-empty reason
    or ""); ``shuffled`` maps a method to the method label of its own profiles shuffled among the users.
    Only users every method has are compared. Intervals are percentile bootstraps over users. With
    :data:`RULE_COLUMN` in ``rows``, each summary also holds ``rule_full_share``: the share of the method's
    profiles earning the rule's full reward (E0's rule rate, a guard beside any other reward).
    """
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"reward rows lack the columns {missing}")
    wide = rows.pivot_table(index="user_id", columns="method", values="reward", aggfunc="first")
    wanted = [m for m in dict.fromkeys(rows["method"]) if m in shuffled]
    methods = [*wanted, *(shuffled[m] for m in wanted)]
    wide = wide.loc[:, list(dict.fromkeys([reference, *methods]))].dropna()
    if wide.empty:
        raise ValueError("no user has a reward from every method")
    degenerate = rows.assign(bad=rows["degenerate"].fillna("").astype(str) != "").groupby("method")["bad"].mean()
    rule_full = (rows.assign(full=rows[RULE_COLUMN] >= RULE_FULL_REWARD - 1e-9).groupby("method")["full"].mean()
                 if RULE_COLUMN in rows else None)
    settings = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    table = {}
    for method in wanted:
        values, guard = wide[method].to_numpy(), wide[shuffled[method]].to_numpy()
        table[method] = {
            "users": len(wide),
            "reward": mean_interval(values, **settings).to_dict(),
            "vs_reference": paired_mean_difference(values, wide[reference].to_numpy(), **settings).to_dict(),
            "shuffled": mean_interval(guard, **settings).to_dict(),
            "true_minus_shuffled": paired_mean_difference(values, guard, **settings).to_dict(),
            "degenerate_share": float(degenerate.get(method, 0.0)),
        } | ({} if rule_full is None else {"rule_full_share": float(rule_full.get(method, 0.0))})
    return table


def reward_markdown(table: Mapping[str, Mapping[str, Any]], reward: str, reference: str) -> str:
    """The reward table as markdown: one row per method, intervals in brackets (and the rule's full-reward share
    where the table holds it)."""
    rule = all("rule_full_share" in row for row in table.values())
    header = ["method", "users", reward, f"Δ vs {reference}", "shuffled", "true − shuffled", "degenerate",
              *(["states the mean (rule)"] if rule else [])]
    body = [[method, str(row["users"]), _cell(row["reward"]), _cell(row["vs_reference"]), _cell(row["shuffled"]),
             _cell(row["true_minus_shuffled"]), f"{100 * row['degenerate_share']:.1f}%",
             *([f"{100 * row['rule_full_share']:.1f}%"] if rule else [])]
            for method, row in table.items()]
    return render_markdown(header, body)
