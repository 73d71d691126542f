"""Exploration on `tiny_random`: rows line up with users, resume after a kill, seeds, quality checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from lettingo import pipeline
from lettingo.artifacts import PROFILES, SAMPLES, ArtifactStore, MissingArtifact, fingerprint
from lettingo.llm.base import Generation, GenerationBackend
from lettingo.llm.local import LocalBackend
from lettingo.profiles.explore import KEY, PROFILE_COLUMNS, explore
from lettingo.profiles.prompts import build_instruction
from lettingo.profiles.quality import degenerate_reason, distinct_n, summarize_profiles

H = 4
PROMPT_CFG = {
    "name": "lettingo",
    "template": "{% for item in items %}{{ item }}\n{% endfor %}{% for f in facts %}{{ f }}\n{% endfor %}{{ request }}",
    "request": "Profile?",
    "facts": {"rating_stats": True, "genre_preferences": True, "attribute_label": "genres",
              "min_support": 1, "top_k": 1},
}
ITEM_TEXT = {"max_chars": 60, "review_chars": 0}
GENRES = ["Drama", "Comedy", "Horror", "War", "Musical"]
LABELS = ["dislike", "dislike", "neutral", "like", "like"]  # of ratings 1..5


def make_samples(users: int, split: str = "profile_train_h30", first: int = 0) -> pd.DataFrame:
    """Users whose histories differ, so every user's prompt differs."""
    rows = []
    for u in range(first, first + users):
        older = [
            {"item_id": f"{u}-{i}", "rating": float(1 + (u + i) % 5), "timestamp": i, "title": f"Film {u * 7 + i}",
             "attributes": [GENRES[(u + i) % 5]], "text": "", "label": LABELS[(u + i) % 5]}
            for i in range(H + u % 3)
        ]
        rows.append({"user_id": f"u{u}", "older": older, "split": split})
    return pd.DataFrame(rows)


class Recording(GenerationBackend):
    """Delegates to a real backend, records the prompts of every generate call, optionally dies."""

    def __init__(self, inner: GenerationBackend, die_after_calls: int | None = None) -> None:
        self.inner, self.name, self.die_after_calls = inner, inner.name, die_after_calls
        self.calls: list[list[str]] = []

    def render(self, instruction: str) -> str:
        return self.inner.render(instruction)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def generate(self, prompts: Sequence[str], **kwargs) -> list[list[Generation]]:
        if self.die_after_calls is not None and len(self.calls) >= self.die_after_calls:
            raise KeyboardInterrupt("killed")
        self.calls.append(list(prompts))
        return self.inner.generate(prompts, **kwargs)


class Scripted(GenerationBackend):
    """Sample j of a prompt: its item lines (an echo), nothing, its fact sentences, a real profile."""

    name = "scripted"

    def render(self, instruction: str) -> str:
        return instruction

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], n: int = 1, **kwargs) -> list[list[Generation]]:
        def texts(prompt: str) -> list[str]:
            lines = prompt.splitlines()
            facts = [line for line in lines if line.startswith(("Average rating", "Highest", "Lowest"))]
            items = [line for line in lines if line.startswith("Film")]
            return ["\n".join(items), "", " ".join(facts), "Enjoys dramas, avoids horror, rates generously."]

        return [[Generation(t, 1, 1, 0.0) for t in texts(p)[:n]] for p in prompts]


class Untouchable(dict):
    """A backend mapping that fails when a backend is looked up (a finished artifact needs none)."""

    def __getitem__(self, name: str) -> GenerationBackend:
        raise AssertionError(f"backend {name} was loaded")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, LocalBackend]:
    cache = tmp_path_factory.mktemp("models")
    return {
        "tiny_a": LocalBackend("tiny_a", "tiny_random:0", cache, batch_size=8),
        "tiny_b": LocalBackend("tiny_b", "tiny_random:1", cache, batch_size=8),
    }


def run(samples, backends, store_dir: Path, seed: int = 0, **kwargs) -> pd.DataFrame:
    settings = {"n": 3, "temperature": 1.0, "max_new_tokens": 6, "seed": seed, "users_per_chunk": 2} | kwargs
    # The artifact's identity: what a row depends on, not how many users and samples are asked for.
    identity = {k: v for k, v in settings.items() if k not in ("n", "max_users", "users_per_chunk")}
    rows = ArtifactStore(store_dir).rows("profiles", fingerprint(identity | {"history_len": H}), KEY)
    return explore(samples, backends, PROMPT_CFG, ITEM_TEXT, H, rows=rows, **settings)


def test_rows_line_up_with_their_users(tiny, tmp_path) -> None:
    samples = make_samples(5)
    frame = run(samples, tiny, tmp_path)
    assert list(frame.columns) == list(PROFILE_COLUMNS)
    assert len(frame) == 5 * 2 * 3 and not frame.duplicated(list(KEY)).any()
    assert frame["user_id"].tolist() == [u for u in samples["user_id"] for _ in range(2 * 3)]
    assert frame["sample_idx"].tolist() == [0, 1, 2] * 10
    for row in frame.itertuples():
        backend = tiny[row.backbone]
        sample = samples.set_index("user_id").loc[row.user_id].to_dict() | {"user_id": row.user_id}
        assert row.prompt == backend.render(build_instruction(sample, PROMPT_CFG, H, ITEM_TEXT))
        assert row.prompt_tokens == backend.count_tokens(row.prompt)
    # The batch a prompt was sampled in does not matter: each user alone gets the same texts.
    alone = tiny["tiny_a"].generate([frame["prompt"][0]], n=3, temperature=1.0, max_new_tokens=6,
                                    seed=int(frame["seed"][0]))
    assert [g.text for g in alone[0]] == frame["text"][:3].tolist()


def test_resume_after_kill_generates_only_missing_rows(tiny, tmp_path) -> None:
    samples = make_samples(7)
    uninterrupted = run(samples, tiny, tmp_path / "whole")

    dying = {name: Recording(b, die_after_calls=2 if name == "tiny_b" else None) for name, b in tiny.items()}
    with pytest.raises(KeyboardInterrupt):
        run(samples, dying, tmp_path / "killed")
    store = ArtifactStore(tmp_path / "killed")
    written = store.read_table("profiles")
    assert len(written) == 7 * 3 + 2 * 2 * 3  # tiny_a finished, tiny_b wrote two chunks of two users
    assert len(store.chunk_paths("profiles")) == 4 + 2 and store.meta("profiles") is None

    again = {name: Recording(b) for name, b in tiny.items()}
    resumed = run(samples, again, tmp_path / "killed")
    assert again["tiny_a"].calls == []
    assert sum(len(c) for c in again["tiny_b"].calls) == 3  # only the three users tiny_b had not reached
    assert not resumed.duplicated(list(KEY)).any()
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), uninterrupted.drop(columns="seconds"))

    # Finished: a rerun loads no backend; another seed is another artifact, regenerated whole.
    pd.testing.assert_frame_equal(run(samples, Untouchable(tiny), tmp_path / "killed"), resumed)
    reseeded = {name: Recording(b) for name, b in tiny.items()}
    run(samples, reseeded, tmp_path / "killed", seed=1)
    assert all(sum(len(c) for c in r.calls) == 7 for r in reseeded.values())


def test_same_seed_same_profiles_other_seed_other_profiles(tiny, tmp_path) -> None:
    samples = make_samples(3)
    first = run(samples, tiny, tmp_path / "a", seed=7)
    second = run(samples, tiny, tmp_path / "b", seed=7, users_per_chunk=3)
    other = run(samples, tiny, tmp_path / "c", seed=8)
    assert first["text"].tolist() == second["text"].tolist()
    assert first["text"].tolist() != other["text"].tolist()
    # The backbones draw from different seeds derived from the run seed.
    assert first.groupby("backbone")["seed"].nunique().eq(1).all() and first["seed"].nunique() == 2


def test_max_users_per_split(tiny, tmp_path) -> None:
    samples = pd.concat([make_samples(4, "profile_train_h30"), make_samples(3, "test", first=10)], ignore_index=True)
    frame = run(samples, {"tiny_a": tiny["tiny_a"]}, tmp_path, n=1, max_users=2)
    assert frame.groupby("split")["user_id"].unique().map(list).to_dict() == {
        "profile_train_h30": ["u0", "u1"], "test": ["u10", "u11"]
    }
    assert run(samples, tiny, tmp_path / "none", max_users=0).empty  # nobody explored: an empty table
    with pytest.raises(ValueError, match="max_users"):
        run(samples, tiny, tmp_path / "bad", max_users=-1)


def test_degenerate_flags_land_on_their_rows(tmp_path) -> None:
    frame = run(make_samples(3), {"scripted": Scripted()}, tmp_path, n=4)
    assert frame["degenerate"].tolist() == ["echo", "empty", "", ""] * 3  # restating the facts is no echo
    assert frame["text"][0].startswith("Film 0") and frame["text"][4].startswith("Film 8")  # u1: last H of 5 items


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("  \n\t", "empty"),
        ("!!! ...", "empty"),
        ("the the the the the the the the the the", "repetition"),
        ("I like it. I like it. I like it. I like it.", "repetition"),
        ("Film 1 | Drama | rated 4 (like) Film 2 | Comedy | rated 2 (dislike)", "echo"),
        ("Loves dramas and war films, dislikes horror; rates generously, mostly 4 stars. Film 1 stood out.", ""),
        ("Likes drama.", ""),
    ],
)
def test_degenerate_flags(text: str, reason: str) -> None:
    history = "Film 1 | Drama | rated 4 (like)\nFilm 2 | Comedy | rated 2 (dislike)"
    assert degenerate_reason(text, history) == reason


def test_distinct_n_hand_computed() -> None:
    assert distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)  # n-grams never span two texts
    assert distinct_n(["a"], 2) == 0.0


def test_summary_values() -> None:
    frame = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u1"], "backbone": ["a", "a", "a", "b"],
        "text": ["x y", "x z", "", "x y"], "completion_tokens": [2, 4, 0, 6], "prompt_tokens": [10, 10, 20, 10],
        "seconds": [1.0, 1.0, 2.0, 3.0], "degenerate": ["", "", "empty", ""],
    })
    summary = summarize_profiles(frame)
    a = summary["per_backbone"]["a"]
    assert (a["profiles"], a["users"], a["completion_tokens"], a["seconds"]) == (3, 2, 6, 4.0)
    assert a["mean_tokens"] == pytest.approx(2.0) and a["degenerate_share"] == pytest.approx(1 / 3)
    assert a["distinct1"] == pytest.approx((3 / 4 + 0.0) / 2)  # u1: x y x z; u2: no tokens
    assert summary["across"]["distinct1"] == pytest.approx((3 / 6 + 0.0) / 2)  # u1 pooled over a and b
    assert summary["degenerate_reasons"] == {"empty": 1} and summary["profiles"] == 4


def metrics(run_dir: Path) -> dict[str, float]:
    """The last value of every metric the csv logger wrote."""
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    return dict(zip(frame["key"], frame["value"], strict=True))


def test_stage_on_ml100k_with_tiny_random(compose_cfg, tiny_model_cache) -> None:
    def compose(*overrides: str):
        return compose_cfg(["debug=tiny", "logger=csv", f"paths.model_cache={tiny_model_cache}",
                            "sampling.max_users=2", "sampling.n=2", "sampling.max_new_tokens=4", *overrides])

    pipeline.run(compose("stage=data"))
    cfg = compose("stage=explore")
    result = pipeline.run(cfg)
    summary = result["splits"]["profile_train_h30"]
    assert summary["profiles"] == 4 and summary["per_backbone"]["tiny_random"]["users"] == 2
    run_dir = Path(cfg.paths.run_dir)
    assert result["artifact"] == str(run_dir / PROFILES)
    frame = ArtifactStore(run_dir).read_table(PROFILES)
    assert set(frame["split"]) == {"profile_train_h30"} and set(frame["history_len"]) == {30}
    assert frame["prompt"].str.contains("30. ").all()
    logged = metrics(run_dir)
    assert logged["explore/profile_train/profiles"] == 4  # keyed by the split's role: no H in a metric name
    backbones = pd.read_csv(run_dir / "logs" / "tables" / "explore__backbones.csv")
    assert backbones[["split", "backbone", "users"]].values.tolist() == [["profile_train_h30", "tiny_random", 2]]
    assert "distinct2" in backbones
    shown = pd.read_csv(run_dir / "logs" / "tables" / "explore__samples.csv")
    assert list(shown.columns) == ["user_id", "backbone", "text", "degenerate"]


def test_stage_rejects_unknown_split(compose_cfg, tiny_model_cache) -> None:
    def compose(*overrides: str):
        return compose_cfg(["debug=tiny", f"paths.model_cache={tiny_model_cache}", *overrides])

    pipeline.run(compose("stage=data"))
    with pytest.raises(ValueError, match="unknown splits"):
        pipeline.run(compose("stage=explore", "sampling.splits=[nope]"))


def test_stage_without_samples_names_the_data_stage(compose_cfg, tiny_model_cache) -> None:
    cfg = compose_cfg(["stage=explore", "debug=tiny", f"paths.model_cache={tiny_model_cache}"])
    with pytest.raises(MissingArtifact, match=f"no finished '{SAMPLES}'.*stage=data"):
        pipeline.run(cfg)


@pytest.mark.slow
def test_stage_multi_with_bundled_models(compose_cfg) -> None:
    overrides = ["logger=none", "sampling=multi", "sampling.max_users=2", "sampling.n=2", "sampling.max_new_tokens=12"]
    pipeline.run(compose_cfg(["stage=data", *overrides]))
    cfg = compose_cfg(["stage=explore", *overrides])
    summary = pipeline.run(cfg)["splits"]["profile_train_h30"]
    assert summary["profiles"] == 2 * 2 * 2
    assert set(summary["per_backbone"]) == {"smollm2_135m", "gemma3_270m"}
    frame = ArtifactStore(cfg.paths.run_dir).read_table(PROFILES)
    assert frame["prompt"][frame["backbone"] == "smollm2_135m"].str.contains("<|im_start|>assistant", regex=False).all()
    assert frame["prompt"][frame["backbone"] == "gemma3_270m"].str.endswith("User profile:\n").all()
