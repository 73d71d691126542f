"""The runner's own bookkeeping: an unreadable `stage_times.json` never stops a run; it is named and kept aside."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lettingo.pipeline import TIMES_FILE, record_time


@pytest.mark.parametrize("content", ['{"data": 1.', "[1, 2]", ""])
def test_a_corrupted_stage_times_file_is_moved_aside_named_and_started_anew(tmp_path: Path, caplog,
                                                                           content: str) -> None:
    (tmp_path / TIMES_FILE).write_text(content)
    with caplog.at_level(logging.WARNING):
        record_time(tmp_path, "explore", 2.0)
    assert json.loads((tmp_path / TIMES_FILE).read_text()) == {"explore": 2.0}
    (aside,) = tmp_path.glob(f"{TIMES_FILE}.corrupt-*")
    assert aside.read_text() == content  # kept, not deleted
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / TIMES_FILE) in line and str(aside) in line


def test_stage_times_add_up_over_invocations(tmp_path: Path) -> None:
    record_time(tmp_path, "explore", 2.0)
    record_time(tmp_path, "explore", 1.5)
    record_time(tmp_path, "data", 0.5)
    assert json.loads((tmp_path / TIMES_FILE).read_text()) == {"explore": 3.5, "data": 0.5}
