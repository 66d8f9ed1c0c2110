"""`attngen bench` rows for dynamic patterns (DESIGN §5).

attngen is timed end to end: estimation, index conversion and attention in one call. The
estimation alone is timed too. FlexAttention gets the same estimate as a block mask
(128×128 blocks: the blocks picked diagonals cross, the blocks holding picked columns, the
static part's blocks) with an exact mask_mod reading the same picked offsets, keys or
g-blocks; its time excludes the estimation, which attngen would have to hand it.

Effective TFLOP/s need the allowed pairs, counted exactly without a dense mask:
vertical_slash pairs = Σ_{k∈V} (N − k) + Σ_{d∈S} (N − d) − #{k ∈ V, d ∈ S : k + d < N}
(the last term a convolution of the two indicator vectors, by FFT); picked g-blocks count
their causal pairs. Patterns with static terms beside the dynamic one report time only.
"""
from __future__ import annotations

import statistics
import time

import torch

import attngen
from attngen.codegen.torch_predicate import predicate_fn
from attngen.lower.grid import Grid
from attngen.runtime import dynamic
from attngen.runtime.tables import device_layout

FLEX_BLOCK = 128


def structured(q: torch.Tensor, k: torch.Tensor, g: torch.Generator, sinks: int = 4
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM-like q, k from standard normal ones: each head's q and k share a direction
    (weight 1 against noise 0.5) and are rotary-embedded (base 10000), so q_i · k_j peaks
    near i = j and decays with |i − j|; the first `sinks` keys also align with the mean
    query (attention sinks)."""
    B, H, N, D = q.shape
    shared = torch.randn(1, H, 1, D, device=q.device, generator=g, dtype=torch.float32)
    qf, kf = shared + 0.5 * q.float(), shared + 0.5 * k.float()
    freq = 10000.0 ** (-torch.arange(0, D, 2, device=q.device, dtype=torch.float32) / D)
    angle = torch.arange(N, device=q.device, dtype=torch.float32)[:, None] * freq[None, :]
    cos, sin = angle.cos(), angle.sin()

    def rotate(x):
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)

    qf, kf = rotate(qf), rotate(kf)
    kf[:, :, :sinks] += 2 * qf.mean(2, keepdim=True)
    return qf.to(q.dtype), kf.to(k.dtype)


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flex's (num_blocks, indices) of a bool [..., QB, KB]: picked blocks first, ascending."""
    order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True)
    return dense.sum(-1, dtype=torch.int32), order.to(torch.int32)


def flex_block_mask(term, static, parts, est: dynamic.Estimate, heads: int, N: int):
    """A FlexAttention BlockMask for one (non-mixture) dynamic pattern and its estimate."""
    from torch.nn.attention.flex_attention import BlockMask

    some, full = dynamic.visited(parts, est, 1, heads, N, Grid(N, N, FLEX_BLOCK, FLEX_BLOCK))
    if static is not None:
        classes = device_layout(attngen.Pattern(static), N, N, block=FLEX_BLOCK,
                                device=some.device).classes().to(some.device)
        some |= (classes[0] > 0)[None]
    if term.within is not None:
        full = torch.zeros_like(full)
    partial = some & ~full
    kv_num, kv_idx = _ordered(partial[None])
    full_num, full_idx = _ordered(full[None])

    static_fn = predicate_fn(static, N, N) if static is not None else None
    within_fn = predicate_fn(term.within, N, N) if term.within is not None else None
    diag, vert, pick, row_len = est.diag, est.vert, est.pick, est.pick_row
    g = int(dynamic.parameters(term.prim, N, N)[1]) if term.kind != "vertical_slash" else 1

    def mask_mod(b, h, q_idx, kv_idx):
        causal = kv_idx <= q_idx
        if term.kind == "vertical_slash":
            d = torch.clamp(q_idx - kv_idx, min=0)
            picked = (diag[h, d] != 0) | (vert[h, kv_idx] != 0)
        else:
            picked = pick[h, (q_idx // g) * row_len + kv_idx // g] != 0
        allowed = causal & picked
        if within_fn is not None:
            allowed = allowed & within_fn(q_idx, kv_idx)
        if static_fn is not None:
            allowed = allowed | static_fn(q_idx, kv_idx)
        return allowed

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx,
                                    BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(N, N))


def flex_mask_of_kernel(kern, q: torch.Tensor, k: torch.Tensor):
    """(Flex block mask, estimate, seconds to build the mask) of a compiled non-mixture
    dynamic kernel's estimate on these inputs (the estimate made as the kernel makes it)."""
    parts = list(kern.spec.dynamic)
    term = parts[0][1].dynamic
    est = dynamic.pick(parts, q, k, 1.0 / q.shape[-1] ** 0.5, kern.load().module)
    t0 = time.perf_counter()
    bm = flex_block_mask(term, term.static, parts, est, q.shape[1], k.shape[2])
    return bm, est, time.perf_counter() - t0


def allowed_pairs(term, static, est: dynamic.Estimate, N: int) -> int | None:
    """Exact allowed (q, k) pairs summed over heads (M = N), or None with static terms."""
    if static is not None or term.within is not None:
        return None
    if term.kind == "vertical_slash":
        V, S = est.vert.double(), est.diag.double()
        remaining = (N - torch.arange(N, device=V.device)).double()
        both = torch.fft.irfft(torch.fft.rfft(V, 2 * N) * torch.fft.rfft(S, 2 * N), 2 * N)
        overlap = both[:, :N].round().sum()
        return int(((V + S) * remaining).sum() - overlap)
    g = int(dynamic.parameters(term.prim, N, N)[1])
    G = est.pick_row
    picks = est.pick.view(-1, G, G).bool()
    size = torch.clamp(N - torch.arange(G, device=picks.device) * g, max=g).double()
    per_block = size[:, None] * size[None, :]
    diagonal = size * (size + 1) / 2
    per_block = torch.where(torch.eye(G, dtype=torch.bool, device=picks.device),
                            diagonal[:, None].expand(G, G), per_block)
    return int((picks.double() * per_block).sum())


def rows(p: attngen.Pattern, q, k, v, N: int, repeats: int, timer, make_row, flex_fn, log):
    """attngen (end to end), its estimation alone, and Flex given the same estimate."""
    if p.is_mixture:
        raise NotImplementedError("bench: mixtures with dynamic heads are not benchmarked yet")
    heads, head_dim = q.shape[1], q.shape[3]
    scale = 1.0 / head_dim ** 0.5
    t0 = time.perf_counter()
    kern = attngen.compile(p, head_dim=head_dim, dtype=q.dtype, heads=heads)
    kern(q, k, v)
    torch.cuda.synchronize()
    setup = time.perf_counter() - t0
    cfg = kern.config(q, k, v, None)
    bm, est, build_s = flex_mask_of_kernel(kern, q, k)
    term = kern.spec.dynamic[0][1].dynamic
    pairs = allowed_pairs(term, term.static, est, N)
    flops = None if pairs is None else 4 * pairs * head_dim
    flex = flex_fn()
    flex(q, k, v, block_mask=bm)
    times = timer(lambda: flex(q, k, v, block_mask=bm), repeats)
    flex_ms = statistics.median(times)
    density = "" if pairs is None else f"; density {pairs / (heads * N * (N + 1) / 2):.4f}"
    out = [make_row(str(p), N, "flex", flex_ms, flops, 1.0, build_s, times,
                    f"given attngen's estimate as a block mask ({build_s:.2f} s to build), "
                    f"estimation not included{density}")]
    log(out[-1])
    times = timer(lambda: kern(q, k, v), repeats)
    ms = statistics.median(times)
    out.append(make_row(str(p), N, "attngen", ms, flops, ms / flex_ms, setup, times,
                        f"end to end, estimation included; BLOCK {cfg.block_m}x{cfg.block_n}, "
                        f"{cfg.warps} warps, {cfg.stages} stages{density}"))
    log(out[-1])
    grid = Grid(N, N, cfg.block_m, cfg.block_n)
    parts = list(kern.spec.dynamic)
    times = timer(lambda: dynamic.estimate(parts, q, k, scale, grid, kern.module), repeats)
    ms = statistics.median(times)
    out.append(make_row(str(p), N, "attngen-estimate", ms, None, ms / flex_ms, None, times,
                        "estimation and index conversion alone"))
    log(out[-1])
    return out
