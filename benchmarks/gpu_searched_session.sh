#!/usr/bin/env bash
# One device call (right after gpu_e2e_session.sh, on the warm machine): the end-to-end bench
# of llama3-8b:layers=4 with the plan `attngen search` found on an H100 at 32K calibration
# (docs/benchmarks/e2e/searched_plan_llama3-8b_h100.json; random weights, so the plan says
# what a search of this shape picks, not what a trained model needs), at 32K/64K/128K with
# decode at 128K × 8; then `attngen bench --world 1` (issue 20's one-GPU run) and the
# kernel-cache latency (new-process compile and first call). At most 7 files into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 ATTNGEN_AUTOTUNE=0 ATTNGEN_CACHE_DIR=/tmp/agc
python3 -c "import attngen" 2>/dev/null || python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING | tail -1
timeout ${E2E_S:-330} python3 -m attngen bench --model llama3-8b:layers=4 \
  --plan docs/benchmarks/e2e/searched_plan_llama3-8b_h100.json \
  --lengths ${LENGTHS:-32768 65536 131072} --batch 1 --decode-cache 131072 --decode-batch 8 \
  --out "$OUT/e2e_searched.json" --md "$OUT/e2e_searched.md" > "$OUT/searched.log" 2>&1
echo "searched exit $? at $(date -u +%T)"; tail -20 "$OUT/searched.log"
timeout ${WORLD_S:-120} python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m attngen bench \
  --world 1 --lengths 131072 --heads 32 --kv-heads 8 --head-dim 128 --repeats 5 \
  --out "$OUT/world1.json" --md "$OUT/world1.md" > "$OUT/world1.log" 2>&1
echo "world exit $? at $(date -u +%T)"; tail -8 "$OUT/world1.log"
timeout ${LATENCY_S:-120} python3 benchmarks/cache_latency.py --out "$OUT/cache_latency.json" \
  > "$OUT/latency.log" 2>&1
echo "latency exit $? at $(date -u +%T)"; tail -20 "$OUT/latency.log"
