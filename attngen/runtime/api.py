"""`attngen.compile` and `attngen.attention` (DESIGN §6)."""
from __future__ import annotations

import functools
import math

import torch

from attngen.codegen.render import KernelSpec, render
from attngen.dsl import parse
from attngen.ir.pattern import Pattern
from attngen.runtime import cache, op
from attngen.runtime.checks import check_inputs, check_int32
from attngen.runtime.env import interpreting
from attngen.runtime.kernel import Kernel
from attngen.runtime.key import cache_key, device_capability

# Both measured faster on the H100 (docs/benchmarks.md); tma only applies on CUDA.
DEFAULT_OPTIONS = {"fused_loops": True, "tma": True}
_KERNELS: dict[tuple, Kernel] = {}


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Pattern:
    return parse(text)


def _pattern(pattern: Pattern | str) -> Pattern:
    return _parsed(pattern) if isinstance(pattern, str) else pattern


def compile(pattern: Pattern | str, head_dim: int = 128, dtype: torch.dtype = torch.bfloat16,
            heads: int = 32, kv_heads: int | None = None,
            device: str | torch.device | None = None, options: dict | None = None) -> Kernel:
    """The Triton kernel for `pattern`, from the in-process table, the disk cache, or freshly
    rendered. `kernel.source` is the generated code; `kernel(q, k, v)` runs it.
    options: {"fused_loops": bool} (ranges terms: one loop per block run, see lower.plan),
    {"tma": bool} (on CUDA, load K and V through tensor descriptors)."""
    options = {**DEFAULT_OPTIONS, **(options or {})}
    pattern = _pattern(pattern)
    if device is None:
        device = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
    device = torch.device(device)
    memo = (pattern.node, heads, kv_heads, head_dim, dtype, device.type, device.index,
            tuple(sorted(options.items())))
    kernel = _KERNELS.get(memo)
    if kernel is not None:
        return kernel
    check_int32(pattern)
    spec = KernelSpec.build(pattern, heads, kv_heads, fused_loops=options["fused_loops"])
    key = cache_key(pattern.key, spec.head_group, head_dim, dtype,
                    device_capability(device.type, device.index), options)

    def build():
        import attngen

        meta = {"pattern": str(pattern), "head_group": spec.head_group, "head_dim": head_dim,
                "dtype": str(dtype), "attngen": attngen.__version__,
                "groups": [{"pattern": g.node.text,
                            "parts": [{"pattern": p.node.text, "strategy": p.strategy,
                                       "period": p.period} for p in g.parts]}
                           for g in spec.groups]}
        return render(spec, key, attngen.__version__), meta

    entry = cache.get_or_build(key, build)
    fallback = None
    if options["fused_loops"]:
        def fallback():
            return compile(pattern, head_dim, dtype, heads, kv_heads, device,
                           {**options, "fused_loops": False})
    kernel = Kernel(spec, key, entry.path, head_dim, dtype, entry.rendered, entry.source,
                    tma=bool(options["tma"]), fallback=fallback)
    _KERNELS[memo] = kernel
    return kernel


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | str,
              scale: float | None = None, return_lse: bool = False,
              doc_ids: torch.Tensor | None = None, backend: str = "auto"):
    """Sparse attention of q [B, Hq, M, D] against k, v [B, Hkv, N, D] under `pattern`.

    backend: "triton" (generated kernel; CUDA, or CPU with TRITON_INTERPRET=1),
    "reference" (dense PyTorch oracle), or "auto" (triton where it can run). The triton
    backend is the custom op `torch.ops.attngen.attention` (runtime.op: one node under
    torch.compile), differentiable in q, k and v through the generated backward kernels."""
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    check_inputs(q, k, v, pattern, scale, doc_ids)  # the same checks on every backend
    if backend == "auto":
        backend = "triton" if (q.is_cuda or interpreting()) else "reference"
    if backend == "reference":
        from attngen.reference import attention as reference

        return reference(q, k, v, _pattern(pattern), scale=scale, return_lse=return_lse,
                         doc_ids=doc_ids, kv_heads_pattern=k.shape[1])
    text = pattern if isinstance(pattern, str) else str(pattern)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse, *_ = op.attention_op(q, k, v, text, scale, doc_ids)  # and the estimate
    return (out, lse) if return_lse else out
