"""Building the configured f_Rec, ready to predict: zero-shot as configured, trainable or fitted from a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate

from lettingo.recommender.base import Recommender
from lettingo.recommender.cases import RecCase
from lettingo.recommender.tabular import TabularRecommender
from lettingo.recommender.training import load_checkpoint


def build_recommender(model_cfg: Any, checkpoint: Path | None = None) -> Recommender:
    """The f_Rec of ``model_cfg`` (a `recommender.model` node); the trained weights of ``checkpoint`` loaded.

    A zero-shot f_Rec needs no checkpoint; a trainable one without a checkpoint is an error, since its
    untrained head would predict at random. A tabular f_Rec's checkpoint is the whole fitted model (a pickle).
    """
    recommender = instantiate(model_cfg)
    if checkpoint is None:
        return recommender
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"f_Rec checkpoint {checkpoint} does not exist")
    if isinstance(recommender, TabularRecommender):
        return recommender.load(Path(checkpoint))
    load_checkpoint(recommender, Path(checkpoint))
    recommender.eval()
    return recommender


class LazyRecommender:
    """An f_Rec built on its first prediction, so a stage whose verdicts are all reused loads no model."""

    def __init__(self, name: str, model_cfg: Any, checkpoint: Path | None = None) -> None:
        self.name = name
        self.model_cfg = model_cfg
        self.checkpoint = checkpoint
        self._model: Recommender | None = None

    @property
    def model(self) -> Recommender:
        """The built f_Rec (built now if it was not yet)."""
        if self._model is None:
            self._model = build_recommender(self.model_cfg, self.checkpoint)
        return self._model

    def predict(self, cases: Sequence[RecCase]) -> np.ndarray:
        """Probabilities of LABELS per case, from the built f_Rec."""
        return self.model.predict(cases)
