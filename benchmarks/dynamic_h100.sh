#!/usr/bin/env bash
# Dynamic patterns on the H100: a bf16/fp16 smoke check against the fp32 oracle given the
# same estimate, then `attngen bench` end to end (estimation included) vs Flex given the
# estimate and dense causal SDPA. Usage: INPUTS=structured bash benchmarks/dynamic_h100.sh
# OUTDIR [smoke] LENGTHS… (INPUTS: random by default; see `attngen bench --inputs`)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1; shift
if [ "${1:-}" = smoke ]; then
  shift
  ATTNGEN_AUTOTUNE=0 python3 "$here/gpu_smoke.py" --dynamic > "$out/dynamic_smoke_full.log" 2>&1
  grep -E "^(ok|FAIL|failed)" "$out/dynamic_smoke_full.log" | tee "$out/dynamic_smoke_h100.log"
  grep -E "Error|error:" "$out/dynamic_smoke_full.log" | grep -v "^ok" | tail -5
fi
for n in "$@"; do
  python3 -m attngen bench --repeats 10 --lengths "$n" --inputs "${INPUTS:-random}" \
    --out "$out/dynamic_${INPUTS:-random}_$n.json" --md "$out/dynamic_${INPUTS:-random}_$n.md" \
    --patterns causal "vertical_slash(1000, 6096)" \
    "sink(64) | vertical_slash(1000, 6096)" "block_topk(64, 64)" "block_cover(0.9, 128)" \
    2>&1 | grep -E "^(sdpa|flex|attngen|Traceback|[A-Za-z]*Error)"
done
