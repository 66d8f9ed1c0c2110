#!/usr/bin/env bash
# One device call for issue 17 after a kernel change: the quick diagnosis at 32K (the
# reference plan, its groups alone, causal, SDPA), then `attngen bench --model
# llama3-8b:layers=4` at 32K/64K/128K with decode at 128K × 8, then the ragged batch 4
# at 32K. At most 7 files into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 ATTNGEN_AUTOTUNE=0 ATTNGEN_CACHE_DIR=/tmp/agc
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING | tail -1
timeout ${DIAG_S:-90} python3 benchmarks/diag_gpu.py --n 32768 --quick > "$OUT/diag_quick.log" 2>&1
echo "diag exit $?"; tail -3 "$OUT/diag_quick.log"
INSTALLED=1 SMOKE=0 E2E_S=${E2E_S:-330} RAGGED_S=${RAGGED_S:-180} bash benchmarks/gpu_session.sh
