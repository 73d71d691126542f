"""Single- vs multi-LLM exploration: the aligned generator's results when one or several backbones explored.

Run: python experiments/single_vs_multi.py outputs/sweep_exploration/multirun/<date_time>
"""

from __future__ import annotations

from pathlib import Path

from lettingo.evaluation.methods import DPO, NO_DPO
from lettingo.reports import RunRecord, latest_by, report_cli, write_report


def exploration(record: RunRecord) -> str:
    """`single` or `multi (a+b)` from the backbones that explored."""
    names = sorted(b.get("name", key) for key, b in (record.get("sampling.backbones") or {}).items())
    return "single" if len(names) <= 1 else f"multi ({'+'.join(names)})"


def build(records: list[RunRecord], out: Path) -> dict[str, Path]:
    """Rows `<dataset> | <exploration> | no DPO / DPO` from the latest run of each setting."""
    rows, factors = {}, {}
    latest = latest_by(records, lambda r: (r.get("dataset.name"), exploration(r)))
    for (dataset, setting), record in latest.items():
        found = record.intervals()
        for method in (NO_DPO, DPO):
            if method in found:
                rows[f"{dataset} | {setting} | {method}"] = found[method]
                factors[f"{dataset} | {setting} | {method}"] = {"dataset": dataset, "exploration": setting,
                                                               "method": method}
    return write_report("single_vs_multi", rows, out, title="Single vs multi-LLM exploration",
                        runs=list(latest.values()), factors=factors)


if __name__ == "__main__":
    report_cli(__doc__, build)
