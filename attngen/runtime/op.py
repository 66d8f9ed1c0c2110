"""`attngen::attention` as a torch.library custom op: torch.compile keeps it as one opaque
graph node (its fake implementation gives shapes while tracing), and autograd runs the
generated backward, itself the opaque op `attngen::attention_backward`.

The pattern travels as its canonical DSL text (`str(pattern)` parses back to an equal
pattern), so the op's schema holds only tensors, a string and a float."""
from __future__ import annotations

import torch

OUT_AND_LSE = tuple[torch.Tensor, torch.Tensor]


def _kernel(pattern: str, q: torch.Tensor, k: torch.Tensor):
    from attngen.runtime.api import compile

    return compile(pattern, head_dim=q.shape[-1], dtype=q.dtype, heads=q.shape[1],
                   kv_heads=k.shape[1], device=q.device)


@torch.library.custom_op("attngen::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str,
                 scale: float, doc_ids: torch.Tensor | None) -> OUT_AND_LSE:
    """(out, lse) of the generated kernel for `pattern` (DSL text)."""
    return _kernel(pattern, q, k)(q, k, v, scale=scale, return_lse=True, doc_ids=doc_ids)


@attention_op.register_fake
def _(q, k, v, pattern, scale, doc_ids):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("attngen::attention_backward", mutates_args=())
def attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                          dlse: torch.Tensor | None, pattern: str, scale: float,
                          doc_ids: torch.Tensor | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of the generated backward kernels."""
    return _kernel(pattern, q, k).backward(q, k, v, out, lse, dout, dlse, scale, doc_ids)


@attention_backward_op.register_fake
def _(q, k, v, out, lse, dout, dlse, pattern, scale, doc_ids):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, pattern, scale, doc_ids = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, doc_ids)
    ctx.pattern, ctx.scale = pattern, scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, doc_ids = ctx.saved_tensors
    if dout is None:  # only the LSE was used
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_backward_op(q, k, v, out, lse, dout, dlse, ctx.pattern, ctx.scale,
                                       doc_ids)
    return dq, dk, dv, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
