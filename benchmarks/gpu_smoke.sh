#!/usr/bin/env bash
# GPU smoke for a borrowed GPU machine (offline, torch + transformers installed, 64 MiB carried): random-weight
# models of SmolLM2-135M-Instruct's and LLaMA-3-8B-Instruct's shapes built on the GPU, timed through the
# transformers generation path, the zero-shot f_Rec and the Lightning DPO fit (bf16, gradient checkpointing):
# profiles/s, f_Rec cases/s and DPO s/pair at the paper's shapes (benchmarks/gpu_shapes.py). `--pipeline` runs the
# whole loop on ML-100K instead. Missing packages are installed from the wheels carried in benchmarks/wheels/ (or
# --wheels DIR): `benchmarks/gpu_smoke.sh --print-build` prints how to build that folder. Nothing is fetched.
# Run: benchmarks/gpu_smoke.sh [--wheels DIR] [--timeout 480]
#      benchmarks/gpu_smoke.sh --dry-run   # print the commands only
#      benchmarks/gpu_smoke.sh --cpu --no-wheels   # rehearse on a CPU machine (tiny shapes, seconds)
#      benchmarks/gpu_smoke.sh --pipeline [--users 300] [--test-users 150] [--run-dir DIR] [--bare]
# PYTHON=<python with torch + transformers> picks the interpreter (default: python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "gpu_smoke: no '$python' on PATH; set PYTHON to the Python that has torch and transformers" >&2
    exit 2
fi
exec "$python" "$here/gpu_smoke.py" "$@"
