"""One layer's attention through attngen's generated kernels, given HF's per-row key ranges.

- Decode steps and short chunks after a cache (M ≤ 64 queries, a cache before them): the
  split-KV decode kernel reads the cache in place, with per-row lengths and starts that
  stay on the device, so the step needs no host synchronisation and a CUDA graph can hold
  it. A plan the decode kernel cannot run in one launch is split into runs of kv heads:
  static runs through the decode kernel, dynamic ones through `runtime.decode_dynamic`.
- Prefill and chunked prefill (longer M): the forward kernel on the whole batch when no row
  is padded; otherwise each row on views of its own queries and keys (no copies), so every
  row runs in its own frame. Reading the rows' ranges costs one host synchronisation per
  forward (shared by every layer).

No tensor of M × N elements is made on this path.
"""
from __future__ import annotations

import functools

import torch

import attngen
from attngen.integrations.ranges import KeyRanges
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.runtime import decode_dynamic
from attngen.runtime.decode import run as decode_run
from attngen.runtime.decode import supported as decode_supported

DECODE_MAX_M = 64  # queries per row that the decode kernel takes


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
              ranges: KeyRanges, scale: float | None) -> torch.Tensor:
    """q [B, Hq, M, D], k, v [B, Hkv, N, D] (N: the cache's capacity) → [B, Hq, M, D]."""
    M, N = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    after_cache = isinstance(ranges.q_start, torch.Tensor) or ranges.q_start > 0
    if M <= DECODE_MAX_M and after_cache:
        starts, ends = ranges.device_ranges(q.device)
        return decode_step(q, k, v, pattern, starts if ranges.padding is not None else None,
                           ends, scale)
    if ranges.is_dense(N):
        return attngen.attention(q, k, v, pattern, scale=scale, backend="triton")
    starts, ends, q_start = ranges.host_ranges()
    if len(set(starts)) == 1 and len(set(ends)) == 1:  # one range for every row
        return _rows(q, k, v, pattern, slice(None), starts[0], ends[0], q_start, scale)
    out = torch.zeros_like(q)
    for b, (s, e) in enumerate(zip(starts, ends)):
        out[b:b + 1] = _rows(q, k, v, pattern, slice(b, b + 1), s, e, q_start, scale)
    return out


def _rows(q, k, v, pattern, rows: slice, start: int, end: int, q_start: int, scale):
    """The batch rows `rows`, whose real tokens are cache positions start … end − 1, in
    their own frame: queries outside that range are padding and give 0."""
    M = q.shape[2]
    lo, hi = max(0, start - q_start), min(M, end - q_start)
    out = torch.zeros_like(q[rows])
    if hi > lo:
        out[:, :, lo:hi] = attngen.attention(
            q[rows, :, lo:hi], k[rows, :, start:end], v[rows, :, start:end], pattern,
            scale=scale, backend="triton")
    return out


def decode_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                starts: torch.Tensor | None, ends: torch.Tensor, scale: float
                ) -> torch.Tensor:
    """The newest M queries of every row against its cache keys (starts … ends − 1; starts
    None: 0), with no host synchronisation where the plan allows (module docstring)."""
    H, HKV = q.shape[1], k.shape[1]
    kernel = _compiled(pattern, q, HKV)
    if decode_supported(kernel.spec, H, HKV):
        return decode_run(kernel, q, k, v, ends, scale, starts=starts)
    nodes = pattern.head_nodes(H, HKV)
    G = H // HKV
    zeros = torch.zeros_like(ends) if starts is None else starts
    out = torch.empty_like(q)
    for g0, g1 in _runs(nodes, G):
        heads = slice(g0 * G, g1 * G)
        qs, ks, vs = q[:, heads], k[:, g0:g1], v[:, g0:g1]
        run_nodes = nodes[heads]
        if any(n.is_dynamic for n in run_nodes):
            if all(decode_dynamic.supported(n) for n in run_nodes):
                out[:, heads] = decode_dynamic.decode_heads(qs, ks, vs, run_nodes, zeros, ends,
                                                            scale)
                continue
        sub = _compiled(_mixture(tuple(run_nodes)), qs, g1 - g0)
        out[:, heads] = decode_run(sub, qs, ks, vs, ends, scale, starts=starts)
    return out


def _runs(nodes: list[Node], G: int) -> list[tuple[int, int]]:
    """Maximal runs [g0, g1) of kv heads whose query heads are all dynamic or all static."""
    kinds = [any(n.is_dynamic for n in nodes[g * G:(g + 1) * G]) for g in range(len(nodes) // G)]
    runs, g0 = [], 0
    for g in range(1, len(kinds) + 1):
        if g == len(kinds) or kinds[g] != kinds[g0]:
            runs.append((g0, g))
            g0 = g
    return runs


@functools.lru_cache(maxsize=256)
def _mixture(nodes: tuple[Node, ...]) -> Pattern:
    """The pattern giving query head i the pattern nodes[i]."""
    if len(set(nodes)) == 1:
        return attngen.parse(nodes[0].text)
    entries, lo = [], 0
    for i in range(1, len(nodes) + 1):
        if i == len(nodes) or nodes[i] != nodes[lo]:
            entries.append(f"{lo}..{i - 1}: {nodes[lo].text}")
            lo = i
    return attngen.parse(f"heads {{ {'; '.join(entries)} }}")


def _compiled(pattern: Pattern, q: torch.Tensor, kv_heads: int):
    return attngen.compile(pattern, head_dim=q.shape[3], dtype=q.dtype, heads=q.shape[1],
                           kv_heads=kv_heads, device=q.device)
