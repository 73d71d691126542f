"""The reliability gate: does the judge's reward order a user's profiles the same way on other targets?

A profile rewarded on M >= 2 target items gets two half rewards: its mean on targets 1..M/2 (half A)
and on the rest (half B; the larger half when M is odd). Two numbers say whether DPO can learn from
the reward:

- **split-half reliability**: the Pearson correlation of half A with half B within users (each half
  centred by its user's mean over that user's profiles, then correlated over all profiles), and its
  Spearman-Brown correction 2r / (1 + r), the reliability of the full M-target mean;
- **pair replication** per margin δ: among each user's best-vs-worst pair by half A whose half-A gap
  exceeds δ, the share whose order holds on half B.

The margins are δ = 0 and the 10%..50% quantiles of the half-A best-vs-worst gaps: a grid in the
reward's own units, whatever the reward, on which every margin keeps about half of the users' pairs
or more. ``pairs.min_margin: auto`` takes the smallest δ at which ``pairs.replicate_target`` of the
pairs replicate and applies it to the gaps of the full M-target mean, which are less noisy than
half-A gaps: pairs kept there replicate at least as often.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from lettingo.feedback.pairs import GROUP, build_pairs, pairable, pairs_summary
from lettingo.schemas import ConfigError, PairsSchema

log = logging.getLogger(__name__)

#: The quantiles of the half-A gaps that, with δ = 0, make the margin grid. Not beyond the median: with
#: the deciles up to 90%, 200 users of pure-noise rewards (N = M = 8) passed a 60% gate a third of the time.
QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
NEEDS_TARGETS = "needs evaluate.targets_per_user >= 2 (these rewards have one target per profile)"


class NoLearnableSignal(RuntimeError):
    """`pairs.gate=require` and no margin's best-vs-worst pairs replicate often enough."""


@dataclass(frozen=True)
class Gate:
    """The reward's split-half reliability and, per margin δ, best-vs-worst pairs above it and their replication."""

    targets: int  # M, targets per profile
    users: int  # user groups with at least two profiles
    profiles: int
    reliability: float  # within-user Pearson r of half A and half B
    spearman_brown: float  # 2r / (1 + r): the reliability of the M-target mean
    margins: tuple[float, ...]  # the grid of δ, ascending
    pairs: tuple[int, ...]  # best-vs-worst pairs whose half-A gap exceeds each δ
    replication: tuple[float, ...]  # share of those whose order holds on half B (nan without pairs)

    @property
    def best(self) -> int:
        """Index of the margin with the highest replication share (the smallest such δ; 0 when no pairs)."""
        shares = np.asarray(self.replication, float)
        return int(np.nanargmax(shares)) if np.isfinite(shares).any() else 0

    def margin_for(self, share: float) -> float | None:
        """The smallest δ at which at least ``share`` of the pairs replicate (None when no δ reaches it)."""
        return next((m for m, r in zip(self.margins, self.replication, strict=True) if r >= share), None)

    def passes(self, min_replication: float) -> bool:
        """Whether some margin's pairs replicate at least ``min_replication`` of the time."""
        return self.replication[self.best] >= min_replication

    def scalars(self) -> dict[str, float]:
        """The gate's single numbers (what the tracker records)."""
        best = self.best
        return {"targets": self.targets, "users": self.users, "profiles": self.profiles,
                "reliability": self.reliability, "spearman_brown": self.spearman_brown,
                "pairs": self.pairs[0], "replication": self.replication[0],
                "best_margin": self.margins[best], "best_pairs": self.pairs[best],
                "best_replication": self.replication[best]}

    def to_dict(self) -> dict[str, Any]:
        """Every field and the single numbers, as JSON-ready values."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()} \
            | self.scalars()

    def format(self) -> str:
        """The gate as one line: reliability, then the replication share and pairs per margin."""
        per_margin = ", ".join(f"δ>{m:.3g} {_share(r)} of {n}"
                               for m, n, r in zip(self.margins, self.pairs, self.replication, strict=True))
        return (f"gate (M = {self.targets}, {self.users} users, {self.profiles} profiles): split-half reliability "
                f"{self.reliability:.3f} (Spearman-Brown {self.spearman_brown:.3f}); best-vs-worst pairs replicating "
                f"on the other half: {per_margin}")

    def failure(self, min_replication: float) -> str:
        """The one line that stops a run whose gate fails."""
        best = self.best
        return (f"the judge gives no learnable signal: best-vs-worst pairs replicate on the other half of the "
                f"targets at most {_share(self.replication[best])} (δ>{self.margins[best]:.3g}, "
                f"{self.pairs[best]} pairs; pairs.gate_min_replication={min_replication:g}), split-half reliability "
                f"{self.reliability:.3f} (Spearman-Brown {self.spearman_brown:.3f})")


def _share(value: float) -> str:
    """A share as a percentage (``-`` when undefined)."""
    return "-" if math.isnan(value) else f"{100 * value:.0f}%"


def targets_per_profile(rewards: pd.DataFrame) -> int:
    """M, the targets each profile was rewarded on: 1 without a `target_rewards` column (old artifacts)."""
    if "target_rewards" not in rewards.columns or rewards.empty:
        return 1
    lengths = set(rewards["target_rewards"].map(len))
    if len(lengths) > 1:
        raise ValueError(f"target_rewards: profiles were rewarded on different numbers of targets {sorted(lengths)}")
    return lengths.pop()


def half_rewards(rewards: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each profile's mean reward on targets 1..M/2 (half A) and on the rest (half B)."""
    matrix = np.stack([np.asarray(values, float) for values in rewards["target_rewards"]])
    half = matrix.shape[1] // 2
    return matrix[:, :half].mean(axis=1), matrix[:, half:].mean(axis=1)


def _user_ids(rewards: pd.DataFrame) -> np.ndarray:
    """Each profile's user group (:data:`GROUP`) as an integer."""
    return rewards.groupby(list(GROUP), sort=False).ngroup().to_numpy()


def split_half_reliability(rewards: pd.DataFrame) -> tuple[float, float]:
    """Within-user Pearson r of the half rewards and its Spearman-Brown correction 2r / (1 + r) (nan if undefined)."""
    a, b = half_rewards(rewards)
    users = _user_ids(rewards)
    a = a - pd.Series(a).groupby(users).transform("mean").to_numpy()
    b = b - pd.Series(b).groupby(users).transform("mean").to_numpy()
    scale = math.sqrt(float(a @ a) * float(b @ b))
    r = float(a @ b) / scale if scale > 0 else math.nan
    return r, 2 * r / (1 + r) if r != -1 else math.nan


def best_worst_halves(rewards: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per user with at least two profiles, best vs worst by half A: the half-A gap and whether half B agrees."""
    a, b = half_rewards(rewards)
    halves = pd.DataFrame({"user": _user_ids(rewards), "a": a})
    by_user = halves.groupby("user")["a"]
    several = (by_user.size() > 1).to_numpy()
    best, worst = by_user.idxmax().to_numpy()[several], by_user.idxmin().to_numpy()[several]
    return a[best] - a[worst], b[best] > b[worst]


def margin_grid(gaps: np.ndarray) -> tuple[float, ...]:
    """δ = 0 and the :data:`QUANTILES` of the half-A gaps, ascending and distinct."""
    quantiles = np.quantile(gaps, QUANTILES) if len(gaps) else []
    return tuple(sorted({0.0, *(float(q) for q in quantiles)}))


def reliability_gate(rewards: pd.DataFrame) -> Gate:
    """The gate on the profiles that can be paired (rewards with M >= 2 targets per profile)."""
    rewards = pairable(rewards).reset_index(drop=True)
    gaps, replicated = best_worst_halves(rewards)
    margins = margin_grid(gaps)
    above = [gaps > margin for margin in margins]
    reliability, spearman_brown = split_half_reliability(rewards)
    return Gate(
        targets=targets_per_profile(rewards), users=len(gaps), profiles=len(rewards), reliability=reliability,
        spearman_brown=spearman_brown, margins=margins, pairs=tuple(int(keep.sum()) for keep in above),
        replication=tuple(float(replicated[keep].mean()) if keep.any() else math.nan for keep in above),
    )


def gate_of(rewards: pd.DataFrame) -> Gate | None:
    """The gate of the rewards, or None when they have one target per profile (no halves to compare)."""
    return reliability_gate(rewards) if targets_per_profile(rewards) >= 2 else None


def check_gate(gate: Gate | None, mode: str, min_replication: float) -> str:
    """The line to print under `pairs.gate` = ``mode`` (empty when off).

    Under ``require`` raises :class:`NoLearnableSignal` when no margin's pairs replicate at least
    ``min_replication`` of the time, and :class:`ConfigError` when there is no gate (M = 1).
    """
    if mode == "off":
        return ""
    if gate is None:
        if mode == "require":
            raise ConfigError("pairs.gate", mode, NEEDS_TARGETS)
        return "gate: skipped, it needs M >= 2 targets per profile (evaluate.targets_per_user >= 2)"
    if mode == "require" and not gate.passes(min_replication):
        raise NoLearnableSignal(gate.failure(min_replication))
    return gate.format()


def pair_margin(min_margin: float | str, gate: Gate | None, replicate_target: float) -> float:
    """`pairs.min_margin` as a number: itself, or for ``auto`` the smallest δ of the gate's grid at which
    ``replicate_target`` of the best-vs-worst pairs replicate (the best-replicating δ, with a warning, when
    none does). ``auto`` without a gate (M = 1) is a :class:`ConfigError`."""
    if min_margin != "auto":
        return float(min_margin)
    if gate is None:
        raise ConfigError("pairs.min_margin", min_margin, NEEDS_TARGETS)
    margin = gate.margin_for(replicate_target)
    if margin is None:
        margin = gate.margins[gate.best]
        log.warning("pairs.min_margin=auto: no margin reaches pairs.replicate_target=%g; taking δ=%.3g, where %s "
                    "replicate", replicate_target, margin, _share(gate.replication[gate.best]))
    return margin


@dataclass(frozen=True)
class PairPlan:
    """How `pairs.*` pairs one rewards table: its gate (None with one target per profile) and the margin the
    margin rule uses (``auto`` resolved from the gate). What every stage that writes pairs runs."""

    settings: PairsSchema
    gate: Gate | None
    min_margin: float

    def metrics(self, prefix: str) -> dict[str, float]:
        """The gate's single numbers as tracker scalars ``<prefix>/<key>`` (none without a gate or when off)."""
        if self.gate is None or self.settings.gate == "off":
            return {}
        return {f"{prefix}/{key}": float(value) for key, value in self.gate.scalars().items()}

    def report(self) -> str:
        """The gate's line to print (see :func:`check_gate`: raises under `pairs.gate=require` without signal)."""
        return check_gate(self.gate, self.settings.gate, self.settings.gate_min_replication)

    def pairs(self, rewards: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The pairs of ``rewards`` and their summary, which holds the margin used and the gate."""
        rule = self.settings
        pairs = build_pairs(rewards, rule=rule.rule, max_pairs_per_user=rule.max_pairs_per_user,
                            min_margin=self.min_margin, seed=seed, top_k=rule.top_k)
        gate = self.gate.to_dict() if self.gate is not None else None
        return pairs, pairs_summary(rewards, pairs) | {"min_margin": self.min_margin, "gate": gate}


def plan_pairs(rewards: pd.DataFrame, settings: PairsSchema) -> PairPlan:
    """The gate of ``rewards`` and the margin of the pairs under ``settings`` (`pairs`).

    ``min_margin: auto`` with one target per profile is a :class:`ConfigError`.
    """
    gate = gate_of(rewards)
    margin = pair_margin(settings.min_margin, gate, settings.replicate_target) if settings.rule == "margin" else 0.0
    return PairPlan(settings, gate, margin)
