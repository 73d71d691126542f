"""Exploration: every backbone samples N profiles per user, written to a resumable chunked artifact.

One row per (user, backbone, sample, prompt, H), see :data:`PROFILE_COLUMNS`. Rows are appended one
chunk per generate call, so a killed run keeps what it wrote and a rerun with the same inputs
generates only the missing rows. Sample ``j`` of a prompt depends only on (prompt, j, backbone
seed), so the resumed rows are the ones an uninterrupted run would have written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from lettingo.artifacts import RowWriter
from lettingo.llm.base import GenerationBackend
from lettingo.profiles.prompts import build_instruction, listed_texts
from lettingo.profiles.quality import degenerate_reason
from lettingo.seeding import derive_seed

log = logging.getLogger(__name__)

PROFILE_COLUMNS: tuple[str, ...] = (
    "user_id", "split", "backbone", "sample_idx", "prompt_name", "history_len", "prompt",
    "text", "prompt_tokens", "completion_tokens", "seconds", "seed", "degenerate",
)
#: The columns that identify a profile row; an artifact never holds two rows with the same key.
KEY: tuple[str, ...] = ("user_id", "backbone", "sample_idx", "prompt_name", "history_len")


def explore_split_samples(samples: pd.DataFrame, splits: Sequence[str]) -> pd.DataFrame:
    """The samples of ``splits`` (`sampling.splits`); an unknown split name is an error."""
    known = set(samples["split"])
    unknown = sorted(set(splits) - known)
    if unknown:
        raise ValueError(f"sampling.splits names unknown splits {unknown}; the samples have {sorted(known)}")
    return samples[samples["split"].isin(splits)]


def select_users(samples: pd.DataFrame, max_users: int | None) -> pd.DataFrame:
    """The first ``max_users`` samples of each split, in the frame's order (all when None, none when 0)."""
    if max_users is not None and max_users < 0:
        raise ValueError(f"max_users must be at least 0 or None, got {max_users}")
    if samples["user_id"].duplicated().any():
        raise ValueError("samples hold a user twice; explore expects one row per user")
    if max_users is None:
        return samples.reset_index(drop=True)
    return samples.groupby("split", sort=False).head(max_users).reset_index(drop=True)


def explore(
    samples: pd.DataFrame,
    backends: Mapping[str, GenerationBackend],
    prompt_cfg: Mapping[str, Any],
    item_text_cfg: Mapping[str, Any],
    history_len: int,
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    rows: RowWriter,
    max_users: int | None = None,
    users_per_chunk: int = 8,
) -> pd.DataFrame:
    """Sample ``n`` profiles per user (at most ``max_users`` per split) from every backend.

    ``samples`` is the samples frame (one row per user, with ``split``). Each backend gets its
    users' prompts sorted by length, ``users_per_chunk`` prompts per generate call, and each call's
    rows become one chunk of the artifact ``rows`` writes. A backend is looked up in ``backends`` only
    when it has rows to write, so a lazy mapping loads nothing for a finished artifact. Rows the
    artifact holds already (written for its identity: everything a row depends on except which users
    and how many samples are asked for) are kept, so asking for more users or samples generates only
    the new rows. Returns the requested rows in user, backend, sample order.
    """
    if users_per_chunk < 1:
        raise ValueError(f"users_per_chunk must be at least 1, got {users_per_chunk}")
    users = select_users(samples, max_users)
    prompt_name = str(prompt_cfg["name"])
    records = users.to_dict("records")
    instructions = {row["user_id"]: build_instruction(row, prompt_cfg, history_len, item_text_cfg) for row in records}
    # What an echo copies: the item lines, not the facts (a profile restating those is informative).
    histories = {row["user_id"]: "\n".join(listed_texts(row, prompt_cfg, history_len, item_text_cfg))
                 for row in records}
    splits = dict(zip(users["user_id"], users["split"], strict=True))
    began, generated = time.perf_counter(), 0
    for name in backends:

        def missing(user: str, j: int, backbone: str = name) -> bool:
            return not rows.has((user, backbone, j, prompt_name, history_len))

        pending = [u for u in instructions if any(missing(u, j) for j in range(n))]
        if not pending:
            continue
        backend = backends[name]
        rendered = {u: backend.render(instructions[u]) for u in pending}
        pending.sort(key=lambda u: backend.count_tokens(rendered[u]))
        bseed = derive_seed(seed, name)
        with _ProgressBar(f"explore {name}", total=len(pending) * n) as bar:
            for start in range(0, len(pending), users_per_chunk):
                chunk = pending[start : start + users_per_chunk]
                outputs = backend.generate(
                    [rendered[u] for u in chunk], n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                    seed=bseed, progress=bar.update,
                )
                made = [
                    {
                        "user_id": u, "split": splits[u], "backbone": name, "sample_idx": j,
                        "prompt_name": prompt_name, "history_len": history_len, "prompt": rendered[u],
                        "text": g.text, "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                        "seconds": g.seconds, "seed": bseed, "degenerate": degenerate_reason(g.text, histories[u]),
                    }
                    for u, samples_of_user in zip(chunk, outputs, strict=True)
                    for j, g in enumerate(samples_of_user)
                    if missing(u, j)
                ]
                rows.append(pd.DataFrame(made, columns=list(PROFILE_COLUMNS)))
                generated += len(made)
    wanted = pd.DataFrame([(u, b, j, prompt_name, history_len) for u in instructions for b in backends
                           for j in range(n)], columns=list(KEY))
    kept = rows.finish(wanted, pd.DataFrame(columns=list(PROFILE_COLUMNS)), lambda table: {
        "users": int(table["user_id"].nunique()), "backbones": sorted(set(table["backbone"]))})
    frame = _ordered(kept, users, list(backends))
    log.info(
        "%s: %d rows (%d generated now, %d resumed) in %.1f s",
        rows.name, len(frame), generated, len(frame) - generated, time.perf_counter() - began,
    )
    return frame


def _ordered(frame: pd.DataFrame, users: pd.DataFrame, backbones: Sequence[str]) -> pd.DataFrame:
    """``frame`` sorted by the users' order, then backbone order, then sample index."""
    user_rank = {u: i for i, u in enumerate(users["user_id"])}
    backbone_rank = {b: i for i, b in enumerate(backbones)}
    ranks = pd.DataFrame({"u": frame["user_id"].map(user_rank), "b": frame["backbone"].map(backbone_rank)})
    order = ranks.assign(j=frame["sample_idx"].to_numpy()).sort_values(["u", "b", "j"], kind="stable").index
    return frame.loc[order].reset_index(drop=True)


class _ProgressBar:
    """A tqdm bar over profiles whose postfix shows decoded tokens per second."""

    def __init__(self, description: str, total: int) -> None:
        self.bar = tqdm(total=total, desc=description, unit="profile", dynamic_ncols=True)
        self.tokens = 0
        self.began = time.perf_counter()

    def update(self, sequences: int, new_tokens: int) -> None:
        """The backend's progress callback: ``sequences`` finished, ``new_tokens`` decoded."""
        self.tokens += new_tokens
        self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.began, 1e-9):.1f}", refresh=False)
        self.bar.update(sequences)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()
