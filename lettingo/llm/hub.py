"""Models named by a Hugging Face Hub id (``org/name`` or ``org/name@revision``), found in the HF cache.

Every model slot (generators, the LLM and cross-encoder f_Recs, the DPO policy) ends in
:func:`resolve_pretrained`, which turns a local folder or a Hub id into the local folder that
``from_pretrained`` (or vLLM) reads. A Hub id is looked up in the Hugging Face cache
(``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``, read at each call);
with ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set nothing is fetched and a model that is
not cached is a one-line error saying how to fetch it; otherwise the snapshot is downloaded (or
brought up to date) into that cache first. Nothing here runs code from a repository.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

#: ``org/name`` with an optional ``@revision`` (a branch, tag or commit hash).
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<revision>[^\s@]+))?")
#: Files of a model repository that no slot reads: original (non-transformers) checkpoints and other
#: frameworks' exports. Used both when downloading and when checking a cached snapshot is complete.
IGNORE_PATTERNS = (
    "original/*", "consolidated*", "*.pth", "*.gguf", "*.onnx", "onnx/*", "openvino/*", "*.msgpack", "*.h5",
    "*.ot", "*.tflite", "coreml/*",
)
TRUE = {"1", "ON", "YES", "TRUE"}


class ModelNotCachedError(FileNotFoundError):
    """A Hub model that is not in the local cache while the Hub may not be reached."""


class HubFetchError(RuntimeError):
    """A Hub model that could not be fetched (unknown, gated, or the Hub unreachable)."""


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of a Hub id ``org/name[@revision]``, or ``None`` when ``spec`` is not one."""
    match = HUB_ID.fullmatch(spec)
    return None if match is None else (match["repo"], match["revision"])


def hub_offline() -> bool:
    """Whether the Hub may not be contacted: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is true now."""
    return any(os.environ.get(name, "").upper() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (huggingface_hub reads it only at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def fetch_hint(repo_id: str, revision: str | None) -> str:
    """The command that puts ``repo_id`` into the cache."""
    flag = "" if revision is None else f" --revision {revision}"
    return f"`hf download {repo_id}{flag}` (`huggingface-cli download {repo_id}{flag}` with huggingface_hub < 1.0)"


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Local folder of ``repo_id`` at ``revision`` (default ``main``) in the HF cache, fetched first when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    cache, offline = hub_cache_dir(), hub_offline()
    name = repo_id if revision is None else f"{repo_id}@{revision}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                        ignore_patterns=list(IGNORE_PATTERNS)))
    except LocalEntryNotFoundError as error:
        partial = getattr(error, "snapshot_path", None)  # IncompleteSnapshotError: fetched with --include
        if partial and (Path(partial) / "config.json").is_file():
            log.warning("%s: the cached snapshot %s lacks some files of the repository; using it as it is",
                        name, partial)
            return Path(partial)
        state = "is only partly" if partial else "is not"
        if offline or "HF_HUB_OFFLINE" in str(error):
            raise ModelNotCachedError(_not_cached(name, cache, state, repo_id, revision)) from None
        raise HubFetchError(f"model {name} {state} in the Hugging Face cache ({cache}) and the Hub could not be "
                            f"reached ({_first_line(error)}): fetch it where it can with "
                            + fetch_hint(repo_id, revision)) from None
    except GatedRepoError:
        raise HubFetchError(f"model {name} is gated on the Hugging Face Hub: accept its licence on "
                            f"https://huggingface.co/{repo_id} and log in with `hf auth login`") from None
    except HfHubHTTPError as error:  # unknown repository or revision, bad token, Hub errors
        raise HubFetchError(f"model {name} could not be fetched from the Hugging Face Hub: "
                            f"{type(error).__name__}: {_first_line(error)}") from None
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model {name}: the Hugging Face snapshot {folder} has no config.json")
    return folder


def _not_cached(name: str, cache: Path, state: str, repo_id: str, revision: str | None) -> str:
    """The one line of a Hub model missing from the cache while offline."""
    flags = [n for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(n, "").upper() in TRUE]
    why = f" and {flags[0]}={os.environ[flags[0]]}" if flags else " and the Hub is off (HF_HUB_OFFLINE)"
    return f"model {name} {state} in the Hugging Face cache ({cache}){why}: fetch it first with " + fetch_hint(
        repo_id, revision
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def resolve_pretrained(spec: str, what: str = "model", others: str = "") -> Path:
    """Local ``from_pretrained`` folder of ``spec``: an existing folder, or a Hub id resolved by :func:`hub_snapshot`.

    An existing folder wins over a Hub id of the same spelling. ``what`` and ``others`` (the other
    spellings the caller accepts, e.g. ``"bundled:<name>, tiny_random[:seed], "``) word the error.
    """
    path = Path(spec).expanduser()
    hub = None if path.is_dir() else parse_hub_id(spec)
    if hub is not None:
        return hub_snapshot(*hub)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{what} {spec!r} is neither {others}a folder with a config.json nor a Hub id org/name[@revision]"
        )
    return path
