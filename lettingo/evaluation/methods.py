"""The method labels every stage, results file and report uses, and their tracker-key slugs.

A label is what a reader sees in a table (``"10H (no profile)"``); :func:`method_key` turns it
into a slug (``"10h_no_profile"``, file names), and :class:`MetricRoles` into the tracker key of its role,
which holds no value a sweep varies (``"no_profile"``), so every run of a sweep logs the same keys.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

DEFAULT_RECENT = 10  # K: recent interactions f_Rec reads beside the profile (the paper's 10H)


def no_profile_label(recent: int = DEFAULT_RECENT) -> str:
    """Label of f_Rec reading only the ``recent`` latest interactions, no profile: ``"10H (no profile)"``."""
    return f"{int(recent)}H (no profile)"


NO_PROFILE = no_profile_label(DEFAULT_RECENT)
NO_DPO = "no DPO"  # the base generator with the LettinGo prompt
SFT = "SFT"
DPO = "DPO"
MAJORITY = "majority class"
USER_MEAN = "user mean rating"
SHUFFLED = "shuffled"  # profiles given to the wrong users: the floor of a profile method
ORACLE_FACTS = "oracle facts"  # the user facts of the older history as the profile, no LLM: the ceiling
SHUFFLED_ORACLE = "shuffled oracle facts"  # the oracle facts of another user: the ceiling's floor
TABULAR = "tabular"  # gradient-boosted trees over the recent window and item statistics
TABULAR_ORACLE = "tabular + oracle facts"  # the same with the older history's facts as numbers

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def method_key(label: str) -> str:
    """Tracker-key slug of a method label: lowercase, runs of other characters become one ``_``.

    ``"10H (no profile)"`` -> ``"10h_no_profile"``, ``"palr (smollm2_135m)"`` -> ``"palr_smollm2_135m"``.
    Raises ValueError when nothing of ``[a-z0-9]`` is left.
    """
    key = _NOT_SLUG.sub("_", str(label).lower()).strip("_")
    if not key:
        raise ValueError(f"method label {label!r} has no letters or digits to make a tracker key from")
    return key


def method_label(method: str, round_: int, rounds: int, seed: int = 1) -> str:
    """The results label of ``method``'s generator after ``round_`` of ``rounds`` (`dpo` -> DPO, DPO (round 1)),
    and of the last round's replica with training seed ``seed`` >= 2 (DPO (seed 2))."""
    label = method.upper()
    if round_ != rounds:
        return f"{label} (round {round_})"
    return label if seed == 1 else f"{label} (seed {seed})"


@dataclass(frozen=True)
class MetricRoles:
    """Tracker keys of method labels by the row's role, without the run's K, H or backbone names in them.

    ``recent`` is the run's K (the labels' ``"10H"`` prefix), ``generator`` the aligned generator's backbone
    name (fixed-format rows carry it: ``"palr (smollm2_135m)"`` -> ``palr``), ``others`` the other base
    generators' names: their rows exist only when several backbones explore, so they get no scalar key (their
    numbers stay in the logged results table) and single- and multi-LLM runs share every key.
    """

    recent: int
    generator: str
    others: Collection[str] = field(default_factory=tuple)

    def key(self, label: str) -> str | None:
        """The role key of ``label`` (``"10H + raw 30H"`` -> ``raw_30h``), or None for another backbone's row."""
        text = str(label)
        base = text.removesuffix(" shuffled")
        if base in self.others:
            return None
        text = text.removeprefix(f"{int(self.recent)}H").removeprefix(" + ").strip() or text
        text = text.replace(f"({self.generator})", "")
        return method_key(text)
