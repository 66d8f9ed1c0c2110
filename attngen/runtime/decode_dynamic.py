"""Decode steps (M ≤ 64 newest queries per row) of heads with a dynamic pattern, on the device
and without a host synchronisation, so a captured CUDA graph can hold them.

The queries of row b are its newest M positions; all of them vote (MInference's last_q is 64
and M ≤ 64), exactly as the prefill's estimate would for the last rows of a prompt of that
length (DESIGN §5). Row b's keys are cache positions starts[b] … ends[b] − 1 and the
pattern sees them from position 0 (the row in its own frame). The scores of the M queries
against the whole cache are computed once and serve both the estimate and the attention, so
such a head reads its keys and values in full: a decode step of a dynamic head costs what a
dense one does.

Supported dynamic primitives with constant parameters: vertical_slash, block_topk and
block_cover, combined with static terms by |, &, - and ~. The block kinds pool the row's
keys over blocks of g frame positions and its M queries over the blocks they fall in (the
queries of a block that came before this step are not kept, so its mean is over the ones
present — what the prefill's estimate of a chunk of M queries after a cache does), then
pick per query block as DESIGN §5 says. A parameter with N or M in it is not supported;
the caller takes the prefill kernel row by row instead (a host synchronisation).
"""
from __future__ import annotations

import math

import torch

from attngen.codegen.torch_predicate import combine, predicate_fn
from attngen.ir.node import Node
from attngen.runtime.dynamic import VS_FORCED_COLUMNS, VS_FORCED_OFFSETS, select_blocks


def supported(node: Node) -> bool:
    """Whether `decode_heads` runs this head's pattern."""
    if node.op == "prim":
        return not node.is_dynamic or (
            node.name in ("vertical_slash", "block_topk", "block_cover")
            and not any(p.free_symbols for p in node.params))
    return node.op in ("or", "and", "not") and all(supported(c) for c in node.children)


def decode_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, nodes: list[Node],
                 starts: torch.Tensor, ends: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q [B, h, M, D] against the caches k, v [B, hk, N_max, D] (h a multiple
    of hk), query head i under nodes[i], row b's keys at starts[b] … ends[b] − 1 (int [B]).
    Returns [B, h, M, D] in q's dtype; a row that may see no key gives 0."""
    B, h, M, D = q.shape
    hk, n_max = k.shape[1], k.shape[2]
    G = h // hk
    first = starts.to(torch.int64).view(B, 1, 1, 1)
    n = (ends.to(torch.int64) - starts.to(torch.int64)).view(B, 1, 1, 1)
    k_pos = torch.arange(n_max, device=q.device).view(1, 1, 1, n_max) - first
    q_pos = n - M + torch.arange(M, device=q.device).view(1, 1, M, 1)
    causal = (k_pos >= 0) & (k_pos <= q_pos)  # also keeps keys at or past the row's end out

    # one kv head at a time: a [B, N_max, D] slice of the cache is a strided batch that
    # matmul reads in place, where [B, hk, …] of a larger cache would be copied first
    q_groups = q.reshape(B, hk, G * M, D)
    scores = torch.stack([torch.matmul(q_groups[:, j], k[:, j].transpose(-1, -2))
                          for j in range(hk)], 1)
    scores = scores.float().view(B, h, M, n_max) * scale
    allowed = torch.zeros((B, h, M, n_max), dtype=torch.bool, device=q.device)
    heads_of: dict[Node, list[int]] = {}
    for i, node in enumerate(nodes):
        heads_of.setdefault(node, []).append(i)
    frame = _Frame(q_pos, k_pos, n, M, causal, q, k, scale)
    for node, heads in heads_of.items():
        index = _index(tuple(heads), q.device)
        frame.heads = (index, [h // G for h in heads])
        allowed[:, index] = _allowed(node, scores.index_select(1, index), frame)
    probs = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1).nan_to_num(0.0)
    width = max((_bound(n) or n_max) for n in nodes)
    if width * 4 <= n_max:
        return _gathered(probs, allowed, v, width).to(q.dtype)
    probs = probs.to(v.dtype).view(B, hk, G * M, n_max)
    out = torch.stack([torch.matmul(probs[:, j], v[:, j]) for j in range(hk)], 1)
    return out.view(B, h, M, D).to(q.dtype)


def _gathered(probs: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor, width: int
              ) -> torch.Tensor:
    """probs · V reading only the values of allowed keys: at most `width` per query row, so
    the `width` largest probabilities hold them all. Values that are not allowed are
    zeroed after the gather (a NaN there must not reach the row through a zero weight)."""
    B, h, M, n_max = probs.shape
    hk = v.shape[1]
    G = h // hk
    picked = probs.topk(width, dim=-1)
    keep = allowed.gather(-1, picked.indices)  # [B, h, M, width]
    rows = torch.arange(B, device=v.device).view(B, 1)
    outs = []
    for j in range(hk):
        index = picked.indices[:, j * G:(j + 1) * G].reshape(B, -1)
        values = v[:, j][rows, index].view(B, G, M, width, -1)
        values = values.masked_fill(~keep[:, j * G:(j + 1) * G, :, :, None], 0)
        weights = picked.values[:, j * G:(j + 1) * G].to(v.dtype)
        outs.append(torch.einsum("bgmw,bgmwd->bgmd", weights, values))
    return torch.cat(outs, 1)


def _bound(node: Node) -> int | None:
    """An upper bound on the keys one query row of `node` may see, where one is known."""
    if node.op == "prim":
        if node.name == "vertical_slash" and not any(p.free_symbols for p in node.params):
            return sum(int(p) for p in node.params)
        return None
    bounds = [_bound(c) for c in node.children]
    if node.op == "or":
        return None if None in bounds else sum(bounds)
    if node.op == "and":
        known = [b for b in bounds if b is not None]
        return min(known) if known else None
    return None


_INDICES: dict = {}


def _index(heads: tuple[int, ...], device) -> torch.Tensor:
    """The head indices as a device tensor, made once (a copy from the host is not allowed
    while a CUDA graph is being captured)."""
    key = (heads, str(device))
    if key not in _INDICES:
        _INDICES[key] = torch.tensor(heads, device=device)
    return _INDICES[key]


class _Frame:
    """Positions of one decode step, every row in its own frame."""

    def __init__(self, q_pos, k_pos, n, M: int, causal, q, k, scale: float):
        self.q_pos, self.k_pos, self.n, self.M, self.causal = q_pos, k_pos, n, M, causal
        self.in_range = (k_pos >= 0) & (k_pos < n) & (q_pos >= 0)
        self.q, self.k, self.scale = q, k, scale
        self.heads = None  # (query heads as a device index, their kv heads) of the node


def _allowed(node: Node, scores: torch.Tensor, f: _Frame) -> torch.Tensor:
    """bool [B, heads, M, N_max] of `node` for these heads' scores."""
    if not node.is_dynamic:
        return predicate_fn(node, f.M, f.n)(f.q_pos, f.k_pos) & f.in_range
    if node.op == "prim" and node.name == "vertical_slash":  # see `supported`
        v, s = (int(p) for p in node.params)
        return _vertical_slash(scores, v, s, f)
    if node.op == "prim":  # block_topk(t, g) or block_cover(gamma, g)
        # a group past the cache's end is one group, as is the cache's length (no padding)
        g = min(int(node.params[1]), max(1, f.k.shape[2]))
        return _block_picks(node.name, float(node.params[0]), g, f)
    mask = combine(node, [_allowed(c, scores, f) for c in node.children])
    return mask & f.in_range if node.op == "not" else mask


def _vertical_slash(scores: torch.Tensor, v: int, s: int, f: _Frame) -> torch.Tensor:
    """DESIGN §5 with every one of the M queries voting, in each row's frame."""
    B, H, M, n_max = scores.shape
    probs = torch.softmax(scores.masked_fill(~f.causal, -math.inf), dim=-1).nan_to_num(0.0)
    k_pos = f.k_pos.view(B, 1, n_max)
    key_ok = (k_pos >= 0) & (k_pos < f.n.view(B, 1, 1))
    vertical = probs.sum(2).masked_fill(~key_ok, -math.inf)
    vertical = vertical.masked_fill(key_ok & (k_pos < min(VS_FORCED_COLUMNS, v)), math.inf)
    offset = (f.q_pos - f.k_pos).clamp(0, n_max - 1).expand(B, H, M, n_max)  # q − k
    slash = torch.zeros((B, H, n_max), device=scores.device).scatter_add_(
        2, offset.reshape(B, H, -1), probs.reshape(B, H, -1))
    d = torch.arange(n_max, device=scores.device).view(1, 1, n_max)
    slash = slash.masked_fill(d >= f.n.view(B, 1, 1), -math.inf)
    slash = slash.masked_fill(d < min(VS_FORCED_OFFSETS, s), math.inf)
    keys = torch.zeros((B, H, n_max), dtype=torch.bool, device=scores.device)
    keys.scatter_(2, vertical.topk(min(v, n_max), dim=-1).indices, True)
    diags = torch.zeros((B, H, n_max), dtype=torch.bool, device=scores.device)
    diags.scatter_(2, slash.topk(min(s, n_max), dim=-1).indices, True)
    on_slash = diags.gather(2, offset.reshape(B, H, -1)).view(B, H, M, n_max)
    return f.causal & (keys[:, :, None, :] | on_slash)


def _block_picks(kind: str, param: float, g: int, f: _Frame) -> torch.Tensor:
    """bool [B, heads, M, N_max]: block_topk(param, g) or block_cover(param, g) (DESIGN §5)
    in each row's frame — keys pooled over blocks of g frame positions, the M queries over
    the blocks they fall in, the picked key blocks of each query's block, causal."""
    index, kv_heads = f.heads
    q, k = f.q.index_select(1, index), f.k
    B, H, M, D = q.shape
    n_max = k.shape[2]
    blocks = -(-n_max // g)
    # keys: gather each row's frame positions j·g + r (absolute first + j·g + r)
    first = (f.k_pos[..., 0] * -1).view(B, 1)  # k_pos = position − first
    frame_pos = torch.arange(blocks * g, device=q.device).view(1, -1)
    key_ok = frame_pos < f.n.view(B, 1)
    rows = (first + frame_pos).clamp(0, n_max - 1)
    pooled_k, used = [], sorted(set(kv_heads))
    for j in used:
        keys = k[:, j].gather(1, rows[..., None].expand(B, -1, D))
        keys = keys.masked_fill(~key_ok[..., None], 0).view(B, blocks, g, D)
        count = key_ok.view(B, blocks, g).sum(-1, keepdim=True).clamp(min=1)
        pooled_k.append(keys.sum(2, dtype=torch.float32) / count)
    pooled_k = torch.stack(pooled_k, 1)  # [B, kv heads used, blocks, D]
    which = _index(tuple(used.index(j) for j in kv_heads), q.device)
    pooled_k = pooled_k.index_select(1, which)  # [B, H, blocks, D]
    # queries: the mean of this step's queries in the same block (rows before the frame out)
    q_pos = f.q_pos.view(B, M)
    q_block = torch.div(q_pos, g, rounding_mode="floor")
    present = q_pos >= 0
    same = (q_block[:, :, None] == q_block[:, None, :]) & present[:, None, :]
    weights = same.float() / same.sum(-1, keepdim=True).clamp(min=1)
    pooled_q = torch.matmul(weights[:, None], q.float())  # [B, H, M, D]
    scores = torch.matmul(pooled_q, pooled_k.transpose(-1, -2))  # [B, H, M, blocks]
    key_block = torch.arange(blocks, device=q.device).view(1, 1, 1, blocks)
    q_block = q_block.view(B, 1, M, 1)
    causal = (key_block <= q_block).expand_as(scores)
    picked = select_blocks(scores, causal, kind, param, f.scale) | (key_block == q_block)
    k_block = torch.div(f.k_pos, g, rounding_mode="floor").clamp(0, blocks - 1)
    allowed = picked.gather(-1, k_block.expand(B, H, M, n_max))
    return allowed & f.causal
