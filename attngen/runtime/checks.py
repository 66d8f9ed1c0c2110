"""Input checks shared by every path of `attngen.attention` (kernel and reference) and by
compiled kernels: one function, so the backends accept and refuse the same inputs.
Everything here reads shapes, dtypes and devices only (no host synchronisation)."""
from __future__ import annotations

import math
import numbers

import torch

from attngen.ir.pattern import Pattern

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = "a multiple of 8 in 16..256"


def check_inputs(q, k, v, pattern=None, scale: float | None = None, doc_ids=None,
                 *, needs_pattern: bool = True) -> None:
    """Raise TypeError / ValueError naming what is wrong with attention inputs:
    q [B, Hq, M, D], k, v [B, Hkv, N, D] of one float dtype (fp16, bf16, fp32) on one
    device, D a multiple of 8 in 16..256, Hq a multiple of Hkv; pattern a Pattern or DSL
    text; scale a finite number (or None); doc_ids None or an integer tensor [N]."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = (q.dtype, k.dtype, v.dtype)
    if any(d not in DTYPES for d in dtypes) or len(set(dtypes)) > 1:
        raise TypeError(f"q, k, v must share one dtype of float16, bfloat16 or float32, got "
                        f"q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, "
                         f"v {v.device}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D: [B, H, M, D] and [B, Hkv, N, D], got "
                         f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    B, H, M, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k and v must be [B={B}, Hkv, N, D={D}], got {list(k.shape)} and "
                         f"{list(v.shape)}")
    if k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"{H} query heads are not a multiple of {k.shape[1]} kv heads")
    if D % 8 or not 16 <= D <= 256:
        raise ValueError(f"head_dim must be {HEAD_DIMS}, got {D}")
    if needs_pattern and not isinstance(pattern, (Pattern, str)):
        raise TypeError(f"pattern must be an attngen.Pattern or DSL text, got "
                        f"{type(pattern).__name__}")
    check_scale(scale)
    check_doc_ids(doc_ids, k.shape[2])


def check_scale(scale) -> None:
    """scale: None (1/sqrt(D)) or a finite real number; 0 and negative scales are exact."""
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")


def check_doc_ids(doc_ids, N: int) -> None:
    """doc_ids: None or an integer tensor [N] (any int dtype; compared exactly, never
    truncated). Float, bool and complex ids are refused: 0.0 and 0.5 are not one document."""
    if doc_ids is None:
        return
    if not isinstance(doc_ids, torch.Tensor):
        raise TypeError(f"doc_ids must be an integer torch.Tensor, got {type(doc_ids).__name__}")
    if doc_ids.is_floating_point() or doc_ids.is_complex() or doc_ids.dtype == torch.bool:
        raise TypeError(f"doc_ids must be an integer tensor, got {doc_ids.dtype}")
    if tuple(doc_ids.shape) != (N,):
        raise ValueError(f"doc_ids must have shape [N] = [{N}], got {list(doc_ids.shape)}")


ROW_SPAN_LIMIT = 2**31


def check_row_span(**tensors: torch.Tensor) -> None:
    """The kernels index rows within one head in int32 (batch and head offsets are int64):
    one head's rows of each tensor, (length − 1) · row stride + D, must span fewer than
    2^31 elements; a ValueError says which tensor does not, rather than a wrapped offset."""
    for name, t in tensors.items():
        span = (t.shape[2] - 1) * t.stride(2) + t.shape[3] if t.shape[2] else 0
        if span >= ROW_SPAN_LIMIT:
            raise ValueError(f"{name}: one head's rows span {span} elements (length × row "
                             f"stride {t.stride(2)}); the kernels need fewer than 2^31: "
                             f"use a [B, H, length, D] layout or split the sequence")
