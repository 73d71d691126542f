"""Entry of the data stage: samples artifact (reused when the inputs match) and its summary."""

from __future__ import annotations

import logging

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lettingo.artifacts import ArtifactStore, fingerprint
from lettingo.data.prepare import SampleSpec, format_summary, make_samples, summarize_data
from lettingo.data.schema import LabelThresholds

log = logging.getLogger(__name__)

SAMPLES = "samples"


def sample_spec(cfg: DictConfig) -> SampleSpec:
    """The sample/split specification from the `dataset` and `history` configs."""
    histories = sorted({*map(int, cfg.dataset.histories), int(cfg.history.length)})
    return SampleSpec(
        recent=int(cfg.history.recent),
        histories=histories,
        split_sizes={str(k): int(v) for k, v in cfg.dataset.splits.items()},
        split_seed=int(cfg.dataset.split_seed),
        thresholds=LabelThresholds(**cfg.dataset.labels),
    )


def samples_fingerprint(cfg: DictConfig) -> str:
    """Fingerprint of everything the samples depend on."""
    spec = sample_spec(cfg)
    return fingerprint(
        {
            "loader": OmegaConf.to_container(cfg.dataset.loader, resolve=True),
            "labels": OmegaConf.to_container(cfg.dataset.labels, resolve=True),
            "recent": spec.recent,
            "histories": list(spec.histories),
            "splits": dict(spec.split_sizes),
            "split_seed": spec.split_seed,
        }
    )


def load_or_build_samples(cfg: DictConfig, store: ArtifactStore) -> tuple[pd.DataFrame, dict]:
    """The `samples` artifact of this run (built when missing) and its summary."""
    fp = samples_fingerprint(cfg)
    if store.is_done(SAMPLES, fp):
        log.info("samples: reusing %s", store.path(SAMPLES))
        return store.read_table(SAMPLES), store.meta(SAMPLES)["summary"]
    spec = sample_spec(cfg)
    interactions = instantiate(cfg.dataset.loader)()
    samples = make_samples(interactions, spec, source=cfg.dataset.name)
    summary = summarize_data(interactions, samples, spec)
    store.write_table(SAMPLES, samples, fp, summary=summary)
    return samples, summary


def run_data(cfg: DictConfig, store: ArtifactStore) -> dict:
    """The data stage: build (or reuse) the samples and print the summary."""
    _, summary = load_or_build_samples(cfg, store)
    print(format_summary(summary, cfg.dataset.name))
    print(f"samples artifact: {store.path(SAMPLES)}")
    return summary
