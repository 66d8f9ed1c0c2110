"""attngen patterns inside Hugging Face transformers, through its AttentionInterface.

    from attngen.integrations import hf
    hf.apply(model, "plan.json")       # or a dict as in DESIGN §7, or a ModelPlan
    model.generate(**inputs)           # prefill and cached decoding both follow the plan
    hf.remove(model)                   # back to the implementation it had before

`apply` registers the function `"attngen"` with `transformers.AttentionInterface` and, under
the same name, a mask function that hands each layer the rows' key ranges (`KeyRanges`:
where each row's real tokens lie in the cache) instead of an M×N mask; it switches the model
to it and gives every attention module with a `layer_idx` its layer's pattern. A layer the
plan does not name stays dense (causal).

Queries are bottom-right aligned (DESIGN §2), so a decoding step (M = 1) or a chunk of a
prefill with a cache (M < N) sees the rows a full prefill would. Every batch row is seen in
its own frame: with padding, positions count from the row's first real token, so a padded
row gives what the row alone would.

Backends: "kernels" runs every layer — static patterns, mixtures, dynamic heads — through
the generated kernels (`integrations.kernel_path`: prefill and chunked prefill through the
forward kernel, decode steps through the decode kernel reading the cache in place, no M×N
tensor anywhere; on the CPU through TRITON_INTERPRET=1). "masks" builds the exact boolean
mask of every head and runs torch's SDPA (the reference path; a row that allows no key goes
to `attngen.reference`, which gives it output 0). "auto" is "kernels" on CUDA tensors and
"masks" elsewhere.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import attngen
from attngen.integrations import kernel_path
from attngen.integrations.masks import MaskCache, head_mask
from attngen.integrations.plan import ModelPlan, check_plan
from attngen.integrations.ranges import KeyRanges, key_ranges
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.reference import attention as reference_attention

IMPLEMENTATION = "attngen"
BACKENDS = ("auto", "kernels", "masks")
_ROUTE = "_attngen_route"  # attribute on each attention module
_PREVIOUS = "_attngen_previous_implementation"  # attribute on the model
_CAUSAL = attngen.parse("causal")
_SHARED_MASKS = MaskCache(max_bytes=256 << 20)  # modules reached without apply()

Recorder = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class LayerRoute:
    """What one attention module runs: its layer's pattern (None: dense causal)."""

    layer: int
    pattern: Pattern | None
    masks: MaskCache
    backend: str  # "kernels", "masks", or "auto" (kernels on CUDA, masks elsewhere)
    record: Recorder | None = None  # sees (layer, query, key, value) before attention

    def nodes(self, heads: int, kv_heads: int) -> list[Node]:
        if self.pattern is None:
            return [_CAUSAL.node] * heads
        return self.pattern.head_nodes(heads, kv_heads)


def apply(model: torch.nn.Module, plan: str | dict | ModelPlan, *, backend: str = "auto",
          record: Recorder | None = None, masks: MaskCache | None = None) -> torch.nn.Module:
    """Run `model`'s attention through attngen with `plan` (a path, a dict or a ModelPlan).

    backend: "kernels" (generated kernels for every layer, on any device), "masks" (exact
    masks and SDPA) or "auto" (kernels on CUDA, masks elsewhere).
    record: called with (layer, query, key, value) at every attention call (profiling).
    Calling apply again replaces the plan; `remove` restores the earlier implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention modules with a layer_idx")
    plan = check_plan(plan, model.config)
    AttentionInterface.register(IMPLEMENTATION, attention)
    AttentionMaskInterface.register(IMPLEMENTATION, key_ranges)
    masks = MaskCache() if masks is None else masks
    for layer, module in modules.items():
        setattr(module, _ROUTE, LayerRoute(layer, plan.pattern(layer), masks, backend, record))
    if not hasattr(model, _PREVIOUS):
        setattr(model, _PREVIOUS, model.config._attn_implementation)
    model.set_attn_implementation(IMPLEMENTATION)
    return model


def remove(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `apply`: the earlier attention implementation, no attngen routes."""
    for module in attention_modules(model).values():
        if hasattr(module, _ROUTE):
            delattr(module, _ROUTE)
    if hasattr(model, _PREVIOUS):
        model.set_attn_implementation(getattr(model, _PREVIOUS))
        delattr(model, _PREVIOUS)
    return model


def attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Layer index → the attention module of that layer (modules that have a layer_idx
    and the key/value group count of an HF attention)."""
    found = {}
    for module in model.modules():
        if isinstance(getattr(module, "layer_idx", None), int) and hasattr(
                module, "num_key_value_groups"):
            found[module.layer_idx] = module
    return dict(sorted(found.items()))


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, attention_mask: KeyRanges | torch.Tensor | None,
              scaling: float | None = None, dropout: float = 0.0, **kwargs
              ) -> tuple[torch.Tensor, None]:
    """The `"attngen"` AttentionInterface function: query `[B, Hq, M, D]`, key and value
    `[B, Hkv, N, D]` → `([B, M, Hq, D], None)`. attention_mask: the `KeyRanges` of this
    forward (from `key_ranges`), or a 4-D mask a caller built itself (masks path only)."""
    route: LayerRoute | None = getattr(module, _ROUTE, None)
    if route is None:  # a module of a model that apply() was not called on
        route = LayerRoute(getattr(module, "layer_idx", -1), None, _SHARED_MASKS, "auto")
    if route.record is not None:
        route.record(route.layer, query, key, value)
    B, M, N = query.shape[0], query.shape[2], key.shape[2]
    ranges = attention_mask
    if ranges is None:
        ranges = KeyRanges(B, M, N - M, None)
    backend = route.backend
    if backend == "auto":
        backend = "kernels" if query.is_cuda else "masks"
    if backend == "kernels":
        if not isinstance(ranges, KeyRanges):
            raise ValueError("backend='kernels' takes HF's 2-D padding mask (attngen turns it "
                             "into key ranges), not a 4-D mask built by the caller; use "
                             "backend='masks' for custom masks")
        out = kernel_path.attention(query, key, value, route.pattern or _CAUSAL, ranges,
                                    scaling)
    else:
        out = _masks_path(query, key, value, route, ranges, scaling)
    return out.transpose(1, 2).contiguous(), None


def _masks_path(query, key, value, route: LayerRoute, ranges, scale) -> torch.Tensor:
    """The exact reference path: every row in its own frame (as the kernels see it)."""
    nodes = route.nodes(query.shape[1], key.shape[1])
    if not isinstance(ranges, KeyRanges):  # a caller's own 4-D mask: positions as given
        return masked_attention(query, key, value, nodes, route.masks, scale,
                                _allowed(ranges))
    starts, ends, q_start = ranges.host_ranges()
    M = query.shape[2]
    out = torch.zeros_like(query)
    for b, (s, e) in enumerate(zip(starts, ends)):
        lo, hi = max(0, s - q_start), min(M, e - q_start)
        if hi > lo:
            out[b:b + 1, :, lo:hi] = masked_attention(
                query[b:b + 1, :, lo:hi], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                nodes, route.masks, scale)
    return out


def masked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     nodes: list[Node], masks: MaskCache, scale: float | None,
                     padding: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of every query head under its node's exact mask (and `padding`, bool
    `[B, 1, M, N]`), heads with the same static node in one SDPA call."""
    Hq, Hkv = query.shape[1], key.shape[1]
    group = Hq // Hkv
    key = key.repeat_interleave(group, dim=1) if group > 1 else key
    value = value.repeat_interleave(group, dim=1) if group > 1 else value
    out = torch.empty_like(query)
    heads_of: dict[Node, list[int]] = {}
    for h, node in enumerate(nodes):
        heads_of.setdefault(node, []).append(h)
    for node, heads in heads_of.items():
        index = slice(None) if len(heads) == Hq else torch.tensor(heads)
        if node.is_dynamic:  # estimated per batch element, its heads as one batch
            for b in range(query.shape[0]):
                q, k, v = query[b, index], key[b, index], value[b, index]
                mask = head_mask(node, q, k, masks, scale)[None]  # [1, heads, M, N]
                pad = None if padding is None else padding[b:b + 1]
                out[b, index] = _sdpa(q[None], k[None], v[None], mask, scale, pad)[0]
            continue
        mask = head_mask(node, query[:, 0], key[:, 0], masks)[:, None]  # [1, 1, M, N]
        out[:, index] = _sdpa(query[:, index], key[:, index], value[:, index], mask, scale,
                              padding)
    return out


def _sdpa(q, k, v, mask: torch.Tensor, scale: float | None,
          padding: torch.Tensor | None) -> torch.Tensor:
    if padding is not None:
        mask = mask & padding
    if bool(mask.any(-1).all()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # Some row allows no key: the reference gives it output 0 (SDPA gives NaN).
    B, H, M, N = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    outs = [reference_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1],
                                mask=mask[min(b, mask.shape[0] - 1)].expand(H, M, N),
                                scale=scale)
            for b in range(B)]
    return torch.cat(outs)


def _allowed(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """HF's mask as bool `[B, 1, M, N]` (True = may attend), or None when it is absent."""
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2  # additive float mask
