"""The backbone configs build their backends through Hydra, and no secret lands in a resolved config."""

from __future__ import annotations

import importlib.util

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lettingo.llm.local import LocalBackend
from lettingo.llm.openai_http import OpenAIBackend


def test_tiny_random_backbone_builds_and_generates(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(["backbone=tiny_random", f"paths.model_cache={tmp_path}/models", "num_threads=1"])
    backend = instantiate(cfg.backbone)
    assert isinstance(backend, LocalBackend) and backend.name == "tiny_random"
    assert (tmp_path / "models" / "tiny_random-0" / "config.json").is_file()
    result = backend.generate([backend.render("Toy Story 5/5")], n=2, max_new_tokens=3)
    assert [len(row) for row in result] == [2]


def test_openai_backbone_reads_the_key_from_the_environment_only(compose_cfg, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-a-config")
    cfg = compose_cfg(["backbone=openai", "backbone.base_url=http://127.0.0.1:9/v1"])
    backend = instantiate(cfg.backbone)
    assert isinstance(backend, OpenAIBackend) and backend.url == "http://127.0.0.1:9/v1/chat/completions"
    assert "sk-never-in-a-config" not in OmegaConf.to_yaml(cfg, resolve=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed: the slow vLLM test runs")
def test_vllm_backbone_without_vllm_says_what_to_do(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(["backbone=vllm", f"paths.model_cache={tmp_path}/models"])
    with pytest.raises(Exception, match="backbone=vllm needs the `vllm` package"):  # Hydra wraps the ImportError
        instantiate(cfg.backbone)
