"""The structured-config schemas: the real config and every experiment pass; a bad value fails in one line."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.schemas import (
    CONFIG_SCHEMA,
    MAX_NEW_TOKENS,
    ConfigError,
    LettingoConfig,
    check_model_spec,
    compose_config,
    config_object,
    validate_config,
)

FILL_PATH = "dataset.path=/data/not-used-in-this-test"
EXPERIMENTS = ["quickstart", "paper_base", "paper_ml1m", "paper_ml10m", "paper_amazon_books", "paper_yelp"]


def test_default_config_validates(compose_cfg) -> None:
    validate_config(compose_cfg())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_validates(compose_cfg, experiment: str) -> None:
    cfg = compose_cfg([f"experiment={experiment}"])
    if "path" in cfg.dataset.loader:
        cfg = compose_cfg([f"experiment={experiment}", FILL_PATH])
    validate_config(cfg)


def _options() -> list[tuple[str, str]]:
    from pathlib import Path

    from lettingo import CONFIG_DIR

    skip = {"hydra", "sweep", "experiment"}
    return [(g.name, o.stem) for g in sorted(Path(CONFIG_DIR).iterdir()) if g.is_dir() and g.name not in skip
            for o in sorted(g.glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), _options())
def test_every_group_option_validates(compose_cfg, group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}"])
    if "path" in cfg.dataset.loader:
        cfg = compose_cfg([f"{group}={option}", FILL_PATH])
    validate_config(cfg)


@pytest.mark.parametrize("extra", [[], ["experiment=quickstart"], ["experiment=paper_ml1m"], ["recommender=llm_lora"]])
def test_debug_tiny_validates(compose_cfg, extra: list[str]) -> None:
    validate_config(compose_cfg(["debug=tiny", *extra]))


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("sampling.temperature=-1", "sampling.temperature", "-1.0"),
        ("sampling.n=0", "sampling.n", "0"),
        ("sampling.n=many", "sampling.n", "many"),  # a type error, also one line
        ("recommender.model.model=/nope/model", "recommender.model.model", "/nope/model"),
        ("backbone.model=./not/here", "backbone.model", "./not/here"),
        ("pairs.rule=best", "pairs.rule", "best"),
        ("pairs.min_margin=-0.5", "pairs.min_margin", "-0.5"),
        ("bootstrap.confidence=1.5", "bootstrap.confidence", "1.5"),
        ("bootstrap.n_resamples=0", "bootstrap.n_resamples", "0"),
        ("align.methods=[orpo]", "align.methods", "[orpo]"),
        ("align.lora.r=0", "align.lora.r", "0"),
        ("align.batch.global_size=3", "align.batch.global_size", "3"),
        ("align.data.val_fraction=1.0", "align.data.val_fraction", "1.0"),
        ("align.method.sft.examples=pairs", "align.method.sft.examples", "pairs"),
        ("evaluate.users_per_chunk=0", "evaluate.users_per_chunk", "0"),
        ("test.max_users=0", "test.max_users", "0"),
        ("history.recent=0", "history.recent", "0"),
        ("+sampling.temprature=0.5", "sampling.temprature", "0.5"),  # a misspelt key
        ("sampling.temprature=0.5", "sampling.temprature", "0.5"),  # the same without +
        ("seed=abc", "seed", "abc"),
        ("seed=-1", "seed", "-1"),
        ("num_threads=0", "num_threads", "0"),
        ("num_threads=-1", "num_threads", "-1"),
        ("sampling.backbones={}", "sampling.backbones", "{}"),  # Hydra merges it: a no-op, not "no backbone"
        (f"sampling.max_new_tokens={MAX_NEW_TOKENS + 1}", "sampling.max_new_tokens", str(MAX_NEW_TOKENS + 1)),
        ("test.max_new_tokens=100000", "test.max_new_tokens", "100000"),
        ("align.epochs=1.5", "align.epochs", "1.5"),
        ("history.length=[30]", "history.length", "[30]"),
        ("distributed.timeout_s=0", "distributed.timeout_s", "0.0"),
        ("dataset.labels.dislike_max=4.5", "dataset.labels.dislike_max", "4.5"),
        ("prompt.facts.top_k=0", "prompt.facts.top_k", "0"),
        ("+prompt.facts.bottom_k=3", "prompt.facts.bottom_k", "3"),
        ("+seeds=3", "seeds", "3"),  # an unknown top-level key
    ],
)
def test_a_bad_value_fails_in_one_line_naming_key_and_value(override: str, key: str, value: str) -> None:
    _refused([override], key, value)


def _refused(overrides: list[str], key: str, value: str) -> None:
    """Composing and checking ``overrides`` (what the console script does first) fails in one line."""
    with pytest.raises(ConfigError) as caught:
        compose_config(overrides, CONFIG_DIR)
    _one_line(caught.value, key, value)


def _fails_in_one_line(cfg, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(cfg)
    _one_line(caught.value, key, value)


def _one_line(error: ConfigError, key: str, value: str) -> None:
    message = str(error)
    assert message.startswith(f"{key}={value}: "), message
    assert "\n" not in message and len(message.split(": ", 1)[1]) > 0
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("recommender.training.select_by=f1", "recommender.training.select_by", "f1"),
        ("recommender.training.balance=weights", "recommender.training.balance", "weights"),
        ("recommender.training.empty_profile_rate=1.5", "recommender.training.empty_profile_rate", "1.5"),
        ("recommender.training.oracle_profile_rate=0.9", "recommender.training.oracle_profile_rate", "0.9"),  # + 0.3
        ("recommender.training.val_fraction=0", "recommender.training.val_fraction", "0.0"),
        ("recommender.training.n_targets=0", "recommender.training.n_targets", "0"),
        ("+recommender.training.epochs=3", "recommender.training.epochs", "3"),  # trainer.max_epochs is the key
    ],
)
def test_a_trainable_f_rec_training_node_is_checked_before_any_stage(override: str, key: str, value: str) -> None:
    _refused(["recommender=cross_encoder", override], key, value)


def test_empty_recent_rate_is_refused_where_no_training_case_has_a_profile(compose_cfg) -> None:
    # ml1m_reference trains on oracle-fact and empty profiles only (profiles_per_user 0)
    validate_config(compose_cfg(["experiment=ml1m_reference", "recommender.training.empty_recent_rate=0.3"]))
    no_profile = compose_cfg(["experiment=ml1m_reference", "recommender.training.empty_recent_rate=0.3",
                              "recommender.training.oracle_profile_rate=0"])
    _fails_in_one_line(no_profile, "recommender.training.empty_recent_rate", "0.3")


def test_a_zero_shot_f_rec_ignores_a_training_node_it_never_reads(compose_cfg) -> None:
    # debug=tiny swaps in a zero-shot f_Rec; quickstart's recommender.training settings stay, unread
    cfg = compose_cfg(["experiment=quickstart", "debug=tiny"])
    assert not cfg.recommender.trainable and "select_by" not in cfg.recommender.training
    validate_config(cfg)


TRL_OK = ["align.engine=trl", "align.share_prompt=false", "align.val_checks_per_epoch=1"]


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("align.share_prompt=true", "align.share_prompt", "true"),
        ("align.val_checks_per_epoch=2", "align.val_checks_per_epoch", "2"),
        ("align.precision=bf16-mixed", "align.precision", "bf16-mixed"),
    ],
)
def test_the_trl_engine_refuses_the_settings_it_would_ignore(compose_cfg, override: str, key: str,
                                                             value: str) -> None:
    validate_config(compose_cfg(TRL_OK))
    with pytest.raises(ConfigError) as caught:
        validate_config(compose_cfg([*TRL_OK, override]))
    message = str(caught.value)
    assert message.startswith(f"{key}={value}: TRL ") and "\n" not in message, message
    assert message.endswith("engine=trl (dpo by TRL's DPOTrainer) needs share_prompt=false, "
                            "val_checks_per_epoch=1, precision=null"), message
    # Only a preference method trains with TRL; SFT alone trains with Lightning, where they all apply.
    validate_config(compose_cfg([*TRL_OK, override, "align.methods=[sft]"]))
    validate_config(compose_cfg(["align.engine=lightning", override]))


def test_backbone_names_must_differ_across_explore_slots(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"^sampling\.backbones\.gemma3_270m\.name=gemma3_270m: "):
        validate_config(compose_cfg(["sampling=multi", "backbone=gemma3_270m"]))


@pytest.mark.parametrize("spec", ["bundled:smollm2_135m", "bundled:all_minilm_l6_v2", "tiny_random", "tiny_random:3",
                                  "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_model_specs_that_need_no_loading_to_accept(spec: str) -> None:
    check_model_spec("backbone.model", spec)


def test_an_existing_folder_is_a_model_spec(tmp_path) -> None:
    check_model_spec("backbone.model", str(tmp_path))
    with pytest.raises(ConfigError, match="^backbone.model=.*missing: "):
        check_model_spec("backbone.model", str(tmp_path / "missing"))


@pytest.mark.parametrize("spec", ["bundled:", "tiny_random:x", "/abs/missing", "../rel/missing", "a/b/c"])
def test_bad_model_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match=f"^backbone.model={spec}: "):
        check_model_spec("backbone.model", spec)


def test_a_remote_backbone_model_is_a_server_name(compose_cfg) -> None:
    validate_config(compose_cfg(["backbone=openai"]))  # gpt-4o-mini is neither a folder nor a Hub id


def test_the_config_schema_is_in_the_config_store_and_first_in_the_defaults() -> None:
    from pathlib import Path

    from hydra.core.config_store import ConfigStore

    from lettingo import CONFIG_DIR

    assert ConfigStore.instance().repo[f"{CONFIG_SCHEMA}.yaml"].node._metadata.object_type is LettingoConfig
    defaults = OmegaConf.load(Path(CONFIG_DIR) / "config.yaml").defaults
    assert defaults[0] == CONFIG_SCHEMA


def test_schemas_is_a_leaf_module() -> None:
    """Importing it loads no other module of ours and no torch (it runs before anything heavy)."""
    import subprocess
    import sys

    code = "import sys, lettingo.schemas; print(sorted(m for m in sys.modules if m.startswith(('lettingo', 'torch'))))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert loaded.strip() == "['lettingo', 'lettingo.schemas']"


def test_a_batch_that_the_processes_cannot_make_up_fails_before_any_stage() -> None:
    # debug=tiny: 2 pairs per step, 2 per forward; trainer=ddp_cpu: 2 processes, so 4 pairs per forward pass
    _refused(["debug=tiny", "trainer=ddp_cpu"], "align.batch.global_size", "2")
    compose_config(["debug=tiny", "trainer=ddp_cpu", "align.batch.micro_size=1"], CONFIG_DIR)


def test_the_stage_config_object_is_typed_and_checked(compose_cfg) -> None:
    conf = config_object(compose_cfg(["debug=tiny", "sampling.n=5"]))
    assert isinstance(conf, LettingoConfig) and conf.sampling.n == 5 and conf.recommender.training is None
    assert isinstance(conf.trainer, dict) and conf.trainer["_target_"] == "lightning.pytorch.Trainer"
    with pytest.raises(ConfigError, match=r"^sampling\.n=0: "):
        config_object(compose_cfg(["sampling.n=0"]))
