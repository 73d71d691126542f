"""The method labels every stage, results file and report uses, and their tracker-key slugs.

A label is what a reader sees in a table (``"10H (no profile)"``); :func:`method_key` turns it
into the slug used in tracker metric keys (``"10h_no_profile"``).
"""

from __future__ import annotations

import re

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
