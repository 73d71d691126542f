"""Prompt templates, profile exploration (backbones x N) and the profile store."""
