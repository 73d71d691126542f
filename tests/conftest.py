"""Shared fixtures: composing the real Hydra configs, offline environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lettingo import CONFIG_DIR
from lettingo.run_folders import register_resolvers

pytest_plugins = ["fixtures_llm", "fixtures_encoders", "fixtures_vllm"]

register_resolvers()  # hydra.run.dir uses lettingo_run_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real primary config with overrides; the run folder is a temporary directory."""

    def _compose(overrides: Sequence[str] = (), run_dir: Path | None = None) -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(
                config_name="config",
                overrides=[f"paths.run_dir={run_dir or tmp_path / 'run'}", *overrides],
            )

    return _compose
