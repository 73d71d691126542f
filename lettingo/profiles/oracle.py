"""The "oracle facts" profile: the user-fact sentences of the LettinGo prompt, used as the profile text (no LLM).

The sentences are the ones :func:`lettingo.profiles.prompts.build_instruction` puts in the prompt,
computed the same way (:func:`~lettingo.profiles.user_facts.user_facts` over
:func:`~lettingo.profiles.prompts.history_items`), so the row measures what the facts alone tell f_Rec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lettingo.profiles.prompts import history_items
from lettingo.profiles.user_facts import user_facts


def oracle_profile(sample: Mapping[str, Any], history_len: int, facts_cfg: Mapping[str, Any]) -> str:
    """The fact sentences of ``sample``'s last ``history_len`` older items, one per line.

    ``facts_cfg`` is a prompt's ``facts`` node (conf/prompt/lettingo.yaml). Only the older history
    is read, never the recent items or the target. With every fact switched off there is no profile
    to write, which is an error rather than an empty (no-profile) string.
    """
    facts = user_facts(history_items(sample, history_len), facts_cfg)["facts"]
    if not facts:
        raise ValueError("oracle profiles need at least one fact switched on (rating_stats or genre_preferences)")
    return "\n".join(facts)


def oracle_profiles(samples: pd.DataFrame, history_len: int, facts_cfg: Mapping[str, Any]) -> dict[str, str]:
    """User id -> :func:`oracle_profile` of every sample."""
    return {str(s["user_id"]): oracle_profile(s, history_len, facts_cfg) for s in samples.to_dict("records")}
