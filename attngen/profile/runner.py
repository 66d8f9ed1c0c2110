"""The profiler's own forward passes: dense with the model's SDPA while recording every
layer's q/k/v, or a plan's exact masks a chunk of query rows at a time.

    with running(model, record=fn):       # fn(layer, query, key, value), then dense SDPA
        model(ids)
    with running(model, plan):            # every head under its pattern's exact mask
        model(ids)

`attngen.integrations.hf` builds each head's whole M×N mask (right for deployment at a
few thousand tokens); calibration and validation at 16K-64K tokens cannot, so here dense
layers run transformers' own `sdpa_attention_forward` (causal, no mask) and planned layers
build their masks `chunk_elements` (heads × rows × keys) at a time (rowmask.py), each
chunk through SDPA with that boolean mask. A row no key may attend gives 0, as in
`attngen.reference`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attngen.integrations.hf import attention_modules
from attngen.integrations.plan import ModelPlan
from attngen.ir.pattern import Pattern
from attngen.profile.rowmask import RowMask

IMPLEMENTATION = "attngen_profile"
_ROUTE = "_attngen_profile_route"
CHUNK_ELEMENTS = 1 << 26  # heads × query rows × keys per masked SDPA call

Recorder = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class _Route:
    layer: int
    pattern: Pattern | None  # None: dense (the model's SDPA)
    record: Recorder | None
    chunk_elements: int


@contextmanager
def running(model: torch.nn.Module, plan: ModelPlan | None = None, *,
            record: Recorder | None = None, chunk_elements: int = CHUNK_ELEMENTS
            ) -> Iterator[torch.nn.Module]:
    """`model` with the profiler's attention (module doc) for the duration of the block."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    modules = attention_modules(model)
    for layer, module in modules.items():
        pattern = plan.pattern(layer) if plan is not None else None
        setattr(module, _ROUTE, _Route(layer, pattern, record, chunk_elements))
    previous = model.config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        yield model
    finally:
        for module in modules.values():
            delattr(module, _ROUTE)
        model.set_attn_implementation(previous)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, attention_mask: torch.Tensor | None,
              scaling: float | None = None, dropout: float = 0.0, **kwargs
              ) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    route: _Route = getattr(module, _ROUTE)
    if route.record is not None:
        route.record(route.layer, query, key, value)
    if route.pattern is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    padding = None
    if attention_mask is not None:
        padding = (attention_mask if attention_mask.dtype == torch.bool
                   else attention_mask > torch.finfo(attention_mask.dtype).min / 2)
    out = chunked_attention(query, key, value, route.pattern, scaling, padding,
                            route.chunk_elements)
    return out.transpose(1, 2).contiguous(), None


def chunked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      pattern: Pattern, scale: float | None = None,
                      padding: torch.Tensor | None = None,
                      chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """query [B, H, M, D], key/value [B, Hkv, N, D] → [B, H, M, D] under `pattern`'s exact
    per-head masks (and `padding`, bool [B, 1, M, N]); heads with one node share a call."""
    B, H, M, D = query.shape
    Hkv, N = key.shape[1], key.shape[2]
    group = H // Hkv
    scale = 1 / math.sqrt(D) if scale is None else scale
    heads_of: dict = {}
    for h, node in enumerate(pattern.head_nodes(H, Hkv)):
        heads_of.setdefault(node, []).append(h)
    out = torch.empty_like(query)
    for b in range(B):
        for node, heads in heads_of.items():
            index = torch.tensor(heads, device=query.device)
            q, k, v = query[b, index], key[b, index // group], value[b, index // group]
            rows = RowMask(node, q, k, scale, M, N)
            step = max(1, chunk_elements // (len(heads) * N))
            for r0 in range(0, M, step):
                r1 = min(M, r0 + step)
                mask = rows(torch.arange(r0, r1, device=query.device) + (N - M))
                if padding is not None:
                    mask = mask & padding[b, :, r0:r1]
                o = F.scaled_dot_product_attention(q[None, :, r0:r1], k[None], v[None],
                                                   attn_mask=mask[None], scale=scale)
                out[b, index, r0:r1] = o[0].nan_to_num(0.0)
    return out
