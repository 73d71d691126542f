"""API-model comparison (the paper's GPT-4o rows): profiles from an API backbone vs the aligned small model.

Run: python experiments/api_comparison.py [run folders ...]  (runs made with backbone=openai or with an
openai backbone among sampling.backbones)
"""

from __future__ import annotations

from pathlib import Path

from lettingo.evaluation.methods import DPO
from lettingo.reports import RunRecord, report_cli, write_report


def api_backbones(record: RunRecord) -> list[str]:
    """Names of the run's backbones served over the OpenAI-compatible HTTP API."""
    backbones = {"primary": record.get("backbone") or {}, **(record.get("sampling.backbones") or {})}
    return sorted({b["name"] for b in backbones.values() if "OpenAI" in str(b.get("_target_", ""))})


def build(records: list[RunRecord], out: Path) -> dict[str, Path]:
    """Rows `<dataset> | <method>` for the API backbones' profiles and the aligned generator, per run."""
    rows, read = {}, []
    for record in records:
        apis = api_backbones(record)
        if not apis:
            continue
        read.append(record)
        found = record.intervals()
        for method in [*apis, record.no_profile(), DPO]:
            if method in found:
                rows[f"{record.get('dataset.name')} | {method} | {Path(record.source).name}"] = found[method]
    return write_report("api_comparison", rows, out, title="API-model profiles vs the aligned generator",
                        runs=read)


if __name__ == "__main__":
    report_cli(__doc__, build)
