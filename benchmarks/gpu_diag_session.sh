#!/usr/bin/env bash
# One short device call: where the reference plan's prefill time goes (diag_gpu.py at 32K,
# with the traceback of any compile failure on the HF path's tensor views) and the GPU
# search at 32K calibration. At most 5 files into $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 ATTNGEN_AUTOTUNE=0 ATTNGEN_CACHE_DIR=/tmp/agc
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING | tail -1
timeout ${DIAG_S:-150} python3 benchmarks/diag_gpu.py --n 32768 > "$OUT/diag.log" 2>&1
echo "diag exit $?"; grep -v "^\s*$" "$OUT/diag.log" | tail -45
timeout ${SEARCH_S:-170} bash benchmarks/search_gpu.sh "$OUT/search" 32768 2 2>&1 | tail -20
