"""Where a run folder's results came from: the code's git commit and every invocation that ran in it.

A run folder is often finished over several invocations (after a kill, stage by stage, on new code), so
each invocation appends one line to ``invocations.jsonl``: when it started, its command line and
overrides, the stage asked for, and the commit of the lettingo source that ran (with whether tracked
files differed from it).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

INVOCATIONS_FILE = "invocations.jsonl"
#: The checkout the running package was imported from (its parent folder holds `lettingo/`).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    """Output of ``git -C SOURCE_ROOT <args>`` (raises when git or the checkout is missing)."""
    return subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def code_version() -> dict[str, Any]:
    """``git_commit`` of the running lettingo source and ``git_dirty`` (tracked files differ from it).

    Both are None unless the package runs from the top of a git checkout (an installed wheel, or a
    virtual environment inside some other repository, has no commit of its own).
    """
    try:
        if Path(_git("rev-parse", "--show-toplevel")).resolve() != SOURCE_ROOT:
            return {"git_commit": None, "git_dirty": None}
        return {"git_commit": _git("rev-parse", "HEAD"),
                "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def record_invocation(run_dir: Path, stage: str, argv: Sequence[str], overrides: Sequence[str],
                      version: dict[str, Any]) -> dict[str, Any]:
    """Append this invocation to ``run_dir/invocations.jsonl``; return the line's record.

    ``argv`` is the process's command line (its program shown by name, `python -m lettingo` as such),
    ``overrides`` the Hydra overrides of this job (a multirun job's own, not the sweep's), ``version``
    :func:`code_version`.
    """
    program = Path(argv[0]).name if argv else ""
    shown = ["python", "-m", "lettingo"] if program == "__main__.py" else [program]
    command = [*shown, *argv[1:]] if argv else []
    entry = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "command": shlex.join(command),
             "overrides": list(overrides), "stage": stage, **version}
    with (Path(run_dir) / INVOCATIONS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    return entry


def read_invocations(run_dir: Path) -> list[dict[str, Any]]:
    """The invocations recorded in ``run_dir`` (oldest first; none for folders made before they were)."""
    path = Path(run_dir) / INVOCATIONS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
