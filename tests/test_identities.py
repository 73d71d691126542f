"""Artifact identities: every config value that can change an artifact is in its fingerprint, nothing that
cannot is, declarations name keys the config has, and new rows upstream give new identities downstream."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

import lettingo.stages
from lettingo.artifacts import (
    PAIRS,
    PROFILES,
    REC_MODEL,
    RESULTS,
    REWARDS,
    SENSITIVITY,
    ArtifactStore,
    adapter_artifact,
    rows_digest,
)
from lettingo.pipeline import run
from lettingo.stages import BY_NAME, check_declarations, declarations
from lettingo.stages.base import DeclarationError, Output, Stage, StageContext
from lettingo.tracking import NullTracker

DPO = adapter_artifact("dpo")
#: On top of `debug=tiny`: a trainable f_Rec whose every training hyperparameter is a node of the config.
LORA = ["debug=tiny", "recommender=llm_lora"]
FREC_HYPERPARAMETERS = ["recommender.training.batch_size=5", "recommender.model.optimizer.lr=0.001",
                        "recommender.training.trainer.max_epochs=7", "recommender.model.lora.r=4",
                        "trainer.precision=bf16-mixed"]
ALIGN_HYPERPARAMETERS = ["align.batch.global_size=4", "align.batch.micro_size=1",
                         "align.method.dpo.module.optimizer.lr=0.01", "align.epochs=3", "align.lora.r=4",
                         "align.precision=bf16-mixed"]


@pytest.fixture
def fingerprints(compose_cfg, tmp_path):
    """Artifact name -> fingerprint under the tiny setup with ``overrides`` (an empty run folder)."""

    def _fingerprints(*overrides: str) -> dict[str, str]:
        cfg = compose_cfg([*LORA, *overrides])
        declared = declarations(cfg)
        store = ArtifactStore(tmp_path / "empty")
        return {name: StageContext(cfg, tmp_path, store, NullTracker(), BY_NAME[d.stage], declared).fingerprint(name)
                for name, d in declared.items()}

    return _fingerprints


@pytest.mark.parametrize("override", FREC_HYPERPARAMETERS)
def test_each_frec_training_hyperparameter_changes_the_model_identity(fingerprints, override) -> None:
    assert fingerprints(override)[REC_MODEL] != fingerprints()[REC_MODEL]


@pytest.mark.parametrize("override", ALIGN_HYPERPARAMETERS)
def test_each_align_hyperparameter_changes_the_adapter_identity(fingerprints, override) -> None:
    changed, base = fingerprints(override), fingerprints()
    assert changed[DPO] != base[DPO]
    assert changed[REC_MODEL] == base[REC_MODEL]


def test_threads_cache_and_display_change_no_identity(fingerprints, tmp_path) -> None:
    assert fingerprints("num_threads=3", f"paths.model_cache={tmp_path / 'elsewhere'}",
                        "trainer.enable_progress_bar=true", "trainer.log_every_n_steps=50") == fingerprints()


def test_a_method_adapter_ignores_the_other_methods(fingerprints) -> None:
    changed, base = fingerprints("align.method.sft.module.optimizer.lr=0.5"), fingerprints()
    assert changed[DPO] == base[DPO] and changed[adapter_artifact("sft")] != base[adapter_artifact("sft")]


def test_the_judge_is_part_of_what_a_reward_depends_on_and_only_then(fingerprints) -> None:
    """Rewards and the test stage's predictions follow the same judge: f_Rec's model under an f_Rec reward, the
    older history (never f_Rec) under the rule reward."""
    judged = ("rewards", "predictions")
    other_model = "recommender.model.model=tiny_random:7"  # another f_Rec: its config and its trained checkpoint
    base, changed = fingerprints("evaluate.reward=p_true"), fingerprints("evaluate.reward=p_true", other_model)
    assert all(changed[name] != base[name] for name in judged)
    rule, rule_changed = fingerprints("evaluate.reward=stated_mean"), fingerprints("evaluate.reward=stated_mean",
                                                                                    other_model)
    assert all(rule_changed[name] == rule[name] != base[name] for name in judged)
    assert all(fingerprints("evaluate.reward=stated_mean", "history.length=50")[name] != rule[name]
               for name in judged)


def test_generation_chunking_is_part_of_the_generated_profiles(fingerprints) -> None:
    changed, base = fingerprints("sampling.users_per_chunk=2"), fingerprints()
    assert changed[PROFILES] != base[PROFILES]
    assert fingerprints("sampling.max_users=5")[PROFILES] == base[PROFILES]  # grows instead


def test_the_real_declarations_name_keys_the_config_has(compose_cfg) -> None:
    for overrides in (["debug=tiny"], LORA, ["experiment=quickstart"], ["experiment=paper_yelp"],
                      ["recommender=llm_served", "sampling=multi"]):
        check_declarations(compose_cfg(overrides))


@pytest.mark.parametrize("output", [Output("x", config=("sampling.nn",)),
                                    Output("x", config=("sampling",), not_identity=("sampling.user_per_chunk",)),
                                    Output("x", config=("sampling",), grows_by=("sampling.max_user",))])
def test_a_mistyped_declaration_fails_in_one_line_naming_the_key(compose_cfg, monkeypatch, output) -> None:
    typo = Stage("typo", run=lambda ctx: {}, needs=(), outputs=lambda cfg: [output])
    monkeypatch.setattr(lettingo.stages, "STAGES", (*lettingo.stages.STAGES, typo))
    with pytest.raises(DeclarationError) as error:
        check_declarations(compose_cfg(["debug=tiny"]))
    key = [*output.config, *output.not_identity, *output.grows_by][-1]
    assert str(error.value).count("\n") == 0 and repr(key) in str(error.value) and "stage typo" in str(error.value)


def test_an_exclusion_outside_the_artifacts_nodes_is_refused(compose_cfg, monkeypatch) -> None:
    stray = Stage("stray", run=lambda ctx: {}, needs=(),
                  outputs=lambda cfg: [Output("x", config=("prompt",), not_identity=("sampling.users_per_chunk",))])
    monkeypatch.setattr(lettingo.stages, "STAGES", (*lettingo.stages.STAGES, stray))
    with pytest.raises(DeclarationError, match="'sampling.users_per_chunk'.*none of its config nodes"):
        check_declarations(compose_cfg(["debug=tiny"]))


def test_an_input_counts_with_its_rows_unless_the_artifact_grows_with_it(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    rows = pd.DataFrame({"user_id": ["a", "b"], "p": [0.1, 0.2]})
    store.write_table(REWARDS, rows, "same")
    before = store.identity({}, (REWARDS,)), store.identity({}, (REWARDS,), grows_with=(REWARDS,))
    store.write_table(REWARDS, pd.concat([rows, rows.assign(user_id="c")]), "same")
    assert store.identity({}, (REWARDS,)) != before[0]
    assert store.identity({}, (REWARDS,), grows_with=(REWARDS,)) == before[1]


def test_the_rows_digest_ignores_row_order_and_reads_nested_cells() -> None:
    frame = pd.DataFrame({"user_id": ["a", "b"], "target": [{"item": 1}, {"item": 2}], "older": [[1, 2], [3]]})
    assert rows_digest(frame) == rows_digest(frame.iloc[::-1])
    assert rows_digest(frame) != rows_digest(frame.assign(older=[[1, 2], [4]]))


def adapter_weights(run_dir: Path) -> dict:
    return load_file(ArtifactStore(run_dir).path(DPO) / "adapter_model.safetensors")


@pytest.mark.slow
def test_growing_the_users_remakes_everything_downstream_as_a_fresh_run(compose_cfg, tiny_model_cache,
                                                                        tmp_path) -> None:
    def pipeline(run_dir: Path, users: int) -> None:
        run(compose_cfg(["debug=tiny", f"paths.model_cache={tiny_model_cache}", "stage=pipeline",
                         f"sampling.max_users={users}", "test.fixed_formats={}"], run_dir))

    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    pipeline(grown, 2)
    pipeline(grown, 3)
    pipeline(fresh, 3)
    a, b = ArtifactStore(grown), ArtifactStore(fresh)
    key = ["user_id", "backbone", "sample_idx"]
    assert a.read_table(PROFILES).sort_values(key)["user_id"].nunique() == 3
    pd.testing.assert_frame_equal(a.read_table(PAIRS), b.read_table(PAIRS))
    assert a.read_json(SENSITIVITY) == b.read_json(SENSITIVITY)
    assert adapter_weights(grown).keys() == adapter_weights(fresh).keys()
    assert all((adapter_weights(grown)[k] == adapter_weights(fresh)[k]).all() for k in adapter_weights(grown))
    results = [json.loads((s.path(RESULTS) / "comparison.json").read_text()) for s in (a, b)]
    assert results[0]["predictions"] == results[1]["predictions"] and results[0]["methods"] == results[1]["methods"]
