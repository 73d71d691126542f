"""LettinGo: learning to write user profiles that help a recommender (KDD 2025, arXiv 2506.18309)."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree, shipped inside the package so that a non-editable install composes it.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

# Registers the config schema (`config_schema`, the first entry of conf/config.yaml's defaults) in Hydra's
# ConfigStore, so that whatever composes CONFIG_DIR finds it.
import lettingo.schemas  # noqa: E402, F401
