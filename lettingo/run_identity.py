"""A run's identity in the tracker: named from its experiment and the values it overrides, grouped by its
experiment, typed by its stage, tagged with its overrides, sweep and debug setup, and one flat field per
ablation axis the paper reports, so W&B can group and chart runs without parsing metric names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from lettingo.tracking import RunIdentity

#: Override keys (their first part) left out of a run's name and tags: where a run writes and how it logs or
#: is scheduled, not what it computes. The sweep and debug setup become tags of their own.
NOT_IN_NAME = frozenset({"experiment", "sweep", "debug", "stage", "stop_after", "run_dir", "logger", "tags",
                         "paths", "hydra", "trainer", "num_threads", "distributed"})


def override_key(override: str) -> str:
    """The config key an override sets, without `+`/`~` and package (``+backbone@sampling.x=y`` -> ``backbone``)."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def named_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that say what a run computes (``history=h50``, ``sampling.n=8``), as given, without `+`."""
    return [o.lstrip("+") for o in overrides if override_key(o).split(".", 1)[0] not in NOT_IN_NAME]


def compare_fields(cfg: DictConfig, choices: Mapping[str, Any]) -> dict[str, Any]:
    """One flat value per ablation axis: what W&B groups and filters runs by (`compare.<field>`)."""
    backbones = [str(config["name"]) for config in cfg.sampling.backbones.values()]
    return {
        "experiment": experiment_of(cfg, choices), "sweep": choices.get("sweep"), "stage": str(cfg.stage),
        "dataset": str(cfg.dataset.name), "history_length": int(cfg.history.length),
        "recent": int(cfg.history.recent),
        "sampling": choices.get("sampling") or ("single" if len(backbones) == 1 else "multi"),
        "backbones": "+".join(backbones), "generator": str(cfg.backbone["name"]),
        "methods": "+".join(map(str, cfg.align.methods)), "recommender": str(cfg.recommender.name),
        "reward": str(cfg.evaluate.reward), "pairs": choices.get("pairs"), "seed": int(cfg.seed),
        "debug": cfg.debug_setup,
    }


def experiment_of(cfg: DictConfig, choices: Mapping[str, Any]) -> str:
    """The experiment config a run composed (a sweep's runs keep their experiment's name), else its name."""
    return str(choices.get("experiment") or cfg.experiment_name)


def run_identity(cfg: DictConfig, overrides: Sequence[str] = (), choices: Mapping[str, Any] | None = None,
                 ) -> RunIdentity:
    """The identity of the run of ``cfg`` started with ``overrides`` (Hydra's task overrides) and ``choices``
    (Hydra's runtime choices: the option picked per config group). A debug setup's runs form their own group,
    ``debug/<experiment>``, as their folders do."""
    choices = dict(choices or {})
    experiment = experiment_of(cfg, choices)
    named = named_overrides(overrides)
    extra = [f"sweep:{choices['sweep']}"] if choices.get("sweep") else []
    if cfg.debug_setup:
        extra.append(f"debug:{cfg.debug_setup}")
    return RunIdentity(
        name=" ".join([experiment, *named]), group=f"debug/{experiment}" if cfg.debug_setup else experiment,
        job_type=str(cfg.stage), tags=tuple([*named, *extra, *map(str, cfg.tags)]),
        fields=compare_fields(cfg, choices),
    )
