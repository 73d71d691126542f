"""The Trainer every stage builds from the composed `trainer` config."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig

from lettingo.runtime import DropLightningTips, lightning_trainer, route_lightning_logs


def test_trainer_draws_tqdm_progress_and_keeps_the_stage_callbacks(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg()
    checkpoint = ModelCheckpoint()
    trainer = lightning_trainer(cfg.trainer, max_epochs=2, callbacks=[checkpoint], logger=False)
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)  # not Rich's, which logs nothing until the end
    assert checkpoint in trainer.callbacks
    assert trainer.max_epochs == 2


@pytest.mark.parametrize("where", ["config", "override"])
def test_trainer_without_progress_bar_has_none(compose_cfg: Callable[..., DictConfig], where: str) -> None:
    if where == "config":
        trainer = lightning_trainer(compose_cfg(["trainer.enable_progress_bar=false"]).trainer, logger=False)
    else:
        trainer = lightning_trainer(compose_cfg().trainer, enable_progress_bar=False, logger=False)
    assert trainer.progress_bar_callback is None


def test_lightning_lines_go_once_through_the_runs_handlers_without_tips(caplog: pytest.LogCaptureFixture) -> None:
    import lightning

    assert lightning.__version__
    route_lightning_logs()
    route_lightning_logs()  # twice: still one filter, no handler
    assert logging.getLogger("lightning").handlers == [] and logging.getLogger("lightning").propagate
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    assert sum(isinstance(f, DropLightningTips) for f in logging.getLogger(caplog.records[0].name).filters) == 1


def test_intended_lightning_notices_and_loading_bars_are_silenced_the_rest_is_not() -> None:
    import warnings

    from transformers.utils import logging as transformers_logging

    from lettingo.runtime import quiet_third_party_deprecations

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_deprecations()
        warnings.warn("Found 33 module(s) in eval mode at the start of training. This may lead to ...", stacklevel=1)
        warnings.warn("Checkpoint directory /x/align/dpo exists and is not empty.", stacklevel=1)
        warnings.warn("Found 2 module(s) that lettingo did not expect", stacklevel=1)
    assert [str(w.message) for w in caught] == ["Found 2 module(s) that lettingo did not expect"]
    assert not transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()


def test_per_request_lines_of_the_http_client_are_silenced_its_warnings_are_not(caplog) -> None:
    from lettingo.runtime import quiet_third_party_deprecations

    client = logging.getLogger("httpx2")
    before = client.level
    try:
        quiet_third_party_deprecations()
        with caplog.at_level(logging.INFO):
            client.info('HTTP Request: POST http://127.0.0.1/v1/completions "HTTP/1.1 200 OK"')
            logging.getLogger("openai._base_client").info("Retrying request in 0.5 seconds")
            client.warning("a connection pool is full")
        assert [r.getMessage() for r in caplog.records] == ["a connection pool is full"]
    finally:
        client.setLevel(before)
        logging.getLogger("openai").setLevel(logging.NOTSET)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
