"""History-length ablation: each method at H = 30 / 50 / 70, accuracy and F1 with 95% CIs.

Run: python experiments/history_ablation.py outputs/sweep_history_length/multirun/<date_time>
"""

from __future__ import annotations

from pathlib import Path

from lettingo.reports import RunRecord, latest_by, report_cli, write_report


def build(records: list[RunRecord], out: Path) -> dict[str, Path]:
    """Rows `<dataset> | <method> | H=<h>` from the latest run of each (dataset, H); a tidy CSV (dataset, method,
    H columns) and the plot of accuracy against H, one line per (dataset, method)."""
    rows, factors = {}, {}
    runs = latest_by(records, lambda r: (r.get("dataset.name"), r.get("history.length")))
    for (dataset, history), record in sorted(runs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
        found = record.intervals()
        for method in (record.no_profile(), *record.alignment_rows()):
            if method in found:
                label = f"{dataset} | {method} | H={history}"
                rows[label] = found[method]
                factors[label] = {"dataset": dataset, "method": method, "H": history}
    datasets = ", ".join(sorted({str(d) for d, _ in runs}))
    recent = "/".join(sorted({str(r.get("history.recent")) for r in runs.values()}))
    users = "/".join(sorted({str(len(r.comparison.users)) for r in runs.values()}))
    return write_report("history_ablation", rows, out, runs=list(runs.values()), factors=factors, against="H",
                        title=f"Older-history length H: {datasets}, K = {recent}, n = {users} held-out users")


if __name__ == "__main__":
    report_cli(__doc__, build)
