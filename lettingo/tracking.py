"""Experiment tracking behind one small interface: W&B (offline by default), CSV files, or nothing.

Stages log metrics named `<stage>/<split>/<metric>`, tables (pandas) and images through a
`Tracker`; Lightning training gets the matching Lightning logger from `lightning_logger()`.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd


class Tracker:
    """Base tracker: every method is a no-op; subclasses send what they can."""

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
    """Metrics appended to `metrics.csv`, tables as CSV, images listed in `images.csv`, under `dir`."""

    def __init__(self, dir: str | Path) -> None:
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)

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
    """A W&B run; offline by default, its files under ``dir``.

    W&B's cache, config and data folders come from its environment variables (``WANDB_CACHE_DIR``, ...),
    which the `lettingo` command sets for the job (``hydra.job.env_set``) to folders inside the run folder;
    without them W&B uses the home folder.
    """

    def __init__(
        self,
        project: str,
        dir: str | Path,
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        mode: str = "offline",
    ) -> None:
        import wandb

        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            project=project, group=group, job_type=job_type, name=name, tags=list(tags), mode=mode,
            dir=str(self.dir), reinit="finish_previous",
        )

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
        """Finish the W&B run (marked failed when exit_code != 0)."""
        self.run.finish(exit_code=exit_code)
