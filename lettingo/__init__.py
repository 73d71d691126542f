"""LettinGo: learning to write user profiles that help a recommender (KDD 2025, arXiv 2506.18309)."""

import importlib
from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree, shipped inside the package so that a non-editable install composes it.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

# Registers the config schema (`config_schema`, the first entry of conf/config.yaml's defaults) in Hydra's
# ConfigStore, so that whatever composes CONFIG_DIR finds it.
import lettingo.schemas  # noqa: E402, F401

#: The Python API (lettingo/api.py), imported on first use so that `import lettingo` stays light.
API = ("compose", "run", "load_results")


def __getattr__(name: str) -> object:
    """``lettingo.compose``, ``lettingo.run`` and ``lettingo.load_results`` from :mod:`lettingo.api`."""
    if name in API:  # imported by name: a report script that imports `lettingo` never loads the training stack
        return getattr(importlib.import_module("lettingo.api"), name)
    raise AttributeError(f"module 'lettingo' has no attribute {name!r}")
