#!/usr/bin/env bash
# One device call: the HF kernel path's GPU smoke (benchmarks/hf_gpu_smoke.py) and the
# profiler's search at 32K calibration (benchmarks/search_gpu.sh), results into $OUT.
set -uo pipefail
pip install -q --no-deps -e . >/dev/null 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/smoke.log"
python -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)" | tee -a "$OUT/smoke.log"
export ATTNGEN_AUTOTUNE=0 ATTNGEN_CACHE_DIR=/tmp/agc PYTHONUNBUFFERED=1
timeout ${SMOKE_S:-300} python benchmarks/hf_gpu_smoke.py --lengths 8192 32768 --layers 2 \
  --decode-cache 32768 2>&1 | tee -a "$OUT/smoke.log" | tail -30
timeout ${SEARCH_S:-200} bash benchmarks/search_gpu.sh "$OUT/search" 32768 2 2>&1 | tail -25
