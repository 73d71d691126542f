"""The stages, in the order `stage=pipeline` runs them; each declares what it needs and makes."""

from __future__ import annotations

from omegaconf import DictConfig

from lettingo.stages import align, data, evaluate, explore, test, train_rec
from lettingo.stages.base import Declared, Stage

STAGES: tuple[Stage, ...] = (data.STAGE, explore.STAGE, train_rec.STAGE, evaluate.STAGE, align.STAGE, test.STAGE)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def declarations(cfg: DictConfig) -> dict[str, Declared]:
    """Every artifact the stages make under ``cfg``, with its declaration and the stage that makes it."""
    return {output.name: Declared(output, stage.name) for stage in STAGES for output in stage.outputs(cfg)}
