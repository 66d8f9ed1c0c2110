#!/usr/bin/env bash
# Issue 17 end to end: `attngen bench --model` on one GPU (H100 or H200), in one device call.
#   bash benchmarks/e2e_gpu.sh            # writes into "$OUT" (the device's output folder)
# 1. llama3-8b:layers=4 (random weights): prefill at 32K, 64K, 128K, batch 1 and 4 (ragged,
#    left-padded), decode against 131072 cached keys at batch 8;
# 2. qwen2.5-7b:layers=4: prefill at 32K and 64K, batch 1 and 4, no decode.
# Budget: about 9 minutes of wall time in all; each run has a timeout, and every row is also
# appended to <json>.rows.jsonl as it comes, so a cut-off run keeps what it measured.
# ATTNGEN_AUTOTUNE=0: each generated kernel takes its first configuration (the first call
# then compiles in seconds instead of tuning for tens of seconds per pattern and shape).
set -uo pipefail
OUT=${OUT:-e2e-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export ATTNGEN_AUTOTUNE=0
export ATTNGEN_CACHE_DIR=${ATTNGEN_CACHE_DIR:-/tmp/attngen-e2e-cache}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/e2e_env.log"

timeout 390 "$PY" -m attngen bench --model llama3-8b:layers=4 \
  --lengths 32768 65536 131072 --batch 1 4 --decode-cache 131072 --decode-batch 8 \
  --out "$OUT/e2e_llama3-8b.json" --md "$OUT/e2e_llama3-8b.md" 2>&1 | tee "$OUT/e2e_llama3-8b.log"
echo "llama3-8b exit ${PIPESTATUS[0]} at $(date -u +%T)" | tee -a "$OUT/e2e_env.log"

timeout 140 "$PY" -m attngen bench --model qwen2.5-7b:layers=4 \
  --lengths 32768 65536 --batch 1 4 --decode-cache 0 \
  --out "$OUT/e2e_qwen2.5-7b.json" --md "$OUT/e2e_qwen2.5-7b.md" 2>&1 | tee "$OUT/e2e_qwen2.5-7b.log"
echo "qwen2.5-7b exit ${PIPESTATUS[0]} at $(date -u +%T)" | tee -a "$OUT/e2e_env.log"
