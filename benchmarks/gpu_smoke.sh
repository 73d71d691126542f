#!/usr/bin/env bash
# GPU smoke: the whole LettinGo loop on ML-100K with SmolLM2-135M-Instruct on one CUDA GPU (a few hundred
# users, trainer=gpu, bf16, GPU-sized batches; under 8 minutes on an H200), then profiles/s, f_Rec cases/s
# and DPO s/pair read from its run folder. Missing packages are installed from the wheels carried in
# benchmarks/wheels/ (or --wheels DIR): see benchmarks/gpu_smoke.py for how to build that folder
# (`benchmarks/gpu_smoke.sh --print-build [--bare]` prints the commands). Nothing is fetched.
# Run: benchmarks/gpu_smoke.sh [--users 300] [--test-users 150] [--wheels DIR] [--run-dir DIR] [--bare]
#      benchmarks/gpu_smoke.sh --dry-run   # print the commands only
#      benchmarks/gpu_smoke.sh --cpu --no-wheels --users 6 --test-users 4   # rehearse on a CPU machine
# PYTHON=<python with torch + transformers> picks the interpreter (default: python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "gpu_smoke: no '$python' on PATH; set PYTHON to the Python that has torch and transformers" >&2
    exit 2
fi
exec "$python" "$here/gpu_smoke.py" "$@"
