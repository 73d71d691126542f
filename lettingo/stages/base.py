"""What a stage is: the artifacts it needs and makes, the config that is each artifact's identity.

A stage is a plain function of a :class:`StageContext` plus a declaration. The declaration is what
the runner and the artifact store read: a stage's inputs must be finished before it runs
(:meth:`StageContext.need`), and the fingerprint of each artifact it makes is computed in one place
(:meth:`StageContext.fingerprint`) from the config keys the artifact declares and the fingerprints of
the artifacts it is made from. Stages meet only at artifacts; they never import each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from lettingo.artifacts import ArtifactStore, MissingArtifact, RowWriter
from lettingo.evaluation.methods import MetricRoles
from lettingo.llm.pool import PACE_KEYS, backbones_by_name
from lettingo.schemas import LettingoConfig, config_object
from lettingo.tracking import Tracker

log = logging.getLogger(__name__)

#: What a profile row depends on (the explore stage's and every on-policy round's); `max_users`, `n` and `splits`
#: only add rows. `users_per_chunk` is part of it: the prompts sharing a generate call change a text through
#: rounding (README "Artifacts").
PROFILE_CONFIG = ("sampling", "prompt", "dataset.item_text", "history.length", "seed")

#: Trainer keys that change logging and display, never what a fit learns.
TRAINER_DISPLAY = ("trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                   "trainer.log_every_n_steps")


@dataclass(frozen=True)
class Output:
    """One artifact a stage makes: its name, the config nodes and the artifacts its content depends on.

    Its identity is every node of ``config`` in full, minus the dotted keys of ``not_identity`` (keys under
    those nodes that change speed, location or display, never the content), plus the identity and the rows
    of every input. ``grows_by`` lists config keys that only add rows to a row-keyed artifact (e.g. how many
    users are explored): changing them keeps the rows written so far and computes only new ones; for an
    input of ``grows_with`` (whose rows this artifact follows one by one) only its identity counts, so
    new input rows grow this artifact instead of remaking it.
    """

    name: str
    config: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    grows_by: tuple[str, ...] = ()
    not_identity: tuple[str, ...] = ()
    grows_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """A stage: a name, the artifacts it needs (made by earlier stages) and those it makes.

    ``outputs`` maps a config to the stage's :class:`Output` declarations (a function, because the
    align stage makes one adapter per configured method). ``distributed`` marks a stage whose
    training runs on every process of a multi-process trainer; the others run on rank 0 only.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    needs: tuple[str, ...]
    outputs: Callable[[DictConfig], Sequence[Output]]
    distributed: bool = False

    def makes(self, cfg: DictConfig) -> list[str]:
        """Names of the artifacts this stage makes under ``cfg``."""
        return [output.name for output in self.outputs(cfg)]


@dataclass(frozen=True)
class Declared:
    """An artifact's declaration and the stage that makes it (what the runner tells every stage)."""

    output: Output
    stage: str


@dataclass
class StageContext:
    """What a running stage receives: config, run folder, artifact store, tracker and every declaration.

    Under a multi-process trainer every rank runs the distributed stages: rank 0 (:attr:`is_main`)
    makes and writes the artifacts; the others get a read-only store and a tracker that records
    nothing, and only join the fits. A decision every rank must share (reuse or resume an artifact)
    is rank 0's, through :meth:`agree`.
    """

    cfg: DictConfig
    run_dir: Path
    store: ArtifactStore
    tracker: Tracker
    stage: Stage
    declared: Mapping[str, Declared] = field(default_factory=dict)  # artifact name -> declaration
    rank: int = 0  # this process's global rank (0: the only process, or the one that writes)
    world: int = 1  # processes of this run
    agree: Callable[[Any], Any] = lambda value: value  # rank 0's value on every rank (the runner's broadcast)

    @cached_property
    def conf(self) -> LettingoConfig:
        """The config as one typed object, every node checked by its schema: what a stage reads."""
        return config_object(self.cfg)

    @property
    def is_main(self) -> bool:
        """Whether this process makes and writes the artifacts (rank 0, or the only process)."""
        return self.rank == 0

    def fingerprint(self, name: str) -> str:
        """The identity of artifact ``name`` under this config: its declared config values and inputs."""
        output = self._declaration(name).output
        dropped = (*output.not_identity, *output.grows_by)
        values = {key: identity_value(self.cfg, key, dropped) for key in output.config}
        return self.store.identity(values, output.inputs, output.grows_with)

    def make(self, name: str, build: Callable[[Path], Mapping[str, Any]]) -> dict[str, Any]:
        """Artifact ``name`` for this config: reused when finished for it, else made by ``build``.

        The store alone decides (rank 0's answer on every rank): reuse, or move aside what other inputs
        made. ``build`` writes the artifact's files into the folder it is given and returns what the
        artifact's `_meta.json` records beside them (on a rank other than 0 it only joins the fit).
        Returns the recorded metadata either way.
        """
        fp = self.fingerprint(name)
        if self.agree(self.store.prepare(name, fp)) == "done":
            log.info("%s: reusing %s (finished for this config)", name, self.store.path(name))
        else:
            info = build(self.store.path(name))
            if self.is_main:
                self.store.finish(name, fp, **info)
        return self.store.meta(name) or {}

    def rows(self, name: str, key: Sequence[str]) -> RowWriter:
        """The row-keyed chunked artifact ``name`` for this config, keeping the rows already written for it."""
        return self.store.rows(name, self.fingerprint(name), key)

    def resume(self, work: str, of: str) -> bool:
        """Whether folder ``work`` holds the interrupted work (checkpoints) of artifact ``of`` for this config,
        rank 0's answer on every rank; what other inputs left there is moved aside."""
        return self.agree(self.store.begin(work, self.fingerprint(of))) == "partial"

    def need(self, name: str) -> dict[str, Any]:
        """The metadata of a finished upstream artifact made for this config; one clear error otherwise."""
        made_by = self._declaration(name).stage
        meta = self.store.require(name, made_by)
        if meta["fingerprint"] != self.fingerprint(name):
            raise MissingArtifact(f"{self.store.path(name)} was made with other inputs than this config: "
                                  f"rerun `lettingo stage={made_by} run_dir={self.run_dir}` (same overrides)")
        return meta

    def read_table(self, name: str) -> pd.DataFrame:
        """A finished upstream table artifact made for this config (see :meth:`need`)."""
        self.need(name)
        return self.store.read_table(name)

    def _declaration(self, name: str) -> Declared:
        for output in self.stage.outputs(self.cfg):
            if output.name == name:
                return Declared(output, self.stage.name)
        if name not in self.declared:
            raise KeyError(f"no stage declares artifact {name!r} under this config")
        return self.declared[name]


def identity_value(cfg: DictConfig, key: str, dropped: Sequence[str] = ()) -> Any:
    """The resolved value of config node ``key`` as plain data, without the dotted keys of ``dropped`` under it."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    for other in dropped:
        if other.startswith(f"{key}."):
            *parents, leaf = other[len(key) + 1 :].split(".")
            node = value
            for part in parents:
                node = node[part]
            del node[leaf]
    return value


def pace_keys(cfg: DictConfig, node: str) -> tuple[str, ...]:
    """The dotted keys of :data:`~lettingo.llm.pool.PACE_KEYS` that config node ``node`` (a backbone, an f_Rec
    model) holds: what an artifact made with that node leaves out of its identity."""
    return tuple(f"{node}.{key}" for key in PACE_KEYS if key in OmegaConf.select(cfg, node))


def backbones_pace_keys(cfg: DictConfig, node: str = "sampling.backbones") -> tuple[str, ...]:
    """:func:`pace_keys` of every backbone of the slot -> backbone mapping at ``node``."""
    return tuple(key for slot in OmegaConf.select(cfg, node) for key in pace_keys(cfg, f"{node}.{slot}"))


def metric_roles(conf: LettingoConfig) -> MetricRoles:
    """The tracker keys of this run's method rows: its K and generator, and the other explored backbones."""
    generator = str(conf.backbone["name"])
    others = tuple(name for name in backbones_by_name(conf.sampling.backbones) if name != generator)
    return MetricRoles(int(conf.history.recent), generator, others)


class DeclarationError(ValueError):
    """An artifact declaration that names a key the composed config does not have."""
