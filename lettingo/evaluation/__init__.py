"""Metrics, confidence intervals, tables and plots (a leaf: anyone may use it)."""
