"""Build a model folder once under a cache directory: locked, atomic, reused afterwards."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)


def materialize(folder: Path, build: Callable[[Path], None]) -> Path:
    """Return ``folder``, first calling ``build(tmp)`` to fill it when it does not exist yet.

    ``build`` writes into an empty temporary folder beside ``folder``, which is renamed into place
    only when ``build`` returns, so a crash never leaves a half-written ``folder``. A lock file
    (``<folder>.lock``) makes a second process wait for the first instead of building twice.
    """
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f"{folder.name}.lock"):
        if folder.is_dir():  # another process built it while we waited
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        start = time.perf_counter()
        try:
            build(tmp)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s in %.1f s", folder, time.perf_counter() - start)
    return folder
