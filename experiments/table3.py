"""Table 3: no DPO vs SFT vs DPO on the same users, accuracy and F1, the paper's accuracy beside ours.

Run: python experiments/table3.py [run folders ...] [--wandb-project P] [--out outputs/reports]
"""

from __future__ import annotations

from pathlib import Path

from lettingo.reports import PAPER_TABLE3, TABLE3_METHODS, RunRecord, latest_by, report_cli, write_report


def build(records: list[RunRecord], out: Path) -> dict[str, Path]:
    """Rows `<dataset> | no DPO / sft / dpo` from the latest run of each dataset."""
    rows, reference = {}, {}
    for dataset, record in latest_by(records, lambda r: r.get("dataset.name")).items():
        found = record.intervals()
        for method in TABLE3_METHODS:
            if method in found:
                rows[f"{dataset} | {method}"] = found[method]
        for label, accuracy in PAPER_TABLE3.get(dataset, {}).items():
            reference[f"{dataset} | {label}"] = {"accuracy": accuracy}
    return write_report("table3", rows, out, reference=reference, title="Table 3: no DPO vs SFT vs DPO")


if __name__ == "__main__":
    report_cli(__doc__, build)
