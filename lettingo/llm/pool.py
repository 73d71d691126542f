"""Generation backbones built from their configs on demand, one open at a time, and their identity."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lettingo.llm.base import GenerationBackend

log = logging.getLogger(__name__)

# Backbone keys that change speed or location but not the sampled texts: kept out of the identity
# so that, say, another thread count resumes the same profiles.
NOT_IDENTITY = ("cache_dir", "num_threads", "batch_size", "device")


class BackendPool(Mapping[str, GenerationBackend]):
    """Backbones built from their configs on first access, at most one open at a time.

    Getting another backbone closes the open one, so a loop over backbones holds one model in
    memory; :meth:`close` (or leaving the ``with`` block) closes the last.
    """

    def __init__(self, configs: Mapping[str, Any]) -> None:
        self.configs = configs
        self.open_name: str | None = None
        self.open_backend: GenerationBackend | None = None

    def __getitem__(self, name: str) -> GenerationBackend:
        if name not in self.configs:
            raise KeyError(name)
        if name != self.open_name:
            self.close()
            log.info("loading backbone %s", name)
            self.open_backend, self.open_name = instantiate(self.configs[name]), name
        return self.open_backend

    def __iter__(self) -> Iterator[str]:
        return iter(self.configs)

    def __len__(self) -> int:
        return len(self.configs)

    def close(self) -> None:
        """Close the open backbone, if any."""
        if self.open_backend is not None:
            self.open_backend.close()
        self.open_backend, self.open_name = None, None

    def __enter__(self) -> BackendPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def backbones_by_name(configs: Mapping[str, Any]) -> dict[str, Any]:
    """Backbone configs (e.g. `sampling.backbones`) keyed by each config's `name` (the tag of its profiles)."""
    named: dict[str, Any] = {}
    for slot, config in configs.items():
        name = str(config["name"])
        if name in named:
            raise ValueError(f"sampling.backbones.{slot}: another backbone is also named {name!r}; names must differ")
        named[name] = config
    return named


def backbone_identity(configs: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved backbone configs without the keys that do not change what is sampled."""
    resolved = {name: OmegaConf.to_container(c, resolve=True) if isinstance(c, DictConfig) else dict(c)
                for name, c in configs.items()}
    return {name: {k: v for k, v in c.items() if k not in NOT_IDENTITY} for name, c in resolved.items()}
