"""The code version and the invocation log every run folder keeps."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lettingo import provenance
from lettingo.provenance import INVOCATIONS_FILE, code_version, read_invocations, record_invocation


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with one commit, standing in for the lettingo source."""
    root = tmp_path / "checkout"
    (root / "lettingo").mkdir(parents=True)
    (root / "lettingo" / "__init__.py").write_text("VERSION = 1\n")
    git(root.parent, "init", "-q", str(root))
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    monkeypatch.setattr(provenance, "SOURCE_ROOT", root.resolve())
    return root


def test_code_version_is_the_checkout_head_and_sees_local_changes(checkout: Path) -> None:
    assert code_version() == {"git_commit": git(checkout, "rev-parse", "HEAD"), "git_dirty": False}
    (checkout / "untracked.txt").write_text("not part of the code\n")
    assert code_version()["git_dirty"] is False  # untracked files (outputs, notes) are not the code
    (checkout / "lettingo" / "__init__.py").write_text("VERSION = 2\n")
    assert code_version()["git_dirty"] is True


def test_no_commit_outside_the_top_of_a_checkout(checkout: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    nested = checkout / ".venv" / "site-packages"  # an install inside some other repository
    nested.mkdir(parents=True)
    monkeypatch.setattr(provenance, "SOURCE_ROOT", nested.resolve())
    assert code_version() == {"git_commit": None, "git_dirty": None}
    bare = tmp_path / "wheel"
    bare.mkdir()
    monkeypatch.setattr(provenance, "SOURCE_ROOT", bare.resolve())
    assert code_version() == {"git_commit": None, "git_dirty": None}


def test_invocations_append_in_order(tmp_path: Path) -> None:
    version = {"git_commit": "a" * 40, "git_dirty": False}
    first = record_invocation(tmp_path, "pipeline", ["/venv/bin/lettingo", "experiment=ml1m_cpu"],
                              ["experiment=ml1m_cpu"], version)
    second = record_invocation(tmp_path, "test", ["/venv/bin/lettingo", "stage=test", "run_dir=a b"], ["stage=test"],
                               {"git_commit": "b" * 40, "git_dirty": True})
    assert first["command"] == "lettingo experiment=ml1m_cpu"
    assert second["command"] == "lettingo stage=test 'run_dir=a b'"  # quoted as a shell would need it
    assert read_invocations(tmp_path) == [first, second]
    module = record_invocation(tmp_path, "data", ["/src/lettingo/__main__.py", "stage=data"], [], version)
    assert module["command"] == "python -m lettingo stage=data"
    lines = (tmp_path / INVOCATIONS_FILE).read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["pipeline", "test", "data"]
    assert read_invocations(tmp_path / "elsewhere") == []
