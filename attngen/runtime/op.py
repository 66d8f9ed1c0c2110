"""`attngen::attention` as a torch.library custom op: torch.compile keeps it as one opaque
graph node (its fake implementation gives shapes while tracing), and autograd runs the
generated backward, itself the opaque op `attngen::attention_backward`.

The pattern travels as its canonical DSL text (`str(pattern)` parses back to an equal
pattern), so the op's schema holds only tensors, a string and a float.

Dynamic patterns: the forward also returns what it estimated (`runtime.dynamic.Estimate`:
the int8 flags diag, vert, pick, of static shapes; empty tensors for static patterns).
Autograd saves them with q, k, v, out and lse, and the backward op receives them, so the
backward reuses the forward's estimate instead of estimating again — per call, with no
state kept in the kernel (two forwards before one backward, or several layers sharing
one kernel, each keep their own)."""
from __future__ import annotations

import functools

import torch

OUT_LSE_AND_ESTIMATE = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor]


def _kernel(pattern: str, q: torch.Tensor, k: torch.Tensor):
    from attngen.runtime.compiler import compile

    return compile(pattern, head_dim=q.shape[-1], dtype=q.dtype, heads=q.shape[1],
                   kv_heads=k.shape[1], device=q.device)


@functools.lru_cache(maxsize=256)
def _dynamic_parts(pattern: str, heads: int, kv_heads: int) -> tuple:
    from attngen.lower.kernel_plan import KernelSpec
    from attngen.runtime.compiler import _pattern

    return KernelSpec.build(_pattern(pattern), heads, kv_heads).dynamic


@torch.library.custom_op("attngen::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str,
                 scale: float, doc_ids: torch.Tensor | None) -> OUT_LSE_AND_ESTIMATE:
    """(out, lse, diag, vert, pick) of the generated kernel for `pattern` (DSL text); the
    last three are its estimate's flags (empty for static patterns)."""
    out, lse, est = _kernel(pattern, q, k).forward(q, k, v, scale=scale, doc_ids=doc_ids)
    if est is None:
        return out, lse, *(q.new_empty(0, dtype=torch.int8) for _ in range(3))
    return out, lse, *est.tensors()


@attention_op.register_fake
def _(q, k, v, pattern, scale, doc_ids):
    from attngen.runtime.dynamic import flag_shapes

    B, H, M, _ = q.shape
    parts = _dynamic_parts(pattern, H, k.shape[1])
    shapes = flag_shapes(parts, B, H, M, k.shape[2]) if parts else ((0,),) * 3
    return (torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32),
            *(q.new_empty(s, dtype=torch.int8) for s in shapes))


@torch.library.custom_op("attngen::attention_backward", mutates_args=())
def attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                          dlse: torch.Tensor | None, diag: torch.Tensor, vert: torch.Tensor,
                          pick: torch.Tensor, pattern: str, scale: float,
                          doc_ids: torch.Tensor | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of the generated backward kernels; diag, vert, pick: the forward's
    estimate (empty for static patterns)."""
    from attngen.runtime.dynamic import Estimate

    est = Estimate(diag, vert, pick) if diag.numel() else None
    return _kernel(pattern, q, k).backward(q, k, v, out, lse, dout, dlse, scale, doc_ids,
                                           estimate=est)


@attention_backward_op.register_fake
def _(q, k, v, out, lse, dout, dlse, diag, vert, pick, pattern, scale, doc_ids):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, pattern, scale, doc_ids = inputs
    out, lse, diag, vert, pick = output
    ctx.save_for_backward(q, k, v, out, lse, diag, vert, pick, doc_ids)
    ctx.pattern, ctx.scale = pattern, scale


def _backward(ctx, dout, dlse, *_):  # the estimate's flags have no gradient
    q, k, v, out, lse, diag, vert, pick, doc_ids = ctx.saved_tensors
    if dout is None:  # only the LSE was used
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_backward_op(q, k, v, out, lse, dout, dlse, diag, vert, pick,
                                       ctx.pattern, ctx.scale, doc_ids)
    return dq, dk, dv, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
