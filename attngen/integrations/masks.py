"""Exact per-head boolean masks of attngen patterns, static ones cached, dynamic ones estimated.

    masks = MaskCache()
    m = masks.static(node, M, N)                        # bool [M, N], cached per (node, M, N)
    m = head_mask(node, q_h, k_h, masks)                # bool [B, M, N], dynamic patterns too

Static patterns come from the elementwise predicate (`evaluate_node`, the same as
`Pattern.mask`), bottom-right aligned. Dynamic primitives follow DESIGN §5 in plain
PyTorch: the reference backend does not run them yet (issue 6 brings them to the kernels),
and the profiler and the Hugging Face integration need them on the CPU.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch

from attngen.codegen.torch_predicate import combine
from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.node import Node
from attngen.ir.pattern import evaluate_node

VS_LAST_Q = 64  # queries that estimate vertical_slash (MInference's last_q)
VS_FORCED_COLUMNS = 30  # first keys always among V
VS_FORCED_OFFSETS = 100  # nearest diagonals always among S


class MaskCache:
    """Static masks per (node, M, N), least recently used dropped beyond `max_bytes`."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._masks: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()
        self._bytes = 0

    def static(self, node: Node, M: int, N: int) -> torch.Tensor:
        key = (node.text, M, N)
        mask = self._masks.get(key)
        if mask is not None:
            self._masks.move_to_end(key)
            return mask
        rows = np.arange(M, dtype=np.int64)[:, None] + (N - M)
        cols = np.arange(N, dtype=np.int64)[None, :]
        mask = torch.from_numpy(np.array(evaluate_node(node, rows, cols, M, N), dtype=bool))
        self._masks[key] = mask
        self._bytes += mask.numel()
        while self._bytes > self.max_bytes and len(self._masks) > 1:
            _, old = self._masks.popitem(last=False)
            self._bytes -= old.numel()
        return mask


def head_mask(node: Node, q: torch.Tensor, k: torch.Tensor, cache: MaskCache,
              scale: float | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The mask of one head: q `[B, M, D]`, k `[B, N, D]` → bool `[B or 1, M, N]`, or only
    the query rows `rows` (indices into M) of it.

    A static node gives one mask for the batch (`[1, M, N]`, cached); a node with a
    dynamic part is estimated per batch element from q and k (from all of q, whatever
    `rows` says)."""
    M, N = q.shape[-2], k.shape[-2]
    if not node.is_dynamic:
        mask = cache.static(node, M, N)
        return (mask if rows is None else mask[rows]).to(q.device)[None]
    if node.op == "prim":
        params = [int(v) if v.is_integer else float(v)  # block_cover's gamma is a float
                  for v in (p.subs({N_SYM: N, M_SYM: M}) for p in node.params)]
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        if node.name == "vertical_slash":
            return vertical_slash_mask(q, k, *params, scale=scale, rows=rows)
        if node.name == "block_topk":
            return block_topk_mask(q, k, *params, rows=rows)
        if node.name == "block_cover":
            return block_topk_mask(q, k, *params, rows=rows, cover_scale=scale)
        raise NotImplementedError(f"{node.name} is not estimated on the CPU yet")
    parts = [head_mask(c, q, k, cache, scale, rows) for c in node.children]
    return combine(node, parts)


def _positions(M: int, N: int, rows: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Absolute positions of the query rows asked for (all M rows when `rows` is None)."""
    index = torch.arange(M, device=device) if rows is None else rows.to(device)
    return index + (N - M)


def vertical_slash_mask(q: torch.Tensor, k: torch.Tensor, v: int, s: int, scale: float,
                        rows: torch.Tensor | None = None) -> torch.Tensor:
    """MInference vertical-and-slash (DESIGN §5), token semantics: bool `[B, M, N]` (or
    `[B, len(rows), N]`).

    The last min(64, M) queries, causally softmaxed over all keys, vote: column sums pick
    the top v keys, sums along each diagonal offset q - k the top s offsets; keys
    0..min(30, v)-1 and offsets 0..min(100, s)-1 are always picked (they count toward v, s).
    """
    B, M, _ = q.shape
    N = k.shape[-2]
    last = min(VS_LAST_Q, M)
    voters = torch.arange(M - last, M, device=q.device) + (N - M)  # absolute positions
    cols = torch.arange(N, device=q.device)
    causal = cols[None, :] <= voters[:, None]
    scores = torch.einsum("bmd,bnd->bmn", q[:, M - last:].float(), k.float()) * scale
    probs = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)  # [B, last, N]
    probs = probs.nan_to_num(0.0)  # a voter at a negative position (M > N) sees no key

    vertical = probs.sum(1)  # [B, N]
    vertical[:, :min(VS_FORCED_COLUMNS, v)] = math.inf
    offsets = (voters[:, None] - cols[None, :]).clamp(min=0).expand(B, -1, -1)  # q - k
    slash = torch.zeros(B, N, device=q.device).scatter_add_(
        1, offsets.reshape(B, -1), probs.masked_fill(~causal, 0).reshape(B, -1))
    slash[:, :min(VS_FORCED_OFFSETS, s)] = math.inf

    keys = torch.zeros(B, N, dtype=torch.bool, device=q.device)
    keys.scatter_(1, vertical.topk(min(v, N), dim=-1).indices, True)
    diags = torch.zeros(B, N, dtype=torch.bool, device=q.device)
    diags.scatter_(1, slash.topk(min(s, N), dim=-1).indices, True)
    positions = _positions(M, N, rows, q.device)
    return _columns_or_diagonals(keys, diags, positions)


def _columns_or_diagonals(keys: torch.Tensor, diags: torch.Tensor,
                          positions: torch.Tensor) -> torch.Tensor:
    """bool [B, rows, N]: k <= q and (keys[k] or diags[q - k]) at query positions q.

    Row q of the diagonal part is diags read backwards from offset q, so every row is a
    window of one array (offsets N-1 … 0, then N never-picked negative offsets) — a
    strided view instead of an index per element."""
    B, N = keys.shape
    ext = torch.cat([diags.flip(1), torch.zeros_like(diags)], dim=1)  # [B, 2N]
    windows = ext.as_strided((B, N, N), (2 * N, 1, 1))  # row j: offsets N-1-j, N-2-j, …
    # row for position q starts at offset q; a negative position (M > N) sees no key
    on_slash = windows[:, N - 1 - positions.clamp(min=0)] & (positions >= 0)[None, :, None]
    causal = torch.arange(N, device=keys.device)[None, :] <= positions[:, None]
    return on_slash | (keys[:, None, :] & causal)


def block_topk_mask(q: torch.Tensor, k: torch.Tensor, t: float, g: int,
                    rows: torch.Tensor | None = None, cover_scale: float | None = None
                    ) -> torch.Tensor:
    """MInference block-sparse (DESIGN §5): bool `[B, M, N]` (or `[B, len(rows), N]`).

    q and k are mean-pooled over blocks of g absolute positions; each query block keeps
    its t highest-scoring causal key blocks (pooled q · pooled kᵀ) and its diagonal block.
    With `cover_scale` it is block_cover(t, g) instead (FlexPrefill): the fewest blocks
    whose softmax mass of cover_scale · scores reaches t.
    """
    B, M, D = q.shape
    N = k.shape[-2]
    pos_q = torch.arange(M, device=q.device) + (N - M)
    qb, kb = pos_q // g, torch.arange(N, device=q.device) // g
    QB, KB = int(qb[-1]) + 1, int(kb[-1]) + 1
    pooled_q = _block_mean(q.float(), qb, QB)  # [B, QB, D]; blocks with no query stay 0
    pooled_k = _block_mean(k.float(), kb, KB)
    scores = torch.einsum("bqd,bkd->bqk", pooled_q, pooled_k)
    block_causal = torch.arange(KB, device=q.device)[None, :] <= torch.arange(
        QB, device=q.device)[:, None]
    if cover_scale is None:
        scores = scores.masked_fill(~block_causal, -math.inf)
        top = scores.topk(min(int(t), KB), dim=-1).indices  # [B, QB, t]
        picked = torch.zeros(B, QB, KB, dtype=torch.bool, device=q.device)
        picked.scatter_(2, top, True)
    else:
        mass = torch.softmax((scores * cover_scale).masked_fill(~block_causal, -math.inf), -1)
        order = mass.sort(-1, descending=True)
        keep = (order.values.cumsum(-1) - order.values) < t
        picked = torch.zeros_like(keep).scatter_(-1, order.indices, keep)
    picked &= block_causal  # rows with fewer than t causal blocks took masked ones
    picked |= torch.eye(QB, KB, dtype=torch.bool, device=q.device)
    pos = _positions(M, N, rows, q.device)
    allowed = picked[:, pos // g][:, :, kb]  # [B, rows, N]
    return allowed & (torch.arange(N, device=q.device)[None, :] <= pos[:, None])


def _block_mean(x: torch.Tensor, block_of: torch.Tensor, blocks: int) -> torch.Tensor:
    B, L, D = x.shape
    sums = torch.zeros(B, blocks, D, device=x.device).index_add_(1, block_of, x)
    counts = torch.zeros(blocks, device=x.device).index_add_(
        0, block_of, torch.ones(L, device=x.device))
    return sums / counts.clamp(min=1)[None, :, None]
