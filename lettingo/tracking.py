"""Experiment tracking behind one small interface: W&B (offline by default), CSV files, or nothing.

Stages log metrics named `<stage>/<role>/<metric>`, never with a swept value (H, K, a backbone name) in the
key, so every run of a sweep logs the same keys; tables (pandas) and images go through the same `Tracker`,
and Lightning training gets the matching Lightning logger from `lightning_logger()`. A run presents itself
by its :class:`RunIdentity` (name, group, tags, and the fields its ablations are grouped by).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class RunIdentity:
    """How a run shows in a tracker: ``name`` (its experiment and what it overrides), ``group`` (the experiment),
    ``job_type`` (the stage), ``tags`` (the overrides, the sweep, the debug setup, the user's tags) and
    ``fields``, one flat value per ablation axis, logged as the config's ``compare`` node."""

    name: str
    group: str
    job_type: str
    tags: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


class Tracker:
    """Base tracker: every method is a no-op; subclasses send what they can."""

    def describe(self, identity: RunIdentity) -> None:
        """Record who the run is (name, group, tags, fields to group by) before anything is logged."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the resolved run config."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record scalar metrics."""

    def log_table(self, key: str, frame: pd.DataFrame) -> None:
        """Record a table."""

    def log_image(self, key: str, path: str | Path) -> None:
        """Record an image file (a plot)."""

    def log_histogram(self, key: str, values: Sequence[float]) -> None:
        """Record a distribution of values."""

    def lightning_logger(self) -> Any:
        """The Lightning logger writing to the same place (False: none)."""
        return False

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; `exit_code` != 0 marks it failed."""


class NullTracker(Tracker):
    """Tracks nothing (tests); results still land in the run folder's artifacts."""


class CsvTracker(Tracker):
    """Metrics appended to `metrics.csv`, tables as CSV, images listed in `images.csv`, the identity in
    `run.json`, under `dir`."""

    def __init__(self, dir: str | Path) -> None:
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def describe(self, identity: RunIdentity) -> None:
        """Write the identity to `run.json`."""
        (self.dir / "run.json").write_text(json.dumps(asdict(identity), indent=2, default=list) + "\n")

    def _append(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        path = self.dir / name
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(header)
            writer.writerows(rows)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Append one row per metric: time, step, key, value."""
        now = time.time()
        self._append("metrics.csv", ("time", "step", "key", "value"), [(now, step, k, v) for k, v in metrics.items()])

    def log_table(self, key: str, frame: pd.DataFrame) -> None:
        """Write the table to `tables/<key>.csv` (slashes in the key become `__`)."""
        path = self.dir / "tables" / (key.replace("/", "__") + ".csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)

    def log_image(self, key: str, path: str | Path) -> None:
        """List the image's path under its key in `images.csv`."""
        self._append("images.csv", ("key", "path"), [(key, str(path))])

    def log_histogram(self, key: str, values: Sequence[float]) -> None:
        """Write the values to `tables/<key>.csv` (one column, `value`)."""
        self.log_table(key, pd.DataFrame({"value": list(values)}))

    def lightning_logger(self) -> Any:
        """A Lightning CSVLogger in the same folder."""
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(self.dir), name="lightning")


class WandbTracker(Tracker):
    """A W&B run, started by :meth:`describe` (its name, group, job type and tags come from the run's
    identity unless given here); offline by default, its files under ``dir``.

    W&B's cache, config and data folders come from its environment variables (``WANDB_CACHE_DIR``, ...),
    which the `lettingo` command sets for the job (``hydra.job.env_set``) to folders inside the run folder;
    without them W&B uses the home folder.
    """

    def __init__(
        self,
        project: str,
        dir: str | Path,
        entity: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        mode: str = "offline",
    ) -> None:
        self.dir = Path(dir)
        self.settings = {"project": project, "entity": entity, "group": group, "job_type": job_type, "name": name,
                         "mode": mode}
        self.tags = list(tags)
        self._run: Any = None

    def describe(self, identity: RunIdentity) -> None:
        """Start the W&B run under the identity's name, group, job type and tags (settings given win)."""
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        chosen = {"group": identity.group or None, "job_type": identity.job_type or None, "name": identity.name or None}
        settings = self.settings | {k: v for k, v in chosen.items() if self.settings[k] is None}
        self._run = wandb.init(**settings, tags=list(dict.fromkeys([*identity.tags, *self.tags])),
                               dir=str(self.dir), reinit="finish_previous")

    @property
    def run(self) -> Any:
        """The W&B run (started on first use when :meth:`describe` was not called)."""
        if self._run is None:
            self.describe(RunIdentity(name=self.settings["name"] or "", group=self.settings["group"] or "",
                                      job_type=self.settings["job_type"] or ""))
        return self._run

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Store the resolved config as the run's config."""
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics."""
        self.run.log(dict(metrics), step=step)

    def log_table(self, key: str, frame: pd.DataFrame) -> None:
        """Log a `wandb.Table`."""
        self.run.log({key: self._wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))})

    def log_image(self, key: str, path: str | Path) -> None:
        """Log a `wandb.Image` from a file."""
        self.run.log({key: self._wandb.Image(str(path))})

    def log_histogram(self, key: str, values: Sequence[float]) -> None:
        """Log a `wandb.Histogram`."""
        self.run.log({key: self._wandb.Histogram(list(values))})

    def lightning_logger(self) -> Any:
        """A Lightning WandbLogger attached to this run."""
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(experiment=self.run)

    def finish(self, exit_code: int = 0) -> None:
        """Finish the W&B run (marked failed when exit_code != 0), if it was started."""
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
