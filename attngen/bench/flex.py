"""A model plan as transformers' own FlexAttention (for `attngen bench --model`).

    flex = FlexPlan(plan, heads=32, kv_heads=8, device="cuda")
    flex.register()                      # AttentionInterface "attngen_flex", no dense masks
    model.set_attn_implementation(flex.name)
    flex.set_padding(attention_mask)     # [B, N] 1 = real token, or None
    model(input_ids, attention_mask=attention_mask, ...)

Every layer gets one BlockMask (128×128 blocks) per (pattern, batch, M, N, padding) and
transformers' `flex_attention_forward` runs it. Static heads: the blocks of attngen's block
layout, the exact predicate (`codegen.torch_predicate`) on partial blocks; the mask is built
once and cached (build seconds summed in `build_s`). Dynamic heads: in every call attngen's
estimator (`runtime.dynamic.pick`) picks on that call's q and k and the mask holds the blocks
it picked, read by the same mask_mod from flag tensors updated in place (one mask_mod per
layer shape, so FlexAttention compiles once); that estimation and block-mask build runs
inside the timed call, as it would in a real model. Padding: keys of pad tokens are masked
(positions are cache indices, pads included, as in `attngen.integrations.hf`), and blocks
that hold a pad key are never "full".
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

import attngen
from attngen.codegen.torch_predicate import raw_predicate_fn
from attngen.integrations.plan import ModelPlan
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.lower.grid import Grid
from attngen.runtime import dynamic
from attngen.runtime.tables import device_layout

BLOCK = 128  # Flex block size (square)
_CAUSAL = attngen.parse("causal")


def _predicate(node: Node, M: int, N: int):
    """f(q_pos, k_pos) -> bool of their broadcast shape, by elementwise ops only (inductor
    fails to lower torch_predicate.predicate_fn's broadcast_to of FlexAttention's 0-d
    indices, seen with torch 2.13)."""
    fn = raw_predicate_fn(node, M, N)

    def f(q_pos, k_pos):
        x = fn(q_pos, k_pos)
        every = (q_pos >= 0) & (k_pos >= 0)  # True, in the broadcast shape
        return every & x if isinstance(x, torch.Tensor) else (every if x else ~every)

    return f


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flex's (num_blocks, indices) of a bool [..., QB, KB]: picked blocks first, ascending."""
    order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True)
    return dense.sum(-1, dtype=torch.int32), order.to(torch.int32)


@dataclass
class _Flags:
    """The estimate a dynamic layer's mask_mod reads, updated in place every call."""

    diag: torch.Tensor
    vert: torch.Tensor
    pick: torch.Tensor


class _Layer:
    """One (pattern, B, M, N, padding): its static block classes, mask_mod and flags."""

    def __init__(self, pattern: Pattern, B: int, H: int, Hkv: int, M: int, N: int,
                 keep: torch.Tensor | None, device, block: int = BLOCK):
        from attngen.lower.kernel_plan import KernelSpec

        self.B, self.H, self.M, self.N = B, H, M, N
        self.block = block
        self.grid = Grid(M, N, block, block)
        nodes = pattern.head_nodes(H, Hkv)
        self.parts = list(KernelSpec.build(pattern, H, Hkv).dynamic) if pattern.is_dynamic \
            else []
        static = [n for n in dict.fromkeys(nodes) if not n.is_dynamic]
        QB, KB = self.grid.QB, self.grid.KB
        self.partial = torch.zeros(H, QB, KB, dtype=torch.bool, device=device)
        self.full = torch.zeros_like(self.partial)
        for node in static:
            cls = device_layout(Pattern(node), M, N, block=block, device=device).classes()
            cls = cls[0].to(device)
            for h in (h for h, n in enumerate(nodes) if n == node):
                self.partial[h], self.full[h] = cls == 1, cls == 2
        for heads, part in self.parts:  # a dynamic head's static union: visited as well
            term = part.dynamic
            if term.static is not None:
                cls = device_layout(Pattern(term.static), M, N, block=block,
                                    device=device).classes()[0].to(device)
                for h in heads:
                    self.partial[h] |= cls > 0
        self.keep = keep
        if keep is not None:  # a block holding a pad key is tested element by element
            tail = torch.zeros(B, KB * block - N, dtype=torch.bool, device=device)
            self.pad_blocks = torch.cat([~keep, tail], 1).view(B, KB, block).any(-1)
        shapes = dynamic.flag_shapes(self.parts, B, H, M, N) if self.parts else ((1, 1),) * 3
        self.static_mask = None  # static layers: built once by FlexPlan.layer
        self.flags = _Flags(*(torch.zeros(s, dtype=torch.int8, device=device) for s in shapes))
        self.mask_mod = self._mask_mod(nodes, static, device)

    def _mask_mod(self, nodes: list[Node], static: list[Node], device):
        M, N, H = self.M, self.N, self.H
        offset = N - M
        static_fns = [_predicate(n, M, N) for n in static]
        static_table = torch.tensor([static.index(n) if n in static else 0 for n in nodes],
                                    device=device)
        part_of = [-1] * H
        for i, (heads, _) in enumerate(self.parts):
            for h in heads:
                part_of[h] = i
        part_table = torch.tensor(part_of, device=device)
        terms = [part.dynamic for _, part in self.parts]
        fns = [(_predicate(t.within, M, N) if t.within is not None else None,
                _predicate(t.static, M, N) if t.static is not None else None,
                1 if t.kind == "vertical_slash" else int(dynamic.parameters(t.prim, M, N)[1]))
               for t in terms]
        flags, keep = self.flags, self.keep
        width = math.isqrt(flags.pick.shape[-1])

        def mod(b, h, q_idx, kv_idx):
            q_pos = q_idx + offset
            out = kv_idx <= q_pos  # (heads of dynamic parts are set below)
            for i, f in enumerate(static_fns):
                out = f(q_pos, kv_idx) if len(static_fns) == 1 else torch.where(
                    static_table[h] == i, f(q_pos, kv_idx), out)
            for i, (term, (within, also, g)) in enumerate(zip(terms, fns)):
                row = b * H + h
                if term.kind == "vertical_slash":
                    d = torch.clamp(q_pos - kv_idx, min=0)
                    picked = (flags.diag[row, d] != 0) | (flags.vert[row, kv_idx] != 0)
                else:
                    picked = flags.pick[row, (q_pos // g) * width + kv_idx // g] != 0
                allowed = (kv_idx <= q_pos) & picked
                if within is not None:
                    allowed = allowed & within(q_pos, kv_idx)
                if also is not None:
                    allowed = allowed | also(q_pos, kv_idx)
                out = torch.where(part_table[h] == i, allowed, out)
            if keep is not None:
                out = out & keep[b, kv_idx]
            return out

        return mod

    def _blocks(self, est: dynamic.Estimate | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(partial, full) bool [B', H, QB, KB] for this call (B' = 1 when shared)."""
        partial, full = self.partial[None], self.full[None]
        if est is not None:
            some, whole = dynamic.visited(self.parts, est, self.B, self.H, self.M, self.grid)
            QB, KB = self.grid.QB, self.grid.KB
            rows = torch.zeros(self.H, dtype=torch.bool, device=some.device)
            for heads, _ in self.parts:
                rows[list(heads)] = True
            some = some.view(self.B, self.H, QB, KB)
            whole = whole.view(self.B, self.H, QB, KB)
            if any(p.dynamic.within is not None for _, p in self.parts):
                whole = torch.zeros_like(whole)
            r = rows[None, :, None, None]
            partial = torch.where(r, some | partial, partial)
            full = torch.where(r, whole & ~partial, full)
        if self.keep is not None:
            pad = self.pad_blocks[:, None, None, :]  # [B, 1, 1, KB]
            partial = partial | (full & pad)
            full = full & ~pad
        return partial, full

    def block_mask(self, q: torch.Tensor, k: torch.Tensor, scale: float | None):
        from torch.nn.attention.flex_attention import BlockMask

        if self.parts:
            s = 1.0 / q.shape[-1] ** 0.5 if scale is None else scale
            est = dynamic.pick(self.parts, q, k, s)
            for mine, new in zip((self.flags.diag, self.flags.vert, self.flags.pick),
                                 est.tensors()):
                mine.copy_(new)
        else:
            est = None
        partial, full = self._blocks(est)
        kv_num, kv_idx = _ordered(partial & ~full)
        full_num, full_idx = _ordered(full)
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=self.block,
                                        mask_mod=self.mask_mod, seq_lengths=(self.M, self.N))


class FlexPlan:
    """transformers' flex attention forward with the plan's per-head masks (module doc)."""

    name = "attngen_flex"

    def __init__(self, plan: ModelPlan, heads: int, kv_heads: int, device,
                 block: int = BLOCK):
        self.plan, self.heads, self.kv_heads, self.device = plan, heads, kv_heads, device
        self.block = block
        self.layers: dict[tuple, _Layer] = {}
        self.keep: torch.Tensor | None = None
        self.padding_key: tuple | None = None
        self.build_s = 0.0  # static layers: block-mask build seconds (first call per shape)
        self.per_call_s: list[float] | None = None  # a list: time each dynamic layer's build

    def register(self) -> None:
        import torch._dynamo
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        # one compile per (shape, mask_mod): more than dynamo's default limit of 8
        for name in ("cache_size_limit", "recompile_limit"):  # the name changed in 2.6
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)
        AttentionInterface.register(self.name, self)
        # no mask from the model: this interface builds its own (a dense padding mask at
        # 128K would not fit in memory)
        AttentionMaskInterface.register(self.name, _no_mask)

    def set_padding(self, attention_mask: torch.Tensor | None) -> None:
        """The 2D padding mask of the next calls ([B, N], nonzero = real token), or None."""
        if attention_mask is None or bool(attention_mask.all()):
            self.keep, self.padding_key = None, None
            return
        self.keep = attention_mask.to(self.device, torch.bool)
        self.padding_key = tuple(self.keep.sum(-1).tolist())

    def layer(self, pattern: Pattern, q: torch.Tensor, k: torch.Tensor) -> _Layer:
        B, H, M = q.shape[:3]
        Hkv, N = k.shape[1], k.shape[2]
        keep = self.keep
        if keep is not None and keep.shape != (B, N):
            raise ValueError(f"flex: the padding mask is {list(keep.shape)}, the keys "
                             f"[{B}, {N}]")
        shared = keep is None and not pattern.is_dynamic  # one mask for every batch row
        key = (pattern, 1 if shared else B, H, Hkv, M, N, self.padding_key)
        if key not in self.layers:
            t0 = time.perf_counter()
            lay = _Layer(pattern, 1 if shared else B, H, Hkv, M, N, keep, q.device,
                         self.block)
            if not lay.parts:  # static: one block mask for every call
                lay.static_mask = lay.block_mask(q, k, None)
                _sync(q)
                self.build_s += time.perf_counter() - t0
            self.layers[key] = lay
        return self.layers[key]

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, attention_mask, scaling: float | None = None,
                 dropout: float = 0.0, **kwargs):
        from transformers.integrations.flex_attention import flex_attention_forward

        pattern = self.plan.pattern(getattr(module, "layer_idx", -1)) or _CAUSAL
        lay = self.layer(pattern, query, key)
        if not lay.parts:
            bm = lay.static_mask
        elif self.per_call_s is None:
            bm = lay.block_mask(query, key, scaling)
        else:  # the estimate and block-mask build alone (synchronised: not in timed runs)
            _sync(query)
            t0 = time.perf_counter()
            bm = lay.block_mask(query, key, scaling)
            _sync(query)
            self.per_call_s.append(time.perf_counter() - t0)
        return flex_attention_forward(module, query, key, value, bm, scaling=scaling,
                                      **kwargs)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def _no_mask(*args, **kwargs) -> None:
    return None
