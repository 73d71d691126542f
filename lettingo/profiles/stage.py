"""Entry of the explore stage: profiles of the configured splits' users from `sampling.backbones`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lettingo.data.stage import load_or_build_samples
from lettingo.llm.base import GenerationBackend
from lettingo.profiles.explore import explore
from lettingo.profiles.quality import format_summary, summarize_profiles
from lettingo.runtime import RunContext

log = logging.getLogger(__name__)

PROFILES = "profiles"
# Backbone keys that change speed or location but not the sampled texts: kept out of the
# fingerprint so that, say, another thread count resumes the same profiles.
NOT_FINGERPRINTED = ("cache_dir", "num_threads", "batch_size", "device")
SAMPLE_ROWS = 3  # users shown in the `explore/samples` table (sample 0 of every backbone)


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
    """`sampling.backbones` keyed by each config's `name` (the tag of its profiles), not by slot."""
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
    return {name: {k: v for k, v in c.items() if k not in NOT_FINGERPRINTED} for name, c in resolved.items()}


def explore_split_samples(samples: pd.DataFrame, splits: list[str]) -> pd.DataFrame:
    """The samples of ``splits``; an unknown split name is an error."""
    known = set(samples["split"])
    unknown = sorted(set(splits) - known)
    if unknown:
        raise ValueError(f"sampling.splits names unknown splits {unknown}; the samples have {sorted(known)}")
    return samples[samples["split"].isin(splits)]


def tracker_metrics(summary: Mapping[str, Any], split: str) -> dict[str, float]:
    """Flatten one split's summary into `explore/<split>/[<backbone>/]<metric>` scalars."""
    metrics = {
        f"explore/{split}/{key}": float(summary[key])
        for key in ("profiles", "users", "mean_tokens", "degenerate_share", "seconds", "completion_tokens")
    }
    metrics |= {f"explore/{split}/across_{k}": float(v) for k, v in summary["across"].items()}
    for name, values in summary["per_backbone"].items():
        metrics |= {f"explore/{split}/{name}/{k}": float(v) for k, v in values.items()}
    return metrics


def run_explore(ctx: RunContext) -> dict[str, Any]:
    """The explore stage: `sampling.n` profiles per user of `sampling.splits` from every backbone.

    Writes (or resumes) the `profiles` artifact; logs the summary per split and a few profiles.
    """
    cfg, sampling = ctx.cfg, ctx.cfg.sampling
    samples, _ = load_or_build_samples(cfg, ctx.store)
    splits = [str(s) for s in sampling.splits]
    configs = backbones_by_name(sampling.backbones)
    with BackendPool(configs) as backends:
        frame = explore(
            explore_split_samples(samples, splits),
            backends,
            prompt_cfg=cfg.prompt,
            item_text_cfg=cfg.dataset.item_text,
            history_len=int(cfg.history.length),
            n=int(sampling.n),
            temperature=float(sampling.temperature),
            max_new_tokens=int(sampling.max_new_tokens),
            seed=int(cfg.seed),
            store=ctx.store,
            artifact_name=PROFILES,
            max_users=None if sampling.max_users is None else int(sampling.max_users),
            users_per_chunk=int(sampling.users_per_chunk),
            inputs={"backbones": backbone_identity(configs)},
        )
    summaries = {split: summarize_profiles(frame[frame["split"] == split]) for split in splits}
    for split, summary in summaries.items():
        print(format_summary(summary, split))
        ctx.tracker.log_metrics(tracker_metrics(summary, split))
    shown = frame[(frame["sample_idx"] == 0) & frame["user_id"].isin(frame["user_id"].unique()[:SAMPLE_ROWS])]
    ctx.tracker.log_table("explore/samples", shown.loc[:, ["user_id", "backbone", "text", "degenerate"]])
    print(f"profiles artifact: {ctx.store.path(PROFILES)}")
    return {"artifact": str(ctx.store.path(PROFILES)), "splits": summaries}
