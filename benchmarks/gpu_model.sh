#!/usr/bin/env bash
# The model's GPU path on a CUDA machine, in a few minutes: the gpu-marked tests (CUDA fp16 vs
# CPU fp32 outputs) and the fp16 forward benchmark. Run from the repository root:
#   bash benchmarks/gpu_model.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
"$PY" -m pytest tests/test_model.py -m gpu -q -p no:cacheprovider
"$PY" -m pytest benchmarks/test_model.py -k cuda --benchmark-only -q -p no:cacheprovider \
    --benchmark-json "${OUT:-.}/bench_model_gpu.json"
