"""Text checks on generated profiles: degenerate flags, distinct-n diversity, the exploration summary."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")

# A text whose word bigrams are mostly repeats is a loop, not a profile; short texts are judged
# from at least this many tokens so a terse but varied answer is never called repetitive.
REPETITION_MIN_TOKENS = 8
REPETITION_MAX_DISTINCT2 = 0.35
# A text whose word trigrams nearly all occur in the item lines only copies the history back.
ECHO_MIN_TRIGRAMS = 5
ECHO_MIN_SHARE = 0.8


def tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the units of distinct-n and the repetition check."""
    return _TOKEN.findall(text.lower())


def ngrams(units: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The consecutive ``n``-grams of ``units``."""
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams over all n-grams of ``texts`` pooled; 0 when none."""
    grams = [g for text in texts for g in ngrams(tokens(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def degenerate_reason(text: str, history: str) -> str:
    """Why ``text`` is no usable profile of the user whose item lines are ``history``; ``""`` when fine.

    ``empty``: no letter or digit. ``repetition``: mostly one phrase repeated. ``echo``: nearly
    every word trigram is copied from ``history`` (the items read back instead of described).
    """
    units = tokens(text)
    if not any(_WORD.fullmatch(u) for u in units):
        return "empty"
    if len(units) >= REPETITION_MIN_TOKENS and distinct_n([text], 2) <= REPETITION_MAX_DISTINCT2:
        return "repetition"
    trigrams = ngrams(_WORD.findall(text.lower()), 3)
    if len(trigrams) >= ECHO_MIN_TRIGRAMS:
        source = set(ngrams(_WORD.findall(history.lower()), 3))
        if sum(g in source for g in trigrams) / len(trigrams) >= ECHO_MIN_SHARE:
            return "echo"
    return ""


def _mean_distinct(frame: pd.DataFrame, by: Sequence[str], n: int) -> float:
    """Distinct-n of each group's texts pooled, averaged over the groups."""
    return float(frame.groupby(list(by))["text"].apply(lambda texts: distinct_n(texts, n)).mean())


def summarize_profiles(frame: pd.DataFrame) -> dict[str, Any]:
    """What a researcher checks after exploration, from rows of the profiles artifact.

    Per backbone: profiles, users, mean completion length (model tokens), distinct-1/2 within each
    user's set (averaged over users), degenerate share, seconds and tokens spent. ``across``: the
    same distinct-n over each user's profiles from all backbones pooled; against the per-backbone
    values (on fewer texts, which favours them) it shows whether backbones differ from each other.
    """
    if frame.empty:
        raise ValueError("no profiles to summarize")
    per_backbone = {}
    for name, rows in frame.groupby("backbone", sort=False):
        seconds = float(rows["seconds"].sum())
        per_backbone[str(name)] = {
            "profiles": int(len(rows)),
            "users": int(rows["user_id"].nunique()),
            "mean_tokens": float(rows["completion_tokens"].mean()),
            **{f"distinct{n}": _mean_distinct(rows, ["user_id"], n) for n in (1, 2)},
            "degenerate_share": float((rows["degenerate"] != "").mean()),
            "seconds": seconds,
            "completion_tokens": int(rows["completion_tokens"].sum()),
            "prompt_tokens": int(rows["prompt_tokens"].sum()),
            "tokens_per_s": float(rows["completion_tokens"].sum() / seconds) if seconds > 0 else 0.0,
        }
    reasons = frame.loc[frame["degenerate"] != "", "degenerate"].value_counts()
    return {
        "profiles": int(len(frame)),
        "users": int(frame["user_id"].nunique()),
        "mean_tokens": float(frame["completion_tokens"].mean()),
        "degenerate_share": float((frame["degenerate"] != "").mean()),
        "degenerate_reasons": {str(k): int(v) for k, v in reasons.items()},
        "seconds": float(frame["seconds"].sum()),
        "completion_tokens": int(frame["completion_tokens"].sum()),
        "prompt_tokens": int(frame["prompt_tokens"].sum()),
        "across": {f"distinct{n}": _mean_distinct(frame, ["user_id"], n) for n in (1, 2)},
        "per_backbone": per_backbone,
    }


def format_summary(summary: dict[str, Any], split: str) -> str:
    """The exploration summary of one split as readable lines."""
    lines = [
        f"explore {split}: {summary['profiles']} profiles for {summary['users']} users, "
        f"{summary['completion_tokens']:,} tokens in {summary['seconds']:.0f} s of generation, "
        f"degenerate {100 * summary['degenerate_share']:.1f}% {summary['degenerate_reasons'] or ''}".rstrip()
    ]
    for name, s in summary["per_backbone"].items():
        lines.append(
            f"  {name}: {s['profiles']} profiles, {s['mean_tokens']:.1f} tokens on average, "
            f"distinct-1/2 within user {s['distinct1']:.3f}/{s['distinct2']:.3f}, "
            f"degenerate {100 * s['degenerate_share']:.1f}%, {s['tokens_per_s']:.1f} tok/s"
        )
    across = summary["across"]
    lines.append(f"  all backbones pooled per user: distinct-1/2 {across['distinct1']:.3f}/{across['distinct2']:.3f}")
    return "\n".join(lines)
