"""`attngen.compile` and `attngen.attention` (DESIGN §6)."""
from __future__ import annotations

import math

import torch

from attngen.env import interpreting
from attngen.ir.pattern import Pattern
from attngen.runtime import op
from attngen.runtime.checks import check_inputs
from attngen.runtime.compiler import _pattern


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

        pat = _pattern(pattern)
        if pat.is_dynamic and doc_ids is None:
            return _dynamic_reference(q, k, v, pat, scale, return_lse)
        return reference(q, k, v, pat, scale=scale, return_lse=return_lse,
                         doc_ids=doc_ids, kv_heads_pattern=k.shape[1])
    text = pattern if isinstance(pattern, str) else str(pattern)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse, *_ = op.attention_op(q, k, v, text, scale, doc_ids)  # and the estimate
    return (out, lse) if return_lse else out


def _dynamic_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                       scale: float | None, return_lse: bool):
    """The reference for an input-dependent pattern: the pairs the kernels' own estimate
    allows for these inputs (runtime.dynamic.allowed: a dense [B, H, M, N] mask, so small
    sizes only), then the dense reference per batch element."""
    from attngen.reference import attention as reference
    from attngen.runtime.dynamic import allowed

    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    pattern.check(q.shape[2], k.shape[2])
    mask = allowed(pattern, q, k, sm_scale)
    rows = [reference(q[b:b + 1], k[b:b + 1], v[b:b + 1], mask=mask[b], scale=scale,
                      return_lse=True) for b in range(q.shape[0])]
    out, lse = torch.cat([o for o, _ in rows]), torch.cat([lse for _, lse in rows])
    return (out, lse) if return_lse else out
