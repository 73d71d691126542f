"""Every primary config, every file of every group and every experiment composes and resolves,
and every `_target_` in them names an importable object, so configs cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lettingo import CONFIG_DIR
from lettingo.schemas import ConfigError, validate_config

CONF = Path(CONFIG_DIR)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
REQUIRED_GROUPS = ["align", "backbone", "dataset", "debug", "evaluate", "experiment", "history", "logger", "paths",
                   "prompt", "recommender", "sampling", "test", "trainer"]
# Values the user must supply (`???`) for the datasets that cannot be shipped.
FILL_REQUIRED = ["dataset.path=/data/not-used-in-this-test"]
EXTERNAL_DATASETS = ["ml10m", "amazon_books", "yelp"]


def group_options(group: str) -> list[str]:
    """Option names of a config group (file stems, nested folders excluded)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def targets(node: object) -> list[str]:
    """Every `_target_` string in a config tree."""
    found: list[str] = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node._get_node(key)._value() if key != "_target_" else node[key]
            if key == "_target_":
                found.append(str(value))
            else:
                found.extend(targets(node[key]) if isinstance(node[key], DictConfig | ListConfig) else [])
    elif isinstance(node, ListConfig):
        for item in node:
            found.extend(targets(item))
    return found


def test_every_required_group_exists_with_files() -> None:
    for group in REQUIRED_GROUPS:
        assert group_options(group), f"conf/{group}/ has no config"


def check_resolves(cfg: DictConfig) -> None:
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    for target in targets(cfg):
        assert callable(get_object(target)), target


def test_primary_config_composes(compose_cfg) -> None:
    cfg = compose_cfg()
    check_resolves(cfg)
    assert cfg.stage == "pipeline" and cfg.debug_setup is None


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS if g != "experiment" for o in group_options(g)]
)
def test_every_group_option_composes(compose_cfg, group: str, option: str) -> None:
    check_resolves(compose_filled(compose_cfg, [f"{group}={option}"]))


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_composes(compose_cfg, option: str) -> None:
    cfg = compose_filled(compose_cfg, [f"experiment={option}"])
    check_resolves(cfg)
    # an experiment's runs live under its own name (ml1m_cpu adds K: ml1m_cpu_k3)
    assert cfg.experiment_name.startswith(f"paper_{cfg.dataset.name}" if option == "paper_base" else option)
    header = (CONF / "experiment" / f"{option}.yaml").read_text().splitlines()[:6]
    assert any(line.startswith("# Run:") for line in header), f"experiment/{option}.yaml lacks its run command"


def test_every_config_key_has_a_comment() -> None:
    """Each `key: value` line of every config file carries a one-line comment."""
    missing = []
    for path in CONF.rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            is_leaf = ":" in stripped and not stripped.startswith(("#", "-")) and not stripped.endswith((":", "|"))
            if is_leaf and "#" not in stripped:
                missing.append(f"{path.relative_to(CONF)}:{number}: {stripped}")
    assert not missing, "config keys without a comment:\n" + "\n".join(missing)


@pytest.mark.parametrize("option", group_options("sweep"))
def test_every_sweep_composes_with_its_axes(option: str, tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"sweep={option}", "experiment=quickstart",
                                           f"paths.run_dir={tmp_path}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params and all("," in str(v) for v in params.values())
    assert cfg.experiment_name == f"sweep_{option}"
    for axis, values in params.items():  # every swept value composes on its own
        for value in str(values).split(","):
            check_resolves(compose_override(tmp_path, [f"{axis}={value}"]))


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_slurm"])
def test_launchers_compose(launcher: str, tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", f"paths.run_dir={tmp_path}"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra")


def compose_override(tmp_path, overrides: list[str]) -> DictConfig:
    """Compose the primary config with overrides (outside the fixture, for parametrized loops)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.run_dir={tmp_path}", *overrides])
        if "path" in cfg.dataset.loader:
            cfg = compose("config", overrides=[f"paths.run_dir={tmp_path}", *overrides, *FILL_REQUIRED])
        return cfg


def compose_filled(compose_cfg, overrides: list[str]) -> DictConfig:
    """Compose with ``overrides``, filling the required values (`???`) of the config when it has them."""
    cfg = compose_cfg(overrides)
    return compose_cfg([*overrides, *FILL_REQUIRED]) if "path" in cfg.dataset.loader else cfg


def hydra_cfg(overrides: list[str]) -> DictConfig:
    """The composed config with its `hydra` node (run and sweep folders)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


# --- the layout the stages read ------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", EXTERNAL_DATASETS)
def test_external_datasets_require_their_path(compose_cfg, dataset: str) -> None:
    cfg = compose_cfg([f"dataset={dataset}"])
    with pytest.raises(ConfigError, match=rf"^dataset\.path=null: dataset {dataset} is read from its published files"):
        validate_config(cfg)
    assert compose_cfg([f"dataset={dataset}", "dataset.path=/data/x"]).dataset.loader.path == "/data/x"


@pytest.mark.parametrize("dataset", ["ml100k", "ml1m"])
def test_shipped_datasets_have_no_path(compose_cfg, dataset: str) -> None:
    cfg = compose_cfg([f"dataset={dataset}"])
    assert cfg.dataset.path is None and "path" not in cfg.dataset.loader
    validate_config(cfg)


def test_one_bootstrap_node_and_the_evaluate_and_test_nodes(compose_cfg) -> None:
    cfg = compose_cfg()
    assert OmegaConf.to_container(cfg.bootstrap) == {"n_resamples": 1000, "confidence": 0.95}
    assert set(cfg.evaluate) == {"split", "raw_histories", "users_per_chunk", "reward", "targets_per_user",
                                 "sensitivity", "tabular"}
    assert cfg.evaluate.tabular.enabled and not cfg.evaluate.tabular.plain.model.with_oracle
    assert cfg.evaluate.tabular.oracle.model.with_oracle
    assert set(cfg.test) == {"split", "max_users", "temperature", "max_new_tokens", "users_per_chunk", "fixed_formats"}
    assert list(cfg.test.fixed_formats) == ["palr", "rlmrec", "kar"]
    assert [cfg.test.fixed_formats[name].name for name in cfg.test.fixed_formats] == ["palr", "rlmrec", "kar"]
    assert cfg.test.max_new_tokens == cfg.sampling.max_new_tokens
    assert "evaluation" not in cfg.recommender and "test" not in cfg.align and "bootstrap" not in cfg.align
    assert cfg.run_dir is None


def test_align_trains_each_listed_method_from_its_node(compose_cfg) -> None:
    cfg = compose_cfg()
    assert list(cfg.align.methods) == ["dpo", "sft"] and set(cfg.align.method) == {"dpo", "sft", "dpo_sft", "grpo"}
    assert not {"name", "sft_baseline", "dpo", "sft"} & set(cfg.align)
    examples = {"dpo": "preference", "sft": "positive", "dpo_sft": "preference", "grpo": "group"}
    assert cfg.align.method.dpo_sft.module.sft_weight == 1.0 and "sft_weight" not in cfg.align.method.dpo.module
    assert cfg.align.rounds == 1
    for name in cfg.align.method:
        node = cfg.align.method[name]
        assert node.examples == examples[name] and node.module._partial_ is True
        assert node.module.share_prompt is cfg.align.share_prompt is True
        assert node.module.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.align.method.dpo.module._target_ == "lettingo.align.dpo.DpoModule"
    assert cfg.align.method.sft.module._target_ == "lettingo.align.sft.SftModule"
    assert compose_cfg(["align.share_prompt=false"]).align.method.dpo.module.share_prompt is False


def test_keys_that_do_nothing_are_gone(compose_cfg) -> None:
    cfg = compose_cfg(["logger=wandb"])
    assert cfg.logger.name is None  # the run's identity names it; a name given wins (tests/test_tracking.py)
    assert "max_epochs" not in cfg.trainer and "enable_checkpointing" not in cfg.trainer


@pytest.mark.parametrize("sampling", ["single", "multi"])
def test_the_aligned_generator_explores_in_every_sampling(compose_cfg, sampling: str) -> None:
    cfg = compose_cfg([f"sampling={sampling}", "backbone=tiny_random"])
    assert cfg.sampling.backbones.primary == cfg.backbone and list(cfg.sampling.backbones)[0] == "primary"
    names = [b.name for b in cfg.sampling.backbones.values()]
    assert names == (["tiny_random"] if sampling == "single" else ["tiny_random", "gemma3_270m"])
    assert list(cfg.sampling.splits) == [f"profile_train_h{cfg.history.length}"]


def test_paper_experiments_extend_one_base(compose_cfg) -> None:
    for option in ("paper_ml1m", "paper_ml10m", "paper_amazon_books", "paper_yelp"):
        body = [line for line in (CONF / "experiment" / f"{option}.yaml").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
        dataset = option.removeprefix("paper_")
        assert body == ["defaults:", "  - paper_base", f"  - override /dataset: {dataset}"], option
        cfg = compose_cfg([f"experiment={option}", *FILL_REQUIRED] if dataset in EXTERNAL_DATASETS
                          else [f"experiment={option}"])
        assert (cfg.dataset.name, cfg.history.length, cfg.sampling.n, cfg.stage) == (dataset, 70, 10, "pipeline")
        assert cfg.trainer.accelerator == "gpu" and cfg.test.max_users is None
    for option in group_options("experiment"):
        assert (CONF / "experiment" / f"{option}.yaml").read_text().startswith("# @package _global_\n"), option


@pytest.mark.parametrize("extra", [[], ["experiment=quickstart"], ["experiment=paper_ml1m"]])
def test_debug_tiny_shrinks_any_run(compose_cfg, extra: list[str]) -> None:
    cfg = compose_cfg([*extra, "debug=tiny"])
    assert cfg.backbone.name == "tiny_random" and list(cfg.sampling.backbones) == ["primary"]
    assert cfg.recommender.model.model == "tiny_random" and cfg.logger._target_ == "lettingo.tracking.NullTracker"
    # ... only on an LLM f_Rec: another keeps its own model node (no stray key from the debug setup; the paper
    # experiments configure their own LLM f_Rec's node, so they are left out here).
    if "experiment=paper_ml1m" not in extra:
        assert "model" not in compose_cfg([*extra, "debug=tiny", "recommender=tabular_reader"]).recommender.model
    assert compose_cfg([*extra, "debug=tiny", "recommender=llm_lora"]).recommender.model.model == "tiny_random"
    assert (cfg.sampling.max_users, cfg.sampling.n, cfg.sampling.max_new_tokens) == (3, 3, 6)
    assert cfg.bootstrap.n_resamples == 50 and cfg.num_threads == 1 and cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.enable_progress_bar is False and cfg.align.epochs == 1 and cfg.test.max_users <= 4
    assert max(cfg.dataset.splits.values()) <= 4
    # Later overrides on the command line still win.
    assert compose_cfg([*extra, "debug=tiny", "recommender=llm_lora", "logger=csv"]).recommender.name == "llm_lora"


def test_run_folder_is_given_latest_or_new(tmp_path) -> None:
    root = tmp_path / "outputs"
    experiment = root / "default"
    base = [f"paths.output_root={root}"]
    assert hydra_cfg([*base, "run_dir=/some/run"]).hydra.run.dir == "/some/run"
    fresh = hydra_cfg([*base, "stage=explore"]).hydra.run.dir
    assert fresh.startswith(str(experiment) + "/") and fresh != str(experiment / "latest")
    (experiment / "2020-01-01_00-00-00").mkdir(parents=True)
    (experiment / "latest").symlink_to(experiment / "2020-01-01_00-00-00")
    assert hydra_cfg([*base, "stage=explore"]).hydra.run.dir == str(experiment / "2020-01-01_00-00-00")
    assert hydra_cfg([*base, "stage=pipeline"]).hydra.run.dir != str(experiment / "2020-01-01_00-00-00")
    sweep = hydra_cfg(base).hydra.sweep
    subdir = "${hydra.job.num}_${lettingo_job_hash:${hydra.job.override_dirname}}"
    assert OmegaConf.to_container(sweep)["subdir"] == subdir


def test_sweep_job_folders_are_short_whatever_the_overrides() -> None:
    from lettingo.run_folders import job_hash

    long_line = ",".join(f"some.deeply.nested.key_{i}=value_{i}" for i in range(200))
    assert len(job_hash(long_line)) == 6 and job_hash(long_line) == job_hash(long_line)
    assert job_hash("seed=0") != job_hash("seed=1")
