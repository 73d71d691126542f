"""LettinGo: learning to write user profiles that help a recommender (KDD 2025, arXiv 2506.18309)."""

__version__ = "0.1.0"
