"""The README's extension recipes, done as a user does them: files added to a copy of the config tree and a module
of the user's own, then the real command path (compose, check, run the stages, the report scripts)."""

from __future__ import annotations

import random
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_align_stage import ALIGN, TEST_USERS, hand_made_pairs, write_pairs
from test_reports import load_script

from lettingo import CONFIG_DIR
from lettingo.artifacts import BASELINES, PROFILES, REWARDS, SAMPLES, ArtifactStore, adapter_artifact
from lettingo.data.schema import LABELS, LabelThresholds
from lettingo.evaluation.comparison import read_comparison
from lettingo.evaluation.methods import NO_PROFILE
from lettingo.pipeline import run
from lettingo.reports import local_runs
from lettingo.schemas import ConfigError, compose_with_methods

#: The recipe's method: IPO (Azar et al. 2023), a squared loss on DPO's log-ratio margin, as one module.
IPO_MODULE = '''
"""IPO: the log-ratio margin regressed onto 1 / (2 beta) instead of pushed through a sigmoid."""
import torch

from lettingo.align.dpo import DpoModule


class IpoModule(DpoModule):
    """DPO's data, reference and metrics with the IPO loss."""

    def preference_loss(self, policy: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of (log-ratio margin - 1 / (2 beta))^2; the implicit rewards as DPO's."""
        ratios = policy - reference
        loss = ((ratios[:, 0] - ratios[:, 1] - 1 / (2 * self.beta)) ** 2).mean()
        return loss, (self.beta * ratios).detach()
'''

#: The recipe's YAML: DPO's settings with the module above (and TRL's name for the same loss).
IPO_YAML = """
# IPO (Azar et al. 2023) on the preference pairs.
defaults:
  - dpo
  - _self_

loss_type: [ipo]  # TRL's name for it (align.engine=trl trains it with TRL's DPOTrainer)
module:
  _target_: my_ipo.IpoModule  # the module of this method
"""


@pytest.fixture
def user_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the config tree with the recipe's YAML, and the recipe's module importable."""
    tree = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, tree)
    (tree / "align" / "method" / "ipo.yaml").write_text(textwrap.dedent(IPO_YAML))
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_ipo.py").write_text(IPO_MODULE)
    monkeypatch.syspath_prepend(str(code))
    return tree


def test_a_new_alignment_method_is_one_yaml_and_one_module(user_tree: Path, tmp_path: Path,
                                                           tiny_model_cache: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ["debug=tiny", f"paths.model_cache={tiny_model_cache}", f"paths.run_dir={run_dir}", *ALIGN,
                 *TEST_USERS, "align.methods=[dpo,ipo]"]
    # Found by its name alone: no line in align/default.yaml, no `+` override.
    cfg, added = compose_with_methods([*overrides, "stage=align"], str(user_tree))
    assert added == ["+align/method@align.method.ipo=ipo"]
    assert cfg.align.method.ipo.module._target_ == "my_ipo.IpoModule" and cfg.align.method.ipo.module.beta == 0.1
    write_pairs(cfg, hand_made_pairs(tiny_model_cache))
    summary = run(cfg)
    assert summary["ipo"]["steps"] == summary["dpo"]["steps"] == 2
    weights = {m: load_file(run_dir / adapter_artifact(m) / "adapter_model.safetensors") for m in ("dpo", "ipo")}
    lora_b = [name for name in weights["ipo"] if "lora_B" in name]
    assert lora_b and all(weights["ipo"][name].abs().sum() > 0 for name in lora_b)  # B starts at zero: trained
    assert any(not torch.equal(weights["ipo"][name], weights["dpo"][name]) for name in lora_b)  # its own loss
    run(compose_with_methods([*overrides, "stage=data"], str(user_tree))[0])
    run(compose_with_methods([*overrides, "stage=test"], str(user_tree))[0])
    # In every table: the test stage's comparison and Table 3 (rows from the run's align.methods).
    record = local_runs([run_dir], include_debug=True)[0]
    assert "IPO" in record.intervals() and "IPO" in record.alignment_rows()
    markdown = load_script("table3").build([record], tmp_path / "out")["markdown"].read_text()
    assert "| ml100k \\| IPO " in markdown


def test_a_method_name_without_a_yaml_is_refused_in_one_line(user_tree: Path) -> None:
    with pytest.raises(ConfigError, match="'orpo' has no align.method.orpo node"):
        compose_with_methods(["align.methods=[dpo,orpo]"], str(user_tree))


#: The dataset recipe's loader: the user's CSV in the common interaction schema (lettingo/data/schema.py).
CSV_LOADER = '''
"""My ratings: ratings.csv with user_id, item_id, rating, timestamp, title, genres (`|`-separated)."""
from pathlib import Path

import pandas as pd

from lettingo.data.schema import finalize_interactions


def load_my_ratings(path: str) -> pd.DataFrame:
    """The CSV as the common schema: user_id, item_id, rating, timestamp, title, attributes, text."""
    csv = Path(path) / "ratings.csv"
    frame = pd.read_csv(csv, dtype={"user_id": str, "item_id": str})
    return finalize_interactions(frame.assign(attributes=frame["genres"].str.split("|"), text=""), csv)
'''

#: The dataset recipe's YAML: ML-100K's settings with the loader above, its own labels and one H.
CSV_DATASET_YAML = """
# My ratings from ratings.csv in dataset.path.
defaults:
  - ml100k
  - _self_

name: my_ratings  # dataset name in run folders, tables and W&B
path: null  # REQUIRED: folder holding ratings.csv
loader:
  _target_: my_ratings.load_my_ratings  # returns the common interaction schema
  path: ${dataset.path}
labels:
  like_min: 4.0  # rating >= like_min is `like`
  dislike_max: 2.0  # rating <= dislike_max is `dislike`; between is `neutral`
histories: [30]  # H values the splits serve: every split user has 30 older items
"""

CSV_USERS, CSV_PER_USER, CSV_ITEMS = 14, 45, 60  # 12 split users (tiny: 4 per split) need H + K + 1 = 41 ratings


def write_ratings_csv(folder: Path) -> pd.DataFrame:
    """The user's published file: CSV_PER_USER distinct items per user, in time order, ratings 1 to 5."""
    rng = random.Random(0)
    genres = ("Action", "Comedy", "Drama", "Horror", "Western")
    rows = [{"user_id": f"u{user:02d}", "item_id": f"m{item:03d}", "rating": rng.randint(1, 5),
             "timestamp": 1_000_000 + user * 7 + step * 3_600, "title": f"Film {item}",
             "genres": "|".join(genres[i % len(genres)] for i in (item, item + 2))}
            for user in range(CSV_USERS) for step, item in enumerate(rng.sample(range(CSV_ITEMS), CSV_PER_USER))]
    folder.mkdir(parents=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "ratings.csv", index=False)
    return frame


def test_a_new_dataset_is_one_yaml_and_one_loader(user_tree: Path, tmp_path: Path, tiny_model_cache: Path) -> None:
    (user_tree / "dataset" / "my_ratings.yaml").write_text(textwrap.dedent(CSV_DATASET_YAML))
    (tmp_path / "code" / "my_ratings.py").write_text(CSV_LOADER)
    ratings = write_ratings_csv(tmp_path / "data")
    run_dir = tmp_path / "run"
    overrides = ["debug=tiny", f"paths.model_cache={tiny_model_cache}", f"paths.run_dir={run_dir}",
                 "dataset=my_ratings", f"dataset.path={tmp_path / 'data'}", "stage=data"]
    cfg, _ = compose_with_methods(overrides, str(user_tree))
    assert cfg.dataset.loader._target_ == "my_ratings.load_my_ratings" and cfg.dataset.loader._partial_
    summary = run(cfg)
    assert (summary["interactions"], summary["users"], summary["items"]) == (
        len(ratings), CSV_USERS, ratings["item_id"].nunique())
    assert summary["split_sizes"] == {"profile_train_h30": 4, "rec_train": 4, "test": 4, "unused": 2}
    samples = ArtifactStore(run_dir).read_table(SAMPLES)
    assert sorted(samples["user_id"]) == sorted(set(ratings["user_id"]))
    # Each sample is its user's CSV rows in time order: 30 older, 10 recent, the last one the target.
    thresholds = LabelThresholds(like_min=4.0, dislike_max=2.0)
    for sample in samples.to_dict("records"):
        mine = ratings[ratings["user_id"] == sample["user_id"]].sort_values("timestamp").to_dict("records")
        items = [*sample["older"], *sample["recent"], sample["target"]]
        assert [i["item_id"] for i in items] == [r["item_id"] for r in mine[-41:]]
        target, last = sample["target"], mine[-1]
        assert (target["rating"], target["title"], list(target["attributes"])) == (
            last["rating"], last["title"], last["genres"].split("|"))
        assert target["label"] == thresholds.label(last["rating"])


#: The f_Rec recipe's module: any class with `name` and `predict(cases) -> (n, 3)` probabilities in LABELS order.
RECENT_MEAN_MODULE = '''
"""An f_Rec without a model: the label of the K recent items' mean rating."""
import numpy as np

from lettingo.data.schema import LABELS, LabelThresholds


class RecentMeanRecommender:
    """Probability `confidence` on the label of the recent mean rating, the rest split evenly; reads no profile."""

    def __init__(self, name: str, like_min: float, dislike_max: float, confidence: float = 0.8) -> None:
        self.name = name
        self.thresholds = LabelThresholds(like_min, dislike_max)
        self.confidence = confidence

    def predict(self, cases) -> np.ndarray:
        out = np.full((len(cases), len(LABELS)), (1 - self.confidence) / 2)
        for row, case in enumerate(cases):
            mean = np.mean([item["rating"] for item in case.recent]) if case.recent else 3.0
            out[row, LABELS.index(self.thresholds.label(mean))] = self.confidence
        return out
'''

#: The f_Rec recipe's YAML (the node RecommenderSchema checks: name, trainable, model with a _target_).
RECENT_MEAN_YAML = """
# f_Rec: the label of the K recent items' mean rating (no model, nothing to train).
name: recent_mean  # names this f_Rec in results
trainable: false  # stage train_rec only reports it
model:
  _target_: my_recommender.RecentMeanRecommender
  name: ${recommender.name}
  like_min: ${dataset.labels.like_min}
  dislike_max: ${dataset.labels.dislike_max}
  confidence: 0.8
"""


def expected_probabilities(recent: list, confidence: float = 0.8) -> list[float]:
    """The recipe's rule, written out: `confidence` on the label of the mean recent rating (ML-100K: >= 4 like,
    <= 2 dislike), the rest split evenly."""
    mean = sum(item["rating"] for item in recent) / len(recent)
    label = "like" if mean >= 4.0 else "dislike" if mean <= 2.0 else "neutral"
    return [confidence if name == label else (1 - confidence) / 2 for name in LABELS]


def test_a_new_recommender_is_one_yaml_and_one_class(user_tree: Path, tmp_path: Path,
                                                     tiny_model_cache: Path) -> None:
    (user_tree / "recommender" / "recent_mean.yaml").write_text(textwrap.dedent(RECENT_MEAN_YAML))
    (tmp_path / "code" / "my_recommender.py").write_text(RECENT_MEAN_MODULE)
    run_dir = tmp_path / "run"
    overrides = ["debug=tiny", f"paths.model_cache={tiny_model_cache}", f"paths.run_dir={run_dir}",
                 "recommender=recent_mean", "evaluate.tabular.enabled=false"]
    # The node is the YAML's alone, with debug=tiny too (its tiny LLM reaches only the LLM f_Recs).
    plain, _ = compose_with_methods(["recommender=recent_mean"], str(user_tree))
    keys = {"_target_", "name", "like_min", "dislike_max", "confidence"}
    assert set(plain.recommender.model) == keys
    tiny = overrides
    assert set(compose_with_methods(tiny, str(user_tree))[0].recommender.model) == keys
    summaries = {stage: run(compose_with_methods([*tiny, f"stage={stage}"], str(user_tree))[0])
                 for stage in ("data", "explore", "rec_profiles", "train_rec", "evaluate")}
    assert summaries["train_rec"] == {"recommender": "recent_mean", "trained": False}
    assert summaries["evaluate"]["recommender"] == "recent_mean"
    store = ArtifactStore(run_dir)
    samples = store.read_table(SAMPLES).set_index("user_id")
    # Every explored profile judged by the rule: its user's recent mean rating, whatever the profile says.
    rewards = store.read_table(REWARDS)
    assert len(rewards) == len(store.read_table(PROFILES)) == 9
    for row in rewards.to_dict("records"):
        p = [row[f"p_{label}"] for label in LABELS]
        assert p == pytest.approx(expected_probabilities(list(samples.loc[row["user_id"], "recent"])))
        assert row["reward"] == pytest.approx(p[LABELS.index(row["label"])])  # debug=tiny: reward p_true
    # The baselines table holds its probabilities: one case worked out by hand.
    baselines = read_comparison(run_dir / BASELINES / "comparison.json")
    user = baselines.users[0]
    ratings = [item["rating"] for item in samples.loc[user, "recent"]]
    mean = sum(ratings) / len(ratings)
    label = "like" if mean >= 4.0 else "dislike" if mean <= 2.0 else "neutral"
    hand = np.full(3, 0.1)
    hand[LABELS.index(label)] = 0.8
    assert baselines.probabilities[NO_PROFILE][0] == pytest.approx(list(hand))
    assert all(row == pytest.approx(expected_probabilities(list(samples.loc[u, "recent"])))
               for u, row in zip(baselines.users, baselines.probabilities[NO_PROFILE], strict=True))


#: The prompt recipe's YAML: the LettinGo prompt's facts and settings with a template and request of its own.
GENRE_PROMPT_YAML = """
# A one-sentence profile naming the user's favourite and least favourite genre.
defaults:
  - lettingo
  - _self_

name: genre_sentence  # tags the profiles written with this prompt
template: |  # Jinja; fields are items, facts, stats, preferences, history_len, request
  One viewer's ratings, oldest first:
  {% for item in items %}
  - {{ item }}
  {% endfor %}
  {{ request }}
request: Name, in one sentence, the genre this viewer loves most and the one they avoid.
"""


def test_a_new_prompt_is_one_yaml(user_tree: Path, tmp_path: Path, tiny_model_cache: Path) -> None:
    (user_tree / "prompt" / "genre_sentence.yaml").write_text(textwrap.dedent(GENRE_PROMPT_YAML))
    run_dir = tmp_path / "run"
    overrides = ["debug=tiny", f"paths.model_cache={tiny_model_cache}", f"paths.run_dir={run_dir}",
                 "prompt=genre_sentence"]
    run(compose_with_methods([*overrides, "stage=data"], str(user_tree))[0])
    run(compose_with_methods([*overrides, "stage=explore"], str(user_tree))[0])
    profiles = ArtifactStore(run_dir).read_table(PROFILES)
    assert len(profiles) == 9 and set(profiles["prompt_name"]) == {"genre_sentence"}
    for prompt in profiles["prompt"]:
        assert "One viewer's ratings, oldest first:" in prompt
        assert "the genre this viewer loves most and the one they avoid" in prompt
        assert "Items a user rated" not in prompt  # not the lettingo template
