#!/usr/bin/env bash
# One device call for issue 17 after a kernel change: the quick diagnosis at 32K (the
# reference plan, its groups alone, causal, SDPA, the vertical_slash estimate and kernel
# apart), then `attngen bench --model llama3-8b:layers=4` at 32K/64K/128K with decode at
# 128K × 8, then the same with weights=structured (LLM-like attention; no decode). Set
# RAGGED_S to add the ragged batch 4 at 32K. At most 9 files into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 ATTNGEN_AUTOTUNE=0 ATTNGEN_CACHE_DIR=/tmp/agc
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING | tail -1
python3 -c "import attngen.patterns, attngen, torch, triton, transformers; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, transformers.__version__)" | tee "$OUT/env.log"
timeout ${DIAG_S:-80} python3 benchmarks/diag_gpu.py --n 32768 --quick > "$OUT/diag_quick.log" 2>&1
echo "diag exit $?"; tail -3 "$OUT/diag_quick.log"
run_e2e() {  # name spec seconds extra-args...
  local name=$1 spec=$2 secs=$3; shift 3
  timeout "$secs" python3 -m attngen bench --model "$spec" --batch 1 "$@" \
    --out "$OUT/e2e_$name.json" --md "$OUT/e2e_$name.md" > "$OUT/$name.log" 2>&1
  echo "$name exit $? at $(date -u +%T)" | tee -a "$OUT/env.log"; tail -14 "$OUT/$name.log"
}
LENGTHS=${LENGTHS:-32768 65536 131072}
run_e2e llama3-8b llama3-8b:layers=4 ${E2E_S:-290} --lengths $LENGTHS --decode-cache 131072 --decode-batch 8
run_e2e structured llama3-8b:layers=4,weights=structured ${STRUCT_S:-190} --lengths $LENGTHS --decode-cache 0
if [ -n "${RAGGED_S:-}" ]; then
  timeout $RAGGED_S python3 -m attngen bench --model llama3-8b:layers=4 --lengths 32768 \
    --batch 4 --decode-cache 0 --out "$OUT/e2e_ragged.json" --md "$OUT/e2e_ragged.md" \
    > "$OUT/ragged.log" 2>&1
  echo "ragged exit $? at $(date -u +%T)" | tee -a "$OUT/env.log"; tail -12 "$OUT/ragged.log"
fi
