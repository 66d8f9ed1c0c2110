#!/usr/bin/env bash
# One device call (right after gpu_e2e_session.sh, on the warm machine): the end-to-end bench
# of llama3-8b:layers=4 with the plan `attngen search` found on an H100 at 32K calibration
# (docs/benchmarks/e2e/searched_plan_llama3-8b_h100.json; random weights, so the plan says
# what a search of this shape picks, not what a trained model needs), at 32K/64K/128K with
# decode at 128K × 8. At most 3 files into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 ATTNGEN_AUTOTUNE=0 ATTNGEN_CACHE_DIR=/tmp/agc
python3 -c "import attngen" 2>/dev/null || python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING | tail -1
timeout ${E2E_S:-400} python3 -m attngen bench --model llama3-8b:layers=4 \
  --plan docs/benchmarks/e2e/searched_plan_llama3-8b_h100.json \
  --lengths ${LENGTHS:-32768 65536 131072} --batch 1 --decode-cache 131072 --decode-batch 8 \
  --out "$OUT/e2e_searched.json" --md "$OUT/e2e_searched.md" > "$OUT/searched.log" 2>&1
echo "searched exit $? at $(date -u +%T)"; tail -30 "$OUT/searched.log"
