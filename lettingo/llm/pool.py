"""Generation backbones built from their configs on demand, one open at a time, and their identity."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from hydra.utils import instantiate

from lettingo.llm.base import GenerationBackend
from lettingo.llm.vllm_backend import EngineSettings, close_engines, engine_identity

log = logging.getLogger(__name__)

#: Keys of a backbone (or served f_Rec) config that change pace, location, retries or the bill, never what is
#: sampled or scored: the one list of such keys. Each artifact leaves out of its identity the dotted keys of this
#: list that its generator nodes hold (lettingo.stages.base.pace_keys).
PACE_KEYS = ("cache_dir", "num_threads", "concurrency", "requests_per_minute", "tokens_per_minute",
             "price_per_million_input", "price_per_million_output", "timeout", "max_retries",
             "request_deadline_s")
#: The `_target_` of backbones whose views share one engine per model (lettingo.llm.vllm_backend).
SHARED_ENGINE_TARGETS = ("lettingo.llm.vllm_backend.VLLMBackend",)


class BackendPool(Mapping[str, GenerationBackend]):
    """Backbones built from their configs on first access, at most one open at a time.

    Getting another backbone closes the open one, so a loop over backbones holds one model in
    memory; :meth:`close` closes the last. vLLM backbones are views over one engine per model
    (:mod:`lettingo.llm.vllm_backend`): switching between views of one model keeps its engine, and
    leaving the ``with`` block also shuts every vLLM engine down (:func:`close_engines`), so the GPU is
    free for what comes next (f_Rec, a trainer). Use one pool (and :meth:`subset` for each explore
    call) for all the generators of a stage, visited in :func:`shared_engine_order`.
    """

    def __init__(self, configs: Mapping[str, Any]) -> None:
        self.configs = configs
        self.open_name: str | None = None
        self.open_backend: GenerationBackend | None = None
        #: backbone name -> its backend's `usage()` (requests, tokens, cost), kept when it is closed
        self.usage: dict[str, dict[str, float]] = {}

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
        """Close the open backbone, if any (a vLLM view: its engine stays up); keep its usage."""
        if self.open_backend is not None and self.open_name is not None:
            used = self.open_backend.usage()
            if used:
                previous = self.usage.get(self.open_name, {})
                self.usage[self.open_name] = {k: previous.get(k, 0.0) + float(v) for k, v in used.items()}
        if self.open_backend is not None:
            self.open_backend.close()
        self.open_backend, self.open_name = None, None

    def subset(self, names: Iterable[str]) -> PoolView:
        """The backbones ``names`` of this pool, in that order, still built lazily by this pool."""
        return PoolView(self, list(names))

    def __enter__(self) -> BackendPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        close_engines()


class PoolView(Mapping[str, GenerationBackend]):
    """Some backbones of a :class:`BackendPool` (e.g. those one explore call writes with), built by the pool."""

    def __init__(self, pool: BackendPool, names: list[str]) -> None:
        unknown = [name for name in names if name not in pool.configs]
        if unknown:
            raise KeyError(f"not in the pool: {unknown}")
        self.pool, self.names = pool, names

    def __getitem__(self, name: str) -> GenerationBackend:
        if name not in self.names:
            raise KeyError(name)
        return self.pool[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def engine_key(config: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What decides which engine a backbone config runs on (its model folder and engine settings, resolved as
    the engine registry compares them: ``dtype: auto`` is the dtype vLLM picks), for backbones whose views share
    an engine (vLLM); None for the others (each builds its own model)."""
    if str(config.get("_target_")) not in SHARED_ENGINE_TARGETS:
        return None
    settings = EngineSettings.from_values(**{key: config[key] for key in EngineSettings.__dataclass_fields__
                                             if key in config})
    return (str(config["_target_"]), *engine_identity(str(config["model"]), str(config["cache_dir"]), settings))


def shared_engine_order(configs: Mapping[str, Any]) -> list[str]:
    """The names of ``configs`` with the backbones of one shared engine next to each other (at the place of
    the first of them), the others in their order: a loop in this order starts each vLLM engine once."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, config in configs.items():
        groups.setdefault(engine_key(config) or ("own", name), []).append(name)
    return [name for names in groups.values() for name in names]


def backbones_by_name(configs: Mapping[str, Any]) -> dict[str, Any]:
    """Backbone configs (e.g. `sampling.backbones`) keyed by each config's `name` (the tag of its profiles)."""
    named: dict[str, Any] = {}
    for slot, config in configs.items():
        name = str(config["name"])
        if name in named:
            raise ValueError(f"sampling.backbones.{slot}: another backbone is also named {name!r}; names must differ")
        named[name] = config
    return named
