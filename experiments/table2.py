"""Table 2: methods x datasets, accuracy and F1 with 95% CIs, the paper's accuracy beside ours.

Run: python experiments/table2.py [run folders ...] [--out outputs/reports]
"""

from __future__ import annotations

from pathlib import Path

from lettingo.reports import PAPER_TABLE2, RunRecord, latest_by, report_cli, write_report


def build(records: list[RunRecord], out: Path) -> dict[str, Path]:
    """One row per (dataset, method) from the latest run of each dataset, every method of its test stage."""
    rows, reference = {}, {}
    latest = latest_by(records, lambda r: r.get("dataset.name"))
    for dataset, record in latest.items():
        for method, found in record.intervals().items():
            rows[f"{dataset} | {method}"] = found
        for method, accuracy in PAPER_TABLE2.get(dataset, {}).items():
            reference[f"{dataset} | {method}"] = {"accuracy": accuracy}
    return write_report("table2", rows, out, reference=reference, title="Table 2: methods x datasets",
                        runs=list(latest.values()))


if __name__ == "__main__":
    report_cli(__doc__, build)
