"""Process set-up every stage shares: seeds, torch's CPU thread count, third-party deprecation noise, the Trainer,
and giving the accelerator's memory back between stages."""

from __future__ import annotations

import gc
import logging
import random
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

if TYPE_CHECKING:
    import lightning.pytorch as L

#: Deprecations raised inside third-party code by its own calls (nothing of ours can change them); silenced
#: by exact message so that a run log shows only warnings about what lettingo does.
THIRD_PARTY_DEPRECATIONS = (
    # lightning/pytorch/utilities/_pytree.py on torch >= 2.10 (Lightning's own use of torch's pytree API)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
#: Lightning's notices about what lettingo does on purpose, silenced by exact message: the frozen base model is
#: kept in eval mode while only its LoRA adapter trains (no dropout in the base, as TRL's `disable_dropout`), and
#: a fit writes its epoch-end checkpoints into a folder that may hold a killed run's, which it resumes from.
INTENDED_LIGHTNING_NOTICES = (
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"Checkpoint directory .* exists and is not empty",
)

#: Loggers that write an INFO line per HTTP request or per retry (the openai SDK's client and its HTTP library):
#: an API run sends thousands of requests, and OpenAIClient already warns once per retry. Their warnings stay.
PER_REQUEST_LOGGERS = ("httpx", "httpx2", "openai")


#: What :func:`release_accelerator_memory` shuts down first (engines of lower layers register here, e.g. vLLM's).
_RELEASERS: list[Callable[[], None]] = []


def on_release(release: Callable[[], None]) -> None:
    """Have :func:`release_accelerator_memory` call ``release`` (once, however often it is registered), so that
    an engine this module cannot import (the layers below it may not be imported here) is shut down with the rest."""
    if release not in _RELEASERS:
        _RELEASERS.append(release)


def free_accelerator_cache() -> None:
    """Collect garbage (models in reference cycles) and hand torch's cached CUDA blocks back to the driver; without
    CUDA only the collection runs."""
    gc.collect()
    torch = sys.modules.get("torch")  # a process that never imported torch holds no CUDA memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_accelerator_memory() -> None:
    """Give back what this process holds on the accelerator: shut down what registered with :func:`on_release`
    (every vLLM engine), then :func:`free_accelerator_cache`.

    Call it at the end of every stage and before an engine starts: vLLM refuses to start when less than its
    ``gpu_memory_utilization`` share is free, which a model or an optimizer state left from an earlier stage of
    the same process (an 8B f_Rec, a DPO fit) would take. A no-op apart from ``gc.collect()`` on a CPU.
    """
    for release in list(_RELEASERS):
        release()
    free_accelerator_cache()


#: The start of Lightning's INFO lines that say nothing about the run (advertising another product).
LIGHTNING_TIPS = ("💡 Tip:",)
#: The loggers Lightning's rank-zero lines come from (whichever of its packages was imported last names it).
LIGHTNING_RANK_ZERO = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class DropLightningTips(logging.Filter):
    """Drops a log record that starts with one of :data:`LIGHTNING_TIPS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is kept."""
        return not record.getMessage().startswith(LIGHTNING_TIPS)


def route_lightning_logs() -> None:
    """Lightning's log lines once, through the run's own handlers (the console and the run folder's log), tips
    dropped: importing `lightning` gives its logger a console handler of its own beside the root's, so every
    line ("GPU available: ...") was printed twice. Call it after the run's logging is configured."""
    import lightning  # noqa: F401  (its import adds the handler removed here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for name in LIGHTNING_RANK_ZERO:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLightningTips) for f in logger.filters):
            logger.addFilter(DropLightningTips())


#: The log file's format for what :func:`show` prints: the text alone, no time or level prefix.
_AS_PRINTED = logging.Formatter("%(message)s")


def show(text: str) -> None:
    """Print a result for the reader (a table, a summary line) and keep it, as printed, in the run's log file
    (Hydra's file handler: `cli.log`), where logging alone would prefix every line of a table."""
    print(text)
    record = logging.LogRecord("lettingo.results", logging.INFO, __file__, 0, "%s", (text,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            kept = handler.formatter
            handler.setFormatter(_AS_PRINTED)
            try:
                handler.emit(record)
            finally:
                handler.setFormatter(kept)


def quiet_third_party_deprecations() -> None:
    """Silence the deprecations of THIRD_PARTY_DEPRECATIONS (FutureWarning/DeprecationWarning), Lightning's
    INTENDED_LIGHTNING_NOTICES, transformers' model-loading bars (one per load, each done in a second) and the
    INFO lines of PER_REQUEST_LOGGERS in this process: a run's log keeps one bar per long step and the warnings
    about what lettingo does."""
    for name in PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in THIRD_PARTY_DEPRECATIONS:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=message, category=category)
    for message in INTENDED_LIGHTNING_NOTICES:
        warnings.filterwarnings("ignore", message=message)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def seed_everything(seed: int, num_threads: int | None = None) -> None:
    """Seed Python, NumPy and torch; set torch's CPU thread count when given."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(int(num_threads))


def lightning_trainer(trainer_cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The Lightning Trainer of ``trainer_cfg`` (a ``trainer`` config node) with ``overrides`` on top.

    Its progress bar is tqdm's: Lightning picks Rich's when rich is installed, and Rich draws nothing
    into a redirected log (a batch job's, nohup's) until the fit has ended.
    """
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import TQDMProgressBar

    callbacks = list(overrides.pop("callbacks", []))
    if overrides.get("enable_progress_bar", trainer_cfg.get("enable_progress_bar", True)):
        callbacks.append(TQDMProgressBar())
    return instantiate(trainer_cfg, **overrides, callbacks=callbacks)
