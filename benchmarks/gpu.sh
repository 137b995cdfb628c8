#!/usr/bin/env bash
# The benchmarks that need a GPU, in one command and under 5 minutes on a CUDA machine: the
# model's CUDA cases (benchmarks/test_model.py -k cuda) and every end-to-end replay with the
# fusion node's model on CUDA, then the same report as `make bench`, written to $OUT.
#
#   bash benchmarks/gpu.sh                 # -> benchmarks/gpu/REPORT.md, figures/, results.json
#   OUT=/tmp/gpu bash benchmarks/gpu.sh
#
# It uses .venv when it exists (its torch must be a CUDA build); otherwise it makes one as the
# Makefile does, with --system-site-packages so a CUDA torch already on the machine is used.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
OUT=${OUT:-benchmarks/gpu}

if [ ! -x "$PY" ]; then
    python3 -m venv --system-site-packages "$VENV"
    "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q -e '.[dev]'
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'benchmarks/gpu.sh: torch sees no CUDA device; install a CUDA build of torch in $VENV')"

mkdir -p "$OUT"
start=$(date +%s)
FUSION_BENCH_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    benchmarks/test_model.py benchmarks/test_end_to_end.py \
    -k "cuda or test_real_time or test_lockstep" \
    --benchmark-json "$OUT/results.json" || status=$?
cp benchmarks/ratios.json "$OUT/ratios.json"
"$PY" -m benchmarks.report "$OUT/results.json" --ratios "$OUT/ratios.json" --out "$OUT"
echo "gpu.sh: done in $(( $(date +%s) - start )) s; report in $OUT/REPORT.md"
exit "${status:-0}"
