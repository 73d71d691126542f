"""On-policy rounds of alignment (`align.rounds`, or a method's own `align.method.<name>.rounds`), as the align
and test stages both see them.

Round 1 of a method trains on the explore and evaluate stages' profiles (the paper's single offline
round). Round r >= 2 explores the same users with round r-1's adapter, has the same frozen f_Rec judge
those profiles, builds its own pairs (or GRPO groups) and trains, continuing from round r-1's adapter
with the base model as the DPO reference (RLHFlow's iterative DPO). Each round keeps its artifacts:
``profiles_<method>_r<r>``, ``rewards_<method>_r<r>``, ``pairs_<method>_r<r>`` and ``adapter_<method>_r<r>``.
With `align.method.<name>.seeds` = S >= 2 the last round also trains S - 1 replicas (``adapter_..._s<s>``) from
the same examples, previous adapter and validation users with other training seeds: the spread of the last
round's effect over training randomness, each replica tested as its own row (`DPO (seed 2)`).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from lettingo.artifacts import PAIRS, PROFILES, REWARDS, SAMPLES, adapter_artifact, round_artifact
from lettingo.evaluation.methods import method_label
from lettingo.schemas import LettingoConfig
from lettingo.stages.base import PROFILE_CONFIG, TRAINER_DISPLAY, Output, StageContext, pace_keys
from lettingo.stages.judging import rewards_output

#: The config an adapter depends on (less its `not_identity` keys, see :func:`round_outputs`).
ADAPTER_CONFIG = ("align", "backbone.model", "trainer", "seed")
#: Methods whose examples are groups of a user's sampled profiles with their rewards (GRPO), not pairs.
GROUP_EXAMPLES = "group"


def method_rounds(config: Any, method: str) -> int:
    """How many rounds ``method`` trains: its own `align.method.<name>.rounds`, else `align.rounds` (``config`` is
    the raw or the typed config)."""
    return config.align.method[method].rounds or config.align.rounds


def adapter_generator(conf: LettingoConfig, method: str, round_: int, adapter: str, seed: int = 1) -> dict[str, Any]:
    """The generator's config with ``method``'s adapter of ``round_`` and training seed ``seed`` (saved in folder
    ``adapter``) applied."""
    suffix = ("" if round_ == 1 else f"_r{round_}") + ("" if seed == 1 else f"_s{seed}")
    return {**conf.backbone, "name": f"{conf.backbone['name']}+{method}{suffix}", "adapter": adapter}


def trained_adapters(config: Any, method: str) -> list[tuple[int, int]]:
    """(round, seed) of every adapter ``method`` trains, in order: each round's, then the last round's replicas."""
    rounds, seeds = method_rounds(config, method), config.align.method[method].seeds
    return [(r, 1) for r in range(1, rounds + 1)] + [(rounds, s) for s in range(2, seeds + 1)]


def trained_generators(ctx: StageContext, conf: LettingoConfig) -> dict[str, dict[str, Any]]:
    """Results label -> generator config with its adapter, for every adapter of `align.methods` trained (up to the
    first round a method skipped)."""
    found = {}
    for method in conf.align.methods:
        rounds = method_rounds(conf, method)
        for round_, seed in trained_adapters(conf, method):
            artifact = adapter_artifact(method, round_, seed)
            if ctx.store.meta(artifact) is None:
                break
            ctx.need(artifact)
            found[method_label(method, round_, rounds, seed)] = adapter_generator(
                conf, method, round_, str(ctx.store.path(artifact)), seed)
    return found


def examples_source(cfg: DictConfig, method: str, round_: int) -> str:
    """The artifact ``method`` trains on in ``round_``: pairs, or for a group method the rewards themselves."""
    group = cfg.align.method[method].examples == GROUP_EXAMPLES
    if round_ == 1:
        return REWARDS if group else PAIRS
    return round_artifact(REWARDS if group else PAIRS, method, round_)


def every_adapter(cfg: DictConfig) -> tuple[str, ...]:
    """Every adapter artifact the align stage makes under ``cfg``: each method's, each round's, each replica's."""
    return tuple(adapter_artifact(str(m), r, s) for m in cfg.align.methods for r, s in trained_adapters(cfg, str(m)))


def round_outputs(cfg: DictConfig, method: str) -> list[Output]:
    """The declarations of ``method``'s rounds: explored profiles, rewards and pairs of rounds >= 2, every adapter.

    An adapter's identity is the align settings in full with its own method's node only, without the number
    of rounds or seeds (asking for more keeps the earlier ones); a later round's is also its examples' and the
    previous adapter's. A replica of the last round has the last round's identity under its own name.
    """
    others = tuple(f"align.method.{other}" for other in cfg.align.method if other != method)
    adapter_keys = ("align.methods", "align.rounds", f"align.method.{method}.rounds", f"align.method.{method}.seeds",
                    *others, *TRAINER_DISPLAY)
    outputs = []
    for round_ in range(1, method_rounds(cfg, method) + 1):
        source = examples_source(cfg, method, round_)
        inputs: tuple[str, ...] = (source, PROFILES)
        if round_ > 1:
            previous = adapter_artifact(method, round_ - 1)
            profiles, rewards = round_artifact(PROFILES, method, round_), round_artifact(REWARDS, method, round_)
            outputs += [
                Output(profiles, config=(*PROFILE_CONFIG, "backbone"), inputs=(SAMPLES, previous),
                       grows_by=("sampling.max_users", "sampling.n", "sampling.splits"),
                       not_identity=(*pace_keys(cfg, "backbone"), "sampling.backbones")),
                rewards_output(cfg, rewards, profiles),
            ]
            if source != rewards:
                outputs.append(Output(source, config=("pairs", "seed"), inputs=(rewards,)))
            inputs = (source, previous)
        seeds = cfg.align.method[method].seeds if round_ == method_rounds(cfg, method) else 1
        outputs += [Output(adapter_artifact(method, round_, seed), config=ADAPTER_CONFIG, inputs=inputs,
                           not_identity=adapter_keys) for seed in range(1, seeds + 1)]
    return outputs
