"""Kernels that Triton cannot build: the launch-time fallback (interpreter), and the sm_90
specialisations that failed on an H100 compiled offline on the CPU (docs/design.md,
"Compile failures on Triton 3.6")."""
from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import types

import pytest
import torch

import attngen
from attngen.reference import attention as reference
from attngen.runtime import kernel as kernel_mod
from tests.kernel_check import TOL, inputs

PATTERN = "causal & (sink(4) | local(9))"
decode_mod = importlib.import_module("attngen.runtime.decode")  # not attngen.runtime.decode()


class _Failing:
    """Stands for a module's JIT function whose specialisation does not compile."""

    def __init__(self, error: Exception):
        self.error, self.calls = error, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls += 1
            raise self.error
        return launch


def _fresh_kernel(pattern: str, H: int, HKV: int, D: int):
    """A private copy of the compiled kernel (the in-process table's stays untouched)."""
    kernel = attngen.compile(pattern, head_dim=D, dtype=torch.float32, heads=H, kv_heads=HKV,
                             device="cpu")
    return dataclasses.replace(kernel, module=None, tables={}, tuned={})


def test_launch_falls_back_when_a_specialisation_does_not_compile(interpreter, monkeypatch):
    monkeypatch.setattr(kernel_mod, "_WARNED", set(), raising=False)
    kernel = _fresh_kernel(PATTERN, 2, 1, 16)
    fused_key = kernel.key
    kernel.load()
    failing = _Failing(RuntimeError("PassManager::run failed"))
    kernel.module = types.SimpleNamespace(**{**vars(kernel.module), "attn_fwd": failing})
    q, k, v = inputs(1, 2, 1, 37, 53, 16)
    with pytest.warns(RuntimeWarning, match="could not compile"):
        out = kernel(q, k, v)
    # first tensor descriptors off (same module: fails again), then the split loops
    assert failing.calls == 2
    assert kernel.key != fused_key and kernel.fallback is None
    ref = reference(q, k, v, attngen.parse(PATTERN), kv_heads_pattern=1)
    assert (out - ref).abs().max().item() <= TOL


def test_other_errors_are_not_swallowed(interpreter):
    kernel = _fresh_kernel(PATTERN, 2, 1, 16)
    fused_key = kernel.key
    kernel.load()
    failing = _Failing(ValueError("not a compile failure"))
    kernel.module = types.SimpleNamespace(**{**vars(kernel.module), "attn_fwd": failing})
    with pytest.raises(ValueError, match="not a compile failure"):
        kernel(*inputs(1, 2, 1, 37, 53, 16))
    assert failing.calls == 1 and kernel.key == fused_key and kernel.tma


def test_decode_falls_back_to_the_prefill_kernel(interpreter, monkeypatch):
    monkeypatch.setattr(kernel_mod, "_WARNED", set(), raising=False)
    kernel = _fresh_kernel(PATTERN, 2, 1, 16)
    failing = _Failing(RuntimeError("PassManager::run failed"))
    monkeypatch.setattr(decode_mod, "_launch", lambda *a, **kw: failing[None]())
    q, k, v = inputs(2, 2, 1, 3, 40, 16)
    lengths = torch.tensor([40, 29])
    with pytest.warns(RuntimeWarning, match="could not compile"):
        out = decode_mod.run(kernel, q, k, v, lengths)
    out2 = decode_mod.run(kernel, q, k, v, lengths)  # remembered: no second attempt
    assert failing.calls == 1 and torch.equal(out, out2)
    for b, n in enumerate(lengths.tolist()):
        ref = reference(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                        attngen.parse(PATTERN), kv_heads_pattern=1)
        assert (out[b:b + 1] - ref).abs().max().item() <= TOL


# -- offline sm_90 compiles of the H100's failing specialisations ------------------------------
# In a subprocess without TRITON_INTERPRET: Triton's own library functions are built for the
# interpreter once this process has imported it under TRITON_INTERPRET=1.

SM90_CHECK = r"""
import math, sys
import torch
from attngen.bench import sm90
try:
    target, backend = sm90.toolchain()
except Exception as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(77)
import attngen
from attngen.runtime import kernel as kernel_mod

N, tma = int(sys.argv[1]), sys.argv[2] == "1"
H, HKV, D = 4, 2, 128
kernel = attngen.compile("causal", head_dim=D, dtype=torch.bfloat16, heads=H, kv_heads=HKV,
                         device="cpu")
jit = kernel.load().module.attn_fwd
q = torch.randn(1, N, H, D, dtype=torch.bfloat16).transpose(1, 2)  # HF's layout
k, v = (torch.randn(1, HKV, N, D, dtype=torch.bfloat16) for _ in range(2))
cfg = kernel_mod.Config(*kernel_mod.GPU_CONFIGS[0])
calls = sm90.record(kernel, q, k, v, cfg, 1 / math.sqrt(D))
assert [kw["GUARD"] for _, _, kw in calls] == [False, True]  # both variants launch
for _, args, kwargs in calls:
    assert kwargs["EVEN_N"] == (N % cfg.block_n == 0)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor
        args = list(args)
        args[1], args[2] = (TensorDescriptor(t, list(t.shape), list(t.stride()),
                                             [1, 1, cfg.block_n, D]) for t in (k, v))
        kwargs = {**kwargs, "USE_TMA": True}
    try:
        sm90.compile_sm90(jit, args, kwargs, target, backend)
    except Exception as e:
        if "ptxas" in str(e).lower() and "PassManager" not in str(e):
            print(f"{type(e).__name__}: {e}")
            sys.exit(77)
        raise
"""


@pytest.mark.parametrize("N, tma", [(1000, False), (1000, True), (1024, True)])
def test_h100_forward_specialisations_compile_for_sm90(kernel_cache, N, tma):
    """The forward of a ragged row (EVEN_N False: Triton 3.6's pipeliner failed on the tail
    mask's if/else; 3.9 builds it either way) and with tensor descriptors (int64 offsets
    failed on 3.6 and 3.9), for a transposed bf16 q (HF's [B, M, H, D] viewed as
    [B, H, M, D]), compiled for sm_90 with the first GPU configuration."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["ATTNGEN_CACHE_DIR"] = str(kernel_cache)
    res = subprocess.run([sys.executable, "-c", SM90_CHECK, str(N), str(int(tma))], env=env,
                         capture_output=True, text=True, timeout=600)
    if res.returncode == 77:
        pytest.skip(f"triton cannot target CUDA (sm_90) offline here: {res.stdout.strip()}")
    tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
    assert res.returncode == 0, f"sm_90 compile failed (N={N}, tma={tma}):\n{tail}"
