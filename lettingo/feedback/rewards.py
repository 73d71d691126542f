"""The `rewards` artifact: f_Rec's verdict on every explored profile (predicted label, P(true label), correct)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lettingo.artifacts import RowWriter
from lettingo.data.schema import LABELS
from lettingo.recommender.base import Recommender
from lettingo.recommender.cases import LABEL_INDEX, RecCase, case_from_sample, predicted_labels

log = logging.getLogger(__name__)

#: Columns the rewards add to the profile rows.
REWARD_COLUMNS: tuple[str, ...] = ("label", "predicted", "p_true", "correct", *(f"p_{label}" for label in LABELS))


def profile_cases(profiles: pd.DataFrame, samples: pd.DataFrame) -> list[RecCase]:
    """One case per profile row: its user's real target and recent items, with the row's text as profile."""
    by_user: Mapping[str, Mapping[str, Any]] = {str(s["user_id"]): s for s in samples.to_dict("records")}
    missing = sorted(set(profiles["user_id"].astype(str)) - set(by_user))
    if missing:
        raise ValueError(f"profiles of users {missing[:5]} have no sample; were they written for another dataset?")
    pairs = zip(profiles["user_id"], profiles["text"], strict=True)
    return [case_from_sample(by_user[str(u)], str(t)) for u, t in pairs]


def reward_frame(profiles: pd.DataFrame, cases: Sequence[RecCase], probabilities: np.ndarray) -> pd.DataFrame:
    """The profile rows with f_Rec's verdict added (see REWARD_COLUMNS)."""
    true = [case.label for case in cases]
    predicted = predicted_labels(probabilities)
    p_true = probabilities[np.arange(len(cases)), [LABEL_INDEX[t] for t in true]]
    columns = {"label": true, "predicted": predicted, "p_true": p_true,
               "correct": [p == t for p, t in zip(predicted, true, strict=True)]}
    columns |= {f"p_{label}": probabilities[:, i] for i, label in enumerate(LABELS)}
    return profiles.reset_index(drop=True).assign(**columns)


def score_profiles(
    recommender: Recommender,
    profiles: pd.DataFrame,
    samples: pd.DataFrame,
    rows: RowWriter,
    users_per_chunk: int = 16,
) -> pd.DataFrame:
    """Score every profile row with f_Rec into the chunked artifact ``rows`` writes; return the rows of ``profiles``.

    Rows the artifact holds already (a killed run, or fewer profiles asked for before) are kept, so only
    the missing ones are scored.

    Rows are scored a chunk of users at a time (all profiles of a user together, so an LLM f_Rec
    reuses the user's prompt prefix); each chunk is appended as soon as it is scored.
    """
    if users_per_chunk < 1:
        raise ValueError(f"users_per_chunk must be at least 1, got {users_per_chunk}")
    pending = rows.missing(profiles)
    users = list(dict.fromkeys(pending["user_id"]))
    with tqdm(total=len(pending), desc=f"{rows.name} ({recommender.name})", unit="profile",
              dynamic_ncols=True) as bar:
        for start in range(0, len(users), users_per_chunk):
            chunk = pending[pending["user_id"].isin(users[start : start + users_per_chunk])]
            cases = profile_cases(chunk, samples)
            rows.append(reward_frame(chunk, cases, recommender.predict(cases)))
            bar.update(len(chunk))
    return rows.finish(profiles, profiles.iloc[:0], lambda table: {"recommender": recommender.name})
