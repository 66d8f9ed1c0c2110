#!/usr/bin/env bash
# The strategies sweep of docs/benchmarks.md (H100), one stage per device call (each < 10 min):
#   a: GPU smoke check + every default pattern at 8K;  b: 32K;  c: 128K;
#   d: a 2D neighbourhood (NATTEN-style 13x13 window) on a 256x256 token grid (64K).
# Usage: bash benchmarks/issue5_sweep.sh STAGE OUTDIR
set -uo pipefail
stage=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
bench() { python3 -m attngen bench --repeats 10 --out "$out/$1.json" --md "$out/$1.md" "${@:2}" \
            2>&1 | grep -E "^(sdpa|flex|attngen)" ; }
case $stage in
  a) ATTNGEN_AUTOTUNE=0 python3 "$here/gpu_smoke.py" > "$out/smoke.log" 2>&1
     grep -E "^(FAIL|failed)" "$out/smoke.log"
     bench bench_8k --lengths 8192 ;;
  b) bench bench_32k --lengths 32768 ;;
  c) bench bench_128k --lengths 131072 ;;
  d) natten=$(python3 -c "import attngen, attngen.library as L
src = L.find('neighborhood2d').read_text() + '\nnatten2d(256, 256, 13, 13)\n'
print(attngen.dsl.load_text(src))")
     bench bench_natten_64k --lengths 65536 --patterns causal "$natten" ;;
esac
