#!/usr/bin/env bash
# `attngen search` on one GPU at 32K-token calibration: a random-weight Llama-3-8B shape cut
# to 4 layers (hidden 4096, 32 query / 8 KV heads, head_dim 128), bf16, 2 calibration
# samples of 32768 random tokens, validation at 16384. Random weights: only the time and
# the memory mean anything, not the plan. Writes OUTDIR/plan.json (its "timing": model
# load, calibration forward, scoring, selection, validation, peak GPU memory) and
# OUTDIR/search.log. Usage, from the repository root: bash benchmarks/search_gpu.sh OUTDIR
# [LENGTH] [SAMPLES]   (e.g. on the device machine: bash benchmarks/search_gpu.sh "$OUT")
set -euo pipefail
out=${1:?usage: search_gpu.sh OUTDIR [LENGTH] [SAMPLES]}
length=${2:-32768}
samples=${3:-2}
mkdir -p "$out"
export ATTNGEN_CACHE_DIR=${ATTNGEN_CACHE_DIR:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
timeout 600 python3 -m attngen search llama3-8b:layers=4 --device cuda --dtype bf16 \
  --lengths "$length" --samples "$samples" --validate-length $((length / 2)) \
  --density 0.3 --out "$out/plan.json" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|sample/s\]$" \
  | tee "$out/search.log"
echo "wall $(( $(date +%s) - start )) s (python start and imports included)" | tee -a "$out/search.log"
python3 -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['timing'], indent=1))" \
  "$out/plan.json" | tee -a "$out/search.log"
