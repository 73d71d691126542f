"""Table 3: no DPO vs every method of `align.methods` (the paper: SFT and DPO) on the same users, accuracy and F1,
the paper's accuracy beside ours.

Also the paired differences against DPO (method minus DPO, on each run's users).

Run: python experiments/table3.py [run folders ...] [--out outputs/reports]
"""

from __future__ import annotations

from pathlib import Path

from lettingo.evaluation.methods import DPO
from lettingo.reports import PAPER_TABLE3, RunRecord, latest_by, report_cli, write_report


def build(records: list[RunRecord], out: Path) -> dict[str, Path]:
    """Rows `<dataset> | no DPO / SFT / DPO` from the latest run of each dataset."""
    rows, reference, paired = {}, {}, {}
    latest = latest_by(records, lambda r: r.get("dataset.name"))
    for dataset, record in latest.items():
        found, versus = record.intervals(), record.versus(DPO)
        for method in record.alignment_rows():
            if method in found:
                rows[f"{dataset} | {method}"] = found[method]
            if method in versus:
                paired[f"{dataset} | {method}"] = versus[method]
        for label, accuracy in PAPER_TABLE3.get(dataset, {}).items():
            reference[f"{dataset} | {label}"] = {"accuracy": accuracy}
    return write_report("table3", rows, out, reference=reference, title="Table 3: no DPO vs SFT vs DPO",
                        paired=paired, paired_reference=DPO, runs=list(latest.values()))


if __name__ == "__main__":
    report_cli(__doc__, build)
