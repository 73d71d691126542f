"""Redraw a committed results file's paired differences as a forest plot, from its CSV alone.

The results scripts draw this plot themselves; this script redraws it where the run folder is gone, from the
numbers the CSV holds (section, row, metric, value, low, high).

Run: python experiments/forest_plot.py results/ml1m_cpu_k3.csv --title "ml1m, K = 3, H = 30, n = 1000: accuracy"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lettingo.reports import forest_plot


def main(argv: list[str] | None = None) -> Path:
    """Command line: a results CSV in, its forest plot (beside it, same stem, .png) out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="a results CSV written by a results script")
    parser.add_argument("--title", required=True, help="the figure's title (plain text: dataset, K, H, n)")
    parser.add_argument("--section", default="paired", help="the CSV section holding the differences")
    parser.add_argument("--metric", default="accuracy", help="the metric drawn")
    parser.add_argument("--reference", default=None, help="rows are methods: label each '<row> − <reference>'")
    parser.add_argument("--unit", default="points", help="the axis' unit")
    parser.add_argument("--scale", type=float, default=100.0, help="factor on the values (100: fractions as points)")
    parser.add_argument("--out", default=None, help="the PNG (default: the CSV's path with .png)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.csv).with_suffix(".png")
    path = forest_plot(args.csv, args.section, args.metric, out, args.title, args.reference, args.unit, args.scale)
    print(f"plot: {path}")
    return path


if __name__ == "__main__":
    main()
