"""Generated kernels compiled for an H100 (sm_90) on a machine without one: a forward call
runs on the CPU with recorders in place of the kernels, and each recorded launch is
compiled by Triton's own toolchain for sm_90 (registers, spills and compile failures show
without a GPU; the numbers are the compiler's, never a timing). Used by
benchmarks/sm90_resources.py and tests/test_fallback.py.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import types


def toolchain():
    """(target, backend) for sm_90; raises when this Triton cannot target CUDA here."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", 90, 128)
    return target, make_backend(target)


def record(kernel, q, k, v, cfg, scale: float, est=None) -> list[tuple[str, tuple, dict]]:
    """(kernel name, args, kwargs) of every launch one forward call of `kernel` makes with
    configuration `cfg`, the kernels themselves replaced by recorders."""
    module = kernel.load().module
    calls: list[tuple[str, tuple, dict]] = []

    class Recorder:
        def __init__(self, name: str):
            self.name = name

        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append((self.name, a, kw))

    fake = types.SimpleNamespace(**{
        name: Recorder(name) if hasattr(fn, "signature") and not name.startswith("_") else fn
        for name, fn in vars(module).items()})
    probe = dataclasses.replace(kernel, module=fake, tables={}, tuned={})
    if est is None and kernel.spec.dynamic:
        from attngen.runtime import dynamic

        est = dynamic.pick(kernel.spec.dynamic, q, k, scale, fake)
    probe.launch(q, k, v, cfg, scale, None, est)
    return calls


def compile_sm90(jit, args: tuple, kwargs: dict, target, backend):
    """One recorded launch of `jit` compiled for `target` (Triton's compiled kernel)."""
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile
    from triton.runtime.jit import create_function_from_signature

    bind = create_function_from_signature(jit.signature, jit.params, backend)
    bound, spec, options = bind(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, spec, options)
    return triton_compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                          options=options.__dict__)


def resources(cubin: bytes) -> str:
    """Registers, stack frame and shared memory of one cubin, read by cuobjdump."""
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
