"""Registers and spills of a pattern's generated kernels on an H100, without one: every
launch of one forward call is recorded, compiled for sm_90 offline (Triton's own toolchain), and
cuobjdump reports each kernel's registers, stack frame (spills) and shared memory.

    python benchmarks/sm90_resources.py "causal" "heads { 0..7: causal; *: local(64) }"
    python benchmarks/sm90_resources.py --n 4096 --config 128,128,8,3 PATTERN ...

Run without TRITON_INTERPRET; the call itself runs on the CPU with placeholders for the
kernels, so the numbers are the compiler's, never a timing.
"""
import argparse
import math
import sys

import torch

import attngen
from attngen.bench import sm90
from attngen.runtime import kernel as kernel_mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("patterns", nargs="+")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--config", default=None, help="BLOCK_M,BLOCK_N,warps,stages")
    args = ap.parse_args()
    target, backend = sm90.toolchain()
    cfg = kernel_mod.Config(*(map(int, args.config.split(",")) if args.config
                              else kernel_mod.GPU_CONFIGS[0]))
    H, HKV, D, N = args.heads, args.kv_heads, args.head_dim, args.n
    for text in args.patterns:
        kernel = attngen.compile(text, head_dim=D, dtype=torch.bfloat16, heads=H,
                                 kv_heads=HKV, device="cpu")
        module = kernel.load().module
        q = torch.randn(1, N, H, D, dtype=torch.bfloat16).transpose(1, 2)
        k, v = (torch.randn(1, HKV, N, D, dtype=torch.bfloat16) for _ in range(2))
        calls = sm90.record(kernel, q, k, v, cfg, 1 / math.sqrt(D))
        print(f"`{text}` N={N} H={H}/{HKV} D={D} {cfg}")
        for name, a, kw in calls:
            try:
                compiled = sm90.compile_sm90(getattr(module, name), a, kw, target, backend)
                print(f"  {name}: {sm90.resources(compiled.asm['cubin'])}")
            except Exception as e:  # report and go on: one failing kernel is a finding
                print(f"  {name}: {type(e).__name__}: {str(e).splitlines()[-1][:200]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
