"""On-policy rounds of alignment (`align.rounds`, or a method's own `align.method.<name>.rounds`), as the align
and test stages both see them.

Round 1 of a method trains on the explore and evaluate stages' profiles (the paper's single offline
round). Round r >= 2 explores the same users with round r-1's adapter, has the same frozen f_Rec judge
those profiles, builds its own pairs (or GRPO groups) and trains, continuing from round r-1's adapter
with the base model as the DPO reference (RLHFlow's iterative DPO). Each round keeps its artifacts:
``profiles_<method>_r<r>``, ``rewards_<method>_r<r>``, ``pairs_<method>_r<r>`` and ``adapter_<method>_r<r>``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from lettingo.artifacts import PAIRS, PROFILES, REWARDS, SAMPLES, adapter_artifact, round_artifact
from lettingo.schemas import LettingoConfig
from lettingo.stages.base import PROFILE_CONFIG, TRAINER_DISPLAY, Output, StageContext, pace_keys
from lettingo.stages.judging import rewards_output

#: Methods whose examples are groups of a user's sampled profiles with their rewards (GRPO), not pairs.
GROUP_EXAMPLES = "group"


def method_rounds(config: Any, method: str) -> int:
    """How many rounds ``method`` trains: its own `align.method.<name>.rounds`, else `align.rounds` (``config`` is
    the raw or the typed config)."""
    return config.align.method[method].rounds or config.align.rounds


def method_label(method: str, round_: int, rounds: int) -> str:
    """The results label of ``method``'s generator after ``round_`` of ``rounds`` (`dpo` -> DPO, DPO (round 1))."""
    label = method.upper()
    return label if round_ == rounds else f"{label} (round {round_})"


def adapter_generator(conf: LettingoConfig, method: str, round_: int, adapter: str) -> dict[str, Any]:
    """The generator's config with ``method``'s adapter of ``round_`` (saved in folder ``adapter``) applied."""
    suffix = "" if round_ == 1 else f"_r{round_}"
    return {**conf.backbone, "name": f"{conf.backbone['name']}+{method}{suffix}", "adapter": adapter}


def trained_generators(ctx: StageContext, conf: LettingoConfig) -> dict[str, dict[str, Any]]:
    """Results label -> generator config with its adapter, for every round's adapter of `align.methods` trained."""
    found = {}
    for method in conf.align.methods:
        rounds = method_rounds(conf, method)
        for round_ in range(1, rounds + 1):
            artifact = adapter_artifact(method, round_)
            if ctx.store.meta(artifact) is None:
                break
            ctx.need(artifact)
            found[method_label(method, round_, rounds)] = adapter_generator(conf, method, round_,
                                                                            str(ctx.store.path(artifact)))
    return found


def examples_source(cfg: DictConfig, method: str, round_: int) -> str:
    """The artifact ``method`` trains on in ``round_``: pairs, or for a group method the rewards themselves."""
    group = cfg.align.method[method].examples == GROUP_EXAMPLES
    if round_ == 1:
        return REWARDS if group else PAIRS
    return round_artifact(REWARDS if group else PAIRS, method, round_)


def every_adapter(cfg: DictConfig) -> tuple[str, ...]:
    """Every adapter artifact the align stage makes under ``cfg``: each method's, each round's."""
    return tuple(adapter_artifact(str(m), r) for m in cfg.align.methods for r in range(1, method_rounds(cfg, m) + 1))


def round_outputs(cfg: DictConfig, method: str) -> list[Output]:
    """The declarations of ``method``'s rounds: explored profiles, rewards and pairs of rounds >= 2, every adapter.

    An adapter's identity is the align settings in full with its own method's node only, without the number
    of rounds (asking for more rounds keeps the earlier ones); a later round's is also its examples' and the
    previous adapter's.
    """
    others = tuple(f"align.method.{other}" for other in cfg.align.method if other != method)
    adapter_keys = ("align.methods", "align.rounds", f"align.method.{method}.rounds", *others, *TRAINER_DISPLAY)
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
        outputs.append(Output(adapter_artifact(method, round_), config=("align", "backbone.model", "trainer", "seed"),
                              inputs=inputs, not_identity=adapter_keys))
    return outputs
