#!/usr/bin/env bash
# A 32-head mixture in one launch vs each of its 8-head groups alone, and vs Flex with a
# per-head block mask (H100; docs/benchmarks.md). Usage: bash benchmarks/mixture_sweep.sh OUTDIR
set -uo pipefail
out=$1
mix="heads { 0..7: causal; 8..15: causal & (sink(128) | local(4096)); 16..23: local(2048); *: causal & (sink(64) | local(N // 4)) }"
bench() { python3 -m attngen bench --repeats 10 --lengths 32768 131072 --out "$out/$1.json" \
            --md "$out/$1.md" "${@:2}" 2>&1 | grep -E "^(sdpa|flex|attngen)" ; }
bench mixture_32h --heads 32 --patterns causal "$mix"
bench mixture_groups_8h --heads 8 --patterns causal "causal & (sink(128) | local(4096))" \
  "local(2048)" "causal & (sink(64) | local(N // 4))"
