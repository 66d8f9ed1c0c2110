"""Sparse-aware context parallelism over torch.distributed (NCCL on GPUs, gloo on the CPU).

    q_local, k_local, v_local = (distributed.shard(x, pattern) for x in (q, k, v))
    out_local = distributed.attention(q_local, k_local, v_local, pattern)
    out = distributed.unshard(out_local, pattern)   # = attngen.attention(q, k, v, pattern)

Every rank plans the same split from the pattern alone, with no communication
(`plan_shards`): the block layout at the full length tells which kv blocks each query block
visits, so

- the sequence is cut at block boundaries where the *visited blocks* (the work) are equal
  per rank, not the tokens: causal, document and A-shape patterns leave no rank idle;
- each rank receives only the K/V blocks its query rows visit, from the ranks that hold
  them (a window needs its neighbour's last w keys, a sink the first rank's first blocks,
  strided keys their residue blocks), by point-to-point sends that all ranks post at once;
- its queries then run the ordinary single-GPU kernel against a key buffer holding the
  blocks it received and its own, zeros elsewhere (never visited, so never read). The
  buffer starts at the rank's first needed key when the pattern depends on positions only
  through q − k (local, band, strided, dilated, causal, document: `shift_invariant` in
  ir/primitives.py), so a window's memory is O(rows + w); otherwise at position 0.

Autograd: the exchange's backward sends the gradients of the received blocks back to their
owners, who add them to their own. `N` and `M` in a pattern mean the whole sequence's
length (each rank's kernel call sees its own), so they are bound to it before the call.
Patterns must lie within causal (a rank's queries then need no key after its last row) and
be static; `heads { … }` mixtures and GQA work. The estimate of a dynamic pattern needs
every key, so dynamic patterns are refused.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import attngen
from attngen.ir import simplify as S
from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.node import walk
from attngen.ir.pattern import Pattern
from attngen.ir.primitives import PRIMITIVES
from attngen.runtime.compiler import _pattern

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint [start, stop) position ranges


@dataclass(frozen=True)
class Shards:
    """The split of an N-token sequence over `world` ranks under one pattern."""

    N: int
    block: int
    bounds: tuple[int, ...]  # rank r holds positions bounds[r] .. bounds[r + 1] - 1
    needs: tuple[Ranges, ...]  # per rank: the key positions its queries visit (own included)
    work: tuple[int, ...]  # per rank: kv blocks its query blocks visit, summed over patterns
    shift_invariant: bool = False  # the pattern moves with the positions (compact buffers)

    def buffer_start(self, rank: int) -> int:
        """The first position of `rank`'s key buffer: its first needed key when the pattern
        is shift-invariant (the kernel then sees positions shifted by it), else 0."""
        if not self.shift_invariant or not self.needs[rank]:
            return 0
        return self.needs[rank][0][0]

    def rows(self, rank: int) -> tuple[int, int]:
        return self.bounds[rank], self.bounds[rank + 1]

    def wanted(self, rank: int, owner: int) -> Ranges:
        """The key ranges `rank` needs from `owner`'s shard (empty for itself)."""
        if rank == owner:
            return ()
        lo, hi = self.rows(owner)
        return tuple((max(a, lo), min(b, hi)) for a, b in self.needs[rank]
                     if max(a, lo) < min(b, hi))

    def received(self, rank: int) -> int:
        """Key positions `rank` receives from the others."""
        return sum(b - a for owner in range(len(self.bounds) - 1)
                   for a, b in self.wanted(rank, owner))


def _plan_block(N: int, world: int) -> int:
    """128-key blocks, smaller while the sequence has fewer than 8 blocks per rank."""
    block = 128
    while block > 16 and -(-N // block) < 8 * world:
        block //= 2
    return block


def _check(pattern: Pattern) -> None:
    if pattern.is_dynamic:
        raise NotImplementedError(f"`{pattern}`: a dynamic pattern estimates from every key; "
                                  "attngen.distributed runs static patterns only")
    nodes = pattern.node.children if pattern.node.op == "heads" else (pattern.node,)
    causal = S.prim("causal")
    for node in nodes:
        if not S.subset(node, causal):
            raise ValueError(f"`{node.text}` is not within causal: attngen.distributed needs "
                             "every head's pattern inside `causal` (combine it with causal)")


def _ranges(flags: np.ndarray, block: int, N: int) -> Ranges:
    """The position ranges of the set blocks of a bool vector over kv blocks."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return tuple((int(a) * block, min(N, int(b) * block)) for a, b in zip(edges[::2],
                                                                             edges[1::2]))


def _balanced_cuts(cost: np.ndarray, world: int) -> list[int]:
    """world − 1 cuts of the query blocks (rank r takes blocks cuts[r−1] .. cuts[r] − 1)
    minimising the largest rank's work (the linear partition problem: binary search on
    that maximum, cutting greedily); every rank gets a block when there are enough."""
    QB = len(cost)
    before = np.concatenate([[0], np.cumsum(cost)])  # work of blocks 0 .. i − 1

    def greedy(limit: int) -> tuple[list[int], bool]:
        cuts, start = [], 0
        for i in range(world - 1):
            end = int(np.searchsorted(before, before[start] + limit, side="right")) - 1
            if QB >= world:  # leave a block for each rank after this one
                end = max(min(end, QB - (world - 1 - i)), start + 1)
            end = min(max(end, start), QB)
            cuts.append(end)
            start = end
        return cuts, before[QB] - before[start] <= limit

    lo, hi = int(cost.max(initial=0)), int(before[QB])
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if greedy(mid)[1] else (mid + 1, hi)
    return greedy(lo)[0]


_DOCS: dict[str, torch.Tensor] = {}  # doc_ids by digest, for _plan's cache key


@functools.lru_cache(maxsize=64)
def _plan(text: str, N: int, world: int, block: int, doc_key: str | None) -> Shards:
    pattern = _pattern(text)
    nodes = pattern.node.children if pattern.node.op == "heads" else (pattern.node,)
    docs = None if doc_key is None else _DOCS[doc_key]
    QB = KB = -(-N // block)
    cost = np.zeros(QB, dtype=np.int64)
    tables = []  # (offsets, kv block indices) of every pattern's partial and full blocks
    for node in dict.fromkeys(nodes):  # each distinct head pattern weighs the same
        lay = attngen.layout(Pattern(node), N, N, block=block, doc_ids=docs)
        for csr in (lay.partial[0], lay.full[0]):
            tables.append((csr.offsets, csr.indices))
            cost += csr.counts
    cuts = _balanced_cuts(cost, world)
    edges = [0, *cuts, QB]
    bounds = tuple(min(N, e * block) for e in edges)

    def visited(a: int, b: int) -> np.ndarray:  # kv blocks query blocks a .. b − 1 visit
        flags = np.zeros(KB, dtype=bool)
        for offsets, indices in tables:
            flags[indices[offsets[a]:offsets[b]]] = True
        return flags

    needs = tuple(_ranges(visited(a, b), block, N) for a, b in zip(edges, edges[1:]))
    work = tuple(int(cost[a:b].sum()) for a, b in zip(edges, edges[1:]))
    return Shards(N, block, bounds, needs, work, _shift_invariant(pattern, N))


def _shift_invariant(pattern: Pattern, N: int) -> bool:
    """Whether the pattern, its lengths bound to N, reads positions only through q − k
    (and document ids), so a rank may run its queries against a buffer starting at its
    first needed key (ir/primitives.py: `shift_invariant`)."""
    node = S.bind(pattern.node, {N_SYM: N, M_SYM: N})
    return all(n.op in ("or", "and", "not", "empty", "heads")
               or (n.op == "prim" and PRIMITIVES[n.name].shift_invariant)
               for n in walk(node))


def plan_shards(pattern: Pattern | str, N: int, world: int, block: int | None = None,
                doc_ids: torch.Tensor | None = None) -> Shards:
    """The split every rank computes alike (module doc): boundaries balancing the visited
    kv blocks, and the key ranges each rank's queries visit."""
    pattern = _pattern(pattern)
    _check(pattern)
    if world < 1 or N < 1:
        raise ValueError(f"need N >= 1 tokens and a world of >= 1 ranks, got N={N}, "
                         f"world={world}")
    doc_key = None
    if doc_ids is None and "document" in str(pattern):
        raise ValueError(f"`{pattern}` needs doc_ids (the document id of every position)")
    if doc_ids is not None and "document" in str(pattern):
        docs = doc_ids.reshape(-1).to("cpu", torch.int64)
        if docs.numel() != N:
            raise ValueError(f"doc_ids has {docs.numel()} entries for a sequence of {N}")
        doc_key = hashlib.sha256(docs.numpy().tobytes()).hexdigest()
        if doc_key not in _DOCS and len(_DOCS) >= 64:  # bounded like _plan's cache
            _DOCS.clear()
            _plan.cache_clear()
        _DOCS.setdefault(doc_key, docs)
    return _plan(str(pattern), N, world, block or _plan_block(N, world), doc_key)


def _group_info(group) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def shard(x: torch.Tensor, pattern: Pattern | str, group=None, dim: int = 2,
          doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's rows of a full-sequence tensor along `dim` (the split of plan_shards)."""
    world, rank = _group_info(group)
    shards = plan_shards(pattern, x.shape[dim], world, doc_ids=doc_ids)
    lo, hi = shards.rows(rank)
    return x.narrow(dim, lo, hi - lo)


def unshard(x_local: torch.Tensor, pattern: Pattern | str, group=None, dim: int = 2,
            doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The full tensor on every rank, in sequence order, from each rank's rows."""
    world, _ = _group_info(group)
    lengths = _lengths(x_local.shape[dim], x_local.device, group)
    longest = max(lengths)
    pad = list(x_local.shape)
    pad[dim] = longest - x_local.shape[dim]
    padded = torch.cat([x_local, x_local.new_zeros(pad)], dim).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, lengths)], dim)


def _lengths(local: int, device, group) -> list[int]:
    world, _ = _group_info(group)
    mine = torch.tensor([local], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    return [int(t.item()) for t in every]


@dataclass
class Exchange:
    """What the last `attention` call of this process moved (for tests and the bench)."""

    received_positions: int = 0
    received_bytes: int = 0
    sent_bytes: int = 0
    buffer_positions: int = 0  # the key buffer's length (received and own rows, gaps)


LAST_EXCHANGE = Exchange()


def _swap(outgoing: dict[int, torch.Tensor], incoming: dict[int, torch.Tensor],
          group) -> None:
    """Posts every send and receive at once (no ordering between ranks), then waits."""
    ops = [dist.P2POp(dist.irecv, buf, _global(peer, group), group)
           for peer, buf in incoming.items()]
    ops += [dist.P2POp(dist.isend, t, _global(peer, group), group)
            for peer, t in outgoing.items()]
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()


def _global(rank: int, group) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _slices(x: torch.Tensor, ranges: Ranges, offset: int) -> torch.Tensor:
    """x's rows (dim 2) of the given absolute ranges, x starting at position `offset`."""
    return torch.cat([x[:, :, a - offset:b - offset] for a, b in ranges], 2).contiguous()


def _exchange(x: torch.Tensor, sends: dict[int, Ranges], receives: dict[int, Ranges],
              offset: int, group):
    """Sends each peer its ranges of x (x starting at position `offset`) and receives each
    peer's ranges; yields (start, stop, rows) per received range, and the bytes moved."""
    outgoing = {p: _slices(x, r, offset) for p, r in sends.items() if r}
    incoming = {p: x.new_empty((*x.shape[:2], sum(b - a for a, b in r), x.shape[3]))
                for p, r in receives.items() if r}
    _swap(outgoing, incoming, group)
    pieces = []
    for p, got in incoming.items():
        at = 0
        for a, b in receives[p]:
            pieces.append((a, b, got[:, :, at:at + b - a]))
            at += b - a
    moved = [sum(t.numel() * t.element_size() for t in d.values())
             for d in (incoming, outgoing)]
    return pieces, moved


class _Gather(torch.autograd.Function):
    """k_local, v_local → key buffers from Shards.buffer_start to the rank's last row,
    holding its own rows and the rows it visits from the others (zeros elsewhere); backward
    returns the received rows' gradients to their owners."""

    @staticmethod
    def forward(ctx, k_local, v_local, shards: Shards, rank: int, group):
        ctx.shards, ctx.rank, ctx.group = shards, rank, group
        lo, hi = shards.rows(rank)
        start = shards.buffer_start(rank)
        peers = range(len(shards.bounds) - 1)
        sends = {p: shards.wanted(p, rank) for p in peers}
        receives = {p: shards.wanted(rank, p) for p in peers}
        bufs, received, sent = [], 0, 0
        for x in (k_local, v_local):
            buf = x.new_zeros((*x.shape[:2], hi - start, x.shape[3]))
            buf[:, :, lo - start:hi - start] = x
            pieces, (got, gave) = _exchange(x, sends, receives, lo, group)
            for a, b, rows in pieces:
                buf[:, :, a - start:b - start] = rows
            bufs.append(buf)
            received, sent = received + got, sent + gave
        LAST_EXCHANGE.received_positions = shards.received(rank)
        LAST_EXCHANGE.received_bytes, LAST_EXCHANGE.sent_bytes = received, sent
        LAST_EXCHANGE.buffer_positions = hi - start
        return tuple(bufs)

    @staticmethod
    def backward(ctx, grad_k, grad_v):
        shards, rank = ctx.shards, ctx.rank
        lo, hi = shards.rows(rank)
        start = shards.buffer_start(rank)
        peers = range(len(shards.bounds) - 1)
        # what this rank received from p goes back to p; what p received from it comes back
        sends = {p: shards.wanted(rank, p) for p in peers}
        receives = {p: shards.wanted(p, rank) for p in peers}
        grads = []
        for g in (grad_k, grad_v):
            own = g[:, :, lo - start:hi - start].clone()
            pieces, _ = _exchange(g, sends, receives, start, ctx.group)
            for a, b, rows in pieces:
                own[:, :, a - lo:b - lo] += rows
            grads.append(own)
        return grads[0], grads[1], None, None, None


def attention(q_local: torch.Tensor, k_local: torch.Tensor, v_local: torch.Tensor,
              pattern: Pattern | str, group=None, scale: float | None = None,
              doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's output rows: equal to the matching rows of `attngen.attention` on the
    full q, k, v. q_local [B, H, L, D], k_local / v_local [B, Hkv, L, D] are this rank's
    rows as `shard` cuts them; doc_ids, if any, is the full [N] tensor on every rank."""
    world, rank = _group_info(group)
    lengths = _lengths(q_local.shape[2], q_local.device, group)
    N = sum(lengths)
    shards = plan_shards(pattern, N, world, doc_ids=doc_ids)
    want = [b - a for a, b in zip(shards.bounds, shards.bounds[1:])]
    if lengths != want:
        raise ValueError(f"the ranks hold {lengths} rows; `{pattern}` over {N} tokens is split "
                         f"{want} (cut q, k and v with attngen.distributed.shard)")
    if k_local.shape[2] != q_local.shape[2] or v_local.shape[2] != q_local.shape[2]:
        raise ValueError(f"q, k and v hold {q_local.shape[2]}, {k_local.shape[2]} and "
                         f"{v_local.shape[2]} rows on rank {rank}; they must be cut alike")
    k_buf, v_buf = _Gather.apply(k_local, v_local, shards, rank, group)
    if q_local.shape[2] == 0:
        # no rows here; the result still depends on every input, so this rank takes part
        # in the backward's exchange like the others
        return q_local * 0 + 0 * (k_buf.sum() + v_buf.sum())
    lo, hi = shards.rows(rank)
    start = shards.buffer_start(rank)
    docs = None if doc_ids is None else doc_ids[start:hi]
    # the rank's call sees M = its rows and N = its prefix: N and M in the pattern mean the
    # whole sequence's (a prefill, M = N), so they are bound to it first
    whole = Pattern(S.bind(_pattern(pattern).node, {N_SYM: N, M_SYM: N}))
    return attngen.attention(q_local, k_buf, v_buf, whole, scale=scale, doc_ids=docs)
