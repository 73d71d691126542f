"""The `rewards` artifact: f_Rec's verdict on every explored profile (predicted label, P(true label), correct)
and the profile's reward (`evaluate.reward`), the mean over its user's M targets (`evaluate.targets_per_user`).

A profile is judged on its user's last M target windows (`lettingo.data.samples.target_windows`), oldest
first; the last is the real target, whose verdict fills the f_Rec columns (as with one target). Per target:
``correct`` is 1.0 when f_Rec's arg-max is the true label, ``p_true`` its probability of the true label,
``log_p_true`` that probability's log, ``log_p_gain`` that log minus the log with no profile (the same
recent items and target), which cancels each target's difficulty; ``stated_mean`` is a rule on the text
(`lettingo.feedback.rule_reward`) and needs no f_Rec. With an f_Rec every row also keeps each target's true
label, predicted label and label probabilities (PER_TARGET_COLUMNS), so any metric over users x targets can be
computed from the artifact alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lettingo.artifacts import RowWriter
from lettingo.data.schema import LABELS
from lettingo.evaluation.reward_table import RULE_COLUMN
from lettingo.feedback.rule_reward import stated_mean_reward, user_mean
from lettingo.recommender.base import Recommender
from lettingo.recommender.cases import (
    LABEL_INDEX,
    RecCase,
    case_from_sample,
    label_codes,
    predicted_labels,
    target_cases,
)
from lettingo.schemas import REWARD_NAMES

log = logging.getLogger(__name__)

#: Columns the rewards add to the profile rows when f_Rec scores them (those of the real target).
REWARD_COLUMNS: tuple[str, ...] = ("label", "predicted", "p_true", "correct", *(f"p_{label}" for label in LABELS))
#: The reward and the per-target columns every scored row gets (`target_p_true` only with an f_Rec,
#: `target_p_true_empty` only with ``log_p_gain``): the contract of pairs and alignment.
TARGET_COLUMNS: tuple[str, ...] = ("reward", "target_rewards", "target_p_true", "target_p_true_empty")
#: Per-target verdicts every row f_Rec scores gets, one entry per target (oldest first, the real target last): the
#: true label, f_Rec's arg-max label, and its probabilities (a list of one [p per label, LABELS order] per target).
PER_TARGET_COLUMNS: tuple[str, ...] = ("target_labels", "target_predicted", "target_probabilities")
#: The rule reward, the one that needs no f_Rec.
RULE_REWARD = "stated_mean"
#: The smallest probability a log reward sees (an f_Rec certain it is wrong would give -inf).
P_FLOOR = 1e-6


def user_samples(profiles: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Mapping[str, Any]]:
    """User id -> sample of every user with a profile row; an error naming users without a sample."""
    by_user: dict[str, Mapping[str, Any]] = {str(s["user_id"]): s for s in samples.to_dict("records")}
    missing = sorted(set(profiles["user_id"].astype(str)) - set(by_user))
    if missing:
        raise ValueError(f"profiles of users {missing[:5]} have no sample; were they written for another dataset?")
    return by_user


def profile_cases(profiles: pd.DataFrame, samples: pd.DataFrame) -> list[RecCase]:
    """One case per profile row: its user's real target and recent items, with the row's text as profile."""
    by_user = user_samples(profiles, samples)
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


def true_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(true label) of each (row, target): ``probabilities`` is (rows, M, 3), ``labels`` (rows, M) label indices."""
    return np.take_along_axis(probabilities, labels[..., None], axis=-1)[..., 0]


def per_target_rewards(reward: str, probabilities: np.ndarray, labels: np.ndarray,
                       empty: np.ndarray | None = None) -> np.ndarray:
    """The f_Rec reward of each (row, target) from its probabilities (rows, M, 3) and true labels (rows, M);
    ``empty`` holds the no-profile probabilities ``log_p_gain`` needs."""
    p_true = true_probabilities(probabilities, labels)
    if reward == "correct":
        return (probabilities.argmax(axis=-1) == labels).astype(float)
    if reward == "p_true":
        return p_true
    log_p = np.log(np.maximum(p_true, P_FLOOR))
    if reward == "log_p_true":
        return log_p
    if reward == "log_p_gain" and empty is not None:
        return log_p - np.log(np.maximum(true_probabilities(empty, labels), P_FLOOR))
    raise ValueError(f"evaluate.reward={reward}: no f_Rec reward of that name (or log_p_gain without "
                     "its no-profile probabilities)")


def rule_rewards(chunk: pd.DataFrame, by_user: Mapping[str, Mapping[str, Any]], history: int | None) -> np.ndarray:
    """The stated-mean rule reward of each profile row, as a (rows, 1) array (one target: the text itself)."""
    if history is None or "degenerate" not in chunk:
        raise ValueError("the stated_mean reward needs history= (H, the older items the prompt shows) and the "
                         "profiles' `degenerate` column")
    means = {user: user_mean(by_user[user], history) for user in set(chunk["user_id"].astype(str))}
    rows = zip(chunk["user_id"].astype(str), chunk["text"], chunk["degenerate"], strict=True)
    return np.array([[stated_mean_reward(str(text), means[user], bool(bad))] for user, text, bad in rows])


def target_verdicts(row_cases: Sequence[Sequence[RecCase]], probabilities: np.ndarray) -> dict[str, list]:
    """PER_TARGET_COLUMNS of each row from its M cases and f_Rec's probabilities, (rows, M, 3): lists of plain
    labels and floats."""
    flat = probabilities.reshape(-1, len(LABELS))
    predicted = np.asarray(predicted_labels(flat)).reshape(probabilities.shape[:2])
    return {"target_labels": [[case.label for case in cases] for cases in row_cases],
            "target_predicted": predicted.tolist(), "target_probabilities": probabilities.tolist()}


def judged_frame(recommender: Recommender, chunk: pd.DataFrame, row_cases: Sequence[Sequence[RecCase]],
                 by_user: Mapping[str, Mapping[str, Any]], reward: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The rows of ``chunk`` with f_Rec's verdict on the real target and the per-target probabilities, and the
    per-target f_Rec rewards (None for the rule reward).

    Every row's M cases, and with ``log_p_gain`` each user's M no-profile cases, go to f_Rec in one batch.
    """
    targets = len(row_cases[0])
    users = list(dict.fromkeys(chunk["user_id"].astype(str))) if reward == "log_p_gain" else []
    flat = [case for cases in row_cases for case in cases]
    empty_cases = [case for user in users for case in target_cases(by_user[user], "", targets)]
    predicted = np.asarray(recommender.predict(flat + empty_cases))
    probabilities = predicted[: len(flat)].reshape(len(chunk), targets, len(LABELS))
    labels = label_codes(flat).reshape(len(chunk), targets)
    frame = reward_frame(chunk, [cases[-1] for cases in row_cases], probabilities[:, -1])
    frame = frame.assign(target_p_true=list(true_probabilities(probabilities, labels)),
                         **target_verdicts(row_cases, probabilities))
    empty = None
    if users:
        rows_user = [users.index(user) for user in chunk["user_id"].astype(str)]
        empty = predicted[len(flat) :].reshape(len(users), targets, len(LABELS))[rows_user]
        frame = frame.assign(target_p_true_empty=list(true_probabilities(empty, labels)))
    return frame, None if reward == RULE_REWARD else per_target_rewards(reward, probabilities, labels, empty)


def score_chunk(recommender: Recommender | None, chunk: pd.DataFrame, by_user: Mapping[str, Mapping[str, Any]],
                reward: str, targets: int, history: int | None) -> pd.DataFrame:
    """The rows of one chunk with f_Rec's verdicts (when ``recommender``) and their rewards (TARGET_COLUMNS)."""
    chunk = chunk.reset_index(drop=True)
    row_cases = [target_cases(by_user[str(u)], str(t), targets)
                 for u, t in zip(chunk["user_id"], chunk["text"], strict=True)]
    if recommender is None:
        if reward != RULE_REWARD:
            raise ValueError(f"evaluate.reward={reward} needs an f_Rec")
        frame, rewards = chunk.assign(label=[cases[-1].label for cases in row_cases]), None
    else:
        frame, rewards = judged_frame(recommender, chunk, row_cases, by_user, reward)
    guarded = history is not None and "degenerate" in chunk
    rule = rule_rewards(chunk, by_user, history) if reward == RULE_REWARD or guarded else None
    if rewards is None:
        rewards = rule
    frame = frame.assign(reward=rewards.mean(axis=1), target_rewards=list(rewards))
    return frame if rule is None else frame.assign(**{RULE_COLUMN: rule[:, 0]})


def score_profiles(
    recommender: Recommender | None,
    profiles: pd.DataFrame,
    samples: pd.DataFrame,
    rows: RowWriter,
    users_per_chunk: int = 16,
    *,
    reward: str = "correct",
    targets: int = 1,
    history: int | None = None,
) -> pd.DataFrame:
    """Score every profile row into the chunked artifact ``rows`` writes; return the rows of ``profiles``.

    Each row gets f_Rec's verdict on its real target (REWARD_COLUMNS; none when ``recommender`` is None,
    which only the rule reward allows) and ``reward``, the mean of ``target_rewards`` (per target, M =
    ``targets``; one value for the rule), with ``target_p_true`` (and ``target_p_true_empty`` for
    ``log_p_gain``) and, with an f_Rec, PER_TARGET_COLUMNS. ``history`` (H) is the older history whose mean
    rating the rule checks; given it (and the rows' ``degenerate``), every row also gets the rule's reward
    (RULE_COLUMN), whatever ``reward``.

    Rows the artifact holds already (a killed run, or fewer profiles asked for before) are kept, so only
    the missing ones are scored.

    Rows are scored a chunk of users at a time (all profiles of a user together, so an LLM f_Rec
    reuses the user's prompt prefix); each chunk is appended as soon as it is scored.
    """
    if users_per_chunk < 1:
        raise ValueError(f"users_per_chunk must be at least 1, got {users_per_chunk}")
    if reward not in REWARD_NAMES or targets < 1:
        raise ValueError(f"reward={reward}, targets={targets}: the reward is one of {', '.join(REWARD_NAMES)} "
                         "and targets at least 1")
    by_user = user_samples(profiles, samples)
    pending = rows.missing(profiles)
    users = list(dict.fromkeys(pending["user_id"]))
    scorer = RULE_REWARD if recommender is None else recommender.name
    with tqdm(total=len(pending), desc=f"{rows.name} ({scorer})", unit="profile", dynamic_ncols=True) as bar:
        for start in range(0, len(users), users_per_chunk):
            chunk = pending[pending["user_id"].isin(users[start : start + users_per_chunk])]
            rows.append(score_chunk(recommender, chunk, by_user, reward, targets, history))
            bar.update(len(chunk))
    return rows.finish(profiles, profiles.iloc[:0], lambda table: {"recommender": scorer, "reward": reward,
                                                                    "targets_per_user": targets})
