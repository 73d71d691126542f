"""Every primary config, every file of every group and every experiment composes and resolves,
and every `_target_` in them names an importable object, so configs cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lettingo.cli import CONFIG_DIR

CONF = Path(CONFIG_DIR)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
REQUIRED_GROUPS = ["align", "backbone", "dataset", "experiment", "history", "logger", "paths", "prompt",
                   "recommender", "sampling", "trainer"]
# Values the user must supply (`???`) for the datasets that cannot be shipped.
FILL_REQUIRED = ["dataset.path=/data/not-used-in-this-test"]


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
    assert cfg.stage == "data"


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS if g != "experiment" for o in group_options(g)]
)
def test_every_group_option_composes(compose_cfg, group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}", *FILL_REQUIRED])
    check_resolves(cfg)


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_composes(compose_cfg, option: str) -> None:
    cfg = compose_cfg([f"experiment={option}", *FILL_REQUIRED])
    check_resolves(cfg)
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
            check_resolves(compose_override(tmp_path, [f"{axis}={value}", *FILL_REQUIRED]))


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
        return compose("config", overrides=[f"paths.run_dir={tmp_path}", *overrides])
