#!/usr/bin/env bash
# One device call for issue 17: install, the kernel path's smoke (benchmarks/hf_gpu_smoke.py),
# then `attngen bench --model llama3-8b:layers=4` (batch 1 at 32K/64K/128K with decode at
# 128K × 8, then the ragged batch 4 at 32K). Everything lands in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 ATTNGEN_AUTOTUNE=0 ATTNGEN_CACHE_DIR=/tmp/agc
[ "${INSTALLED:-0}" = 1 ] || python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING | tail -2
python3 -c "import attngen.patterns, attngen, torch, triton, transformers; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, transformers.__version__)" | tee "$OUT/env.log"
if [ "${SMOKE:-1}" = 1 ]; then
  timeout ${SMOKE_S:-150} python3 benchmarks/hf_gpu_smoke.py --lengths 8192 --layers 2 \
    --decode-cache 8192 > "$OUT/smoke.log" 2>&1; echo "smoke exit $?" | tee -a "$OUT/env.log"
  tail -8 "$OUT/smoke.log"
fi
timeout ${E2E_S:-330} python3 -m attngen bench --model llama3-8b:layers=4 \
  --lengths ${LENGTHS:-32768 65536 131072} --batch 1 --decode-cache 131072 --decode-batch 8 \
  --out "$OUT/e2e_llama3-8b.json" --md "$OUT/e2e_llama3-8b.md" > "$OUT/e2e.log" 2>&1
echo "e2e exit $? at $(date -u +%T)" | tee -a "$OUT/env.log"; tail -30 "$OUT/e2e.log"
timeout ${RAGGED_S:-180} python3 -m attngen bench --model llama3-8b:layers=4 --lengths 32768 \
  --batch 4 --decode-cache 0 --out "$OUT/e2e_ragged.json" --md "$OUT/e2e_ragged.md" \
  > "$OUT/ragged.log" 2>&1
echo "ragged exit $? at $(date -u +%T)" | tee -a "$OUT/env.log"; tail -12 "$OUT/ragged.log"
