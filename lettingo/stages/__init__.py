"""The stages, in the order `stage=pipeline` runs them; each declares what it needs and makes."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from lettingo.stages import align, data, evaluate, explore, rec_profiles, test, train_rec
from lettingo.stages.base import DeclarationError, Declared, Stage

STAGES: tuple[Stage, ...] = (data.STAGE, explore.STAGE, rec_profiles.STAGE, train_rec.STAGE, evaluate.STAGE,
                             align.STAGE, test.STAGE)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}

_ABSENT = object()  # what OmegaConf.select returns for a key the config does not have


def declarations(cfg: DictConfig) -> dict[str, Declared]:
    """Every artifact the stages make under ``cfg``, with its declaration and the stage that makes it."""
    return {output.name: Declared(output, stage.name) for stage in STAGES for output in stage.outputs(cfg)}


def check_declarations(cfg: DictConfig) -> None:
    """Fail in one line naming the first key an artifact declares that ``cfg`` does not have.

    The runner calls it once, before any stage runs, so a mistyped declaration (a config node, a key left out
    of an identity, a key an artifact grows by) stops the run at its start instead of fingerprinting nothing.
    """
    for name, declared in declarations(cfg).items():
        output, stage = declared.output, declared.stage
        for kind, keys in (("config", output.config), ("not_identity", output.not_identity),
                           ("grows_by", output.grows_by)):
            for key in keys:
                if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                    raise DeclarationError(f"stage {stage}: artifact {name!r} declares {kind} key {key!r}, "
                                           "which the config does not have")
        outside = [key for key in output.not_identity if not any(key.startswith(f"{c}.") for c in output.config)]
        if outside:
            raise DeclarationError(f"stage {stage}: artifact {name!r} leaves {outside[0]!r} out of its identity, "
                                   "but that key lies under none of its config nodes")
