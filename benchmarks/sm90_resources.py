"""Registers and spills of a pattern's generated kernels on an H100, without one: every
launch of one forward call is recorded, compiled for sm_90 offline (Triton's own toolchain), and
cuobjdump reports each kernel's registers, stack frame (spills) and shared memory.

    python benchmarks/sm90_resources.py "causal" "heads { 0..7: causal; *: local(64) }"
    python benchmarks/sm90_resources.py --n 4096 --config 128,128,8,3 PATTERN ...

Run without TRITON_INTERPRET; the call itself runs on the CPU with placeholders for the
kernels, so the numbers are the compiler's, never a timing.
"""
import argparse
import dataclasses
import math
import os
import re
import subprocess
import sys
import tempfile
import types

import torch


def _compile(jit, args, kwargs, target, backend):
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile
    from triton.runtime.jit import create_function_from_signature

    bind = create_function_from_signature(jit.signature, jit.params, backend)
    bound, spec, options = bind(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, spec, options)
    return triton_compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def _resources(cubin: bytes) -> str:
    """Registers, stack frame and spill bytes of one cubin, read by cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True)
    found = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res.stdout))
    return (f"{found.get('REG', '?')} regs, stack {found.get('STACK', '?')} B, "
            f"shared {found.get('SHARED', '?')} B")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("patterns", nargs="+")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--config", default=None, help="BLOCK_M,BLOCK_N,warps,stages")
    args = ap.parse_args()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    import attngen
    from attngen.runtime import kernel as kernel_mod

    target = GPUTarget("cuda", 90, 128)
    backend = make_backend(target)
    cfg = kernel_mod.Config(*(map(int, args.config.split(",")) if args.config
                              else kernel_mod.GPU_CONFIGS[0]))
    H, HKV, D, N = args.heads, args.kv_heads, args.head_dim, args.n
    for text in args.patterns:
        kernel = attngen.compile(text, head_dim=D, dtype=torch.bfloat16, heads=H,
                                 kv_heads=HKV, device="cpu")
        module = kernel.load().module
        calls = []

        class Recorder:
            def __init__(self, name):
                self.name = name

            def __getitem__(self, grid):
                return lambda *a, **kw: calls.append((self.name, a, kw))

        fake = types.SimpleNamespace(**{
            name: Recorder(name) if hasattr(fn, "signature") and not name.startswith("_")
            else fn for name, fn in vars(module).items()})
        probe = dataclasses.replace(kernel, module=fake, tables={}, tuned={})
        q = torch.randn(1, N, H, D, dtype=torch.bfloat16).transpose(1, 2)
        k, v = (torch.randn(1, HKV, N, D, dtype=torch.bfloat16) for _ in range(2))
        est = None
        if kernel.spec.dynamic:
            from attngen.runtime import dynamic
            est = dynamic.pick(kernel.spec.dynamic, q, k, 1 / math.sqrt(D), fake)
        probe.launch(q, k, v, cfg, 1 / math.sqrt(D), None, est)
        print(f"`{text}` N={N} H={H}/{HKV} D={D} {cfg}")
        for name, a, kw in calls:
            try:
                compiled = _compile(getattr(module, name), a, kw, target, backend)
                print(f"  {name}: {_resources(compiled.asm['cubin'])}")
            except Exception as e:  # report and go on: one failing kernel is a finding
                print(f"  {name}: {type(e).__name__}: {str(e).splitlines()[-1][:200]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
