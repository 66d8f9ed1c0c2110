"""CPU: time attngen.lower / attngen.layout against FlexAttention's create_block_mask.

    python benchmarks/layout_build.py --out docs/benchmarks/layout_cpu.json

Pattern: causal & (sink(128) | local(4096)), one head, block 128, M = N. Each Flex build
runs in its own subprocess under a memory cap and a time limit, so a failure (out of memory
near 100K tokens when uncompiled) is recorded instead of killing the run.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

PATTERN = "causal & (sink(128) | local(4096))"
FLEX_CHILD = r"""
import sys, time, torch
from torch.nn.attention.flex_attention import create_block_mask
n, compiled = int(sys.argv[1]), sys.argv[2] == "1"
def mask_mod(b, h, q, k):
    return (k <= q) & ((k < 128) | (q - k < 4096))
build = torch.compile(create_block_mask) if compiled else create_block_mask
t = time.perf_counter(); build(mask_mod, 1, 1, n, n, device="cpu"); first = time.perf_counter() - t
times = []
for _ in range(3):
    t = time.perf_counter(); build(mask_mod, 1, 1, n, n, device="cpu"); times.append(time.perf_counter() - t)
times.sort()
print(first, times[1])
"""


def timed(fn, repeat: int) -> tuple[float, float]:
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def flex(n: int, compiled: bool, mem_gb: int, timeout: int) -> dict:
    def limit():
        cap = mem_gb << 30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        r = subprocess.run([sys.executable, "-c", FLEX_CHILD, str(n), str(int(compiled))],
                           capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout} s"}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"ok": False, "error": last[:200]}
    first, median = map(float, r.stdout.split())
    return {"ok": True, "first_s": first, "median_s": median}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/benchmarks/layout_cpu.json")
    ap.add_argument("--mem-gb", type=int, default=16)
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()

    import torch

    import attngen

    p = attngen.parse(PATTERN)
    rows = []
    for n in (8192, 32768, 131072, 1 << 20):
        lower = timed(lambda: attngen.lower(p, n, n, block=128), 20)
        lay = timed(lambda: attngen.layout(p, n, n, block=128), 10)
        layout_obj = attngen.layout(p, n, n, block=128)
        row = {"N": n, "lower_first_ms": lower[0] * 1e3, "lower_ms": lower[1] * 1e3,
               "layout_first_ms": lay[0] * 1e3, "layout_ms": lay[1] * 1e3,
               "blocks_partial_full": layout_obj.block_counts()}
        for compiled in (False, True):
            if n <= 131072 or compiled:
                row["flex_compiled" if compiled else "flex_eager"] = flex(
                    n, compiled, args.mem_gb, args.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"pattern": PATTERN, "block": 128, "heads": 1, "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, "
                       f"{__import__('os').cpu_count()} cores",
            "python": platform.python_version(), "torch": torch.__version__,
            "attngen": attngen.__version__, "flex_memory_cap_gb": args.mem_gb}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
