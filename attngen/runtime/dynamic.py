"""Run-time estimation of dynamic terms (DESIGN §5) and their conversion to the indices the
generated kernel reads — all PyTorch on q's device, inside the attention call.

vertical_slash(v, s), per (batch, head): the last L = min(64, M) queries (absolute
positions N − L … N − 1) softmaxed over the keys they may see vote; column sums pick V,
sums along each diagonal d = q − k pick S (read off a skewed view of the probabilities, no
scatter); the first min(30, v) keys and min(100, s) offsets are forced. The kernel then
visits, per query block, (a) every kv block some picked diagonal crosses — exactly the
blocks (i, j) whose offset interval [q_lo − k_hi, q_hi − k_lo] holds a picked offset, found
with a prefix count of S — testing `diag[q − k] or vert[k]` per element (blocks whose every
offset is picked skip the test), and (b) the picked columns outside those blocks, gathered
BLOCK_N at a time. Each allowed pair is seen once.

block_topk(t, g) / block_cover(gamma, g): q and k are mean-pooled over g absolute
positions; pooled scores pick, per pooled query block, the t best causal key blocks
(block_topk) or the fewest whose softmax mass reaches gamma (block_cover, FlexPrefill),
plus the diagonal block. A kernel block is visited when it overlaps a picked g-block
(a 2D prefix count) and is full when all it overlaps are picked and it lies below the
diagonal; partial blocks test `pick[q // g, k // g] and k <= q` per element.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.pattern import Pattern
from attngen.ir.primitives import PRIMITIVES
from attngen.lower.decompose import Part, decompose
from attngen.lower.grid import Grid
from attngen.runtime.tables import csr_of

VS_LAST_Q = 64  # queries that vote (MInference's last_q)
VS_FORCED_COLUMNS = 30  # first keys always in V
VS_FORCED_OFFSETS = 100  # nearest diagonals always in S
ESTIMATE_BLOCK = 64  # keys per step of the estimation kernels
CHUNK_ELEMENTS = 1 << 26  # bound on the largest temporary (elements) while estimating
CSR_CHUNK_ELEMENTS = 1 << 24  # blocks compacted at once by csr_in_place


def parameters(prim, M: int, N: int) -> list[float]:
    """The primitive's parameters at this shape (integers stay integers)."""
    return list(_parameters(prim, M, N))


@functools.lru_cache(maxsize=1024)
def _parameters(prim, M: int, N: int) -> tuple:
    env = {N_SYM: N, M_SYM: M}
    out = []
    for name, p in zip(PRIMITIVES[prim.name].params, prim.params):
        value = p.subs(env)
        value = int(value) if value.is_integer else float(value)
        if name == "g":  # a group past every position is one group, as is max(M, N): the
            value = min(value, max(M, N, 1))  # pooled estimate never pads to more rows
        out.append(value)
    return tuple(out)


def _rows_per_chunk(per_row: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, per_row))


# -- estimation --------------------------------------------------------------------------
def vertical_slash_sets(q: torch.Tensor, k: torch.Tensor, v: int, s: int, scale: float,
                        module=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, S) for q [R, M, D], k [R, N, D]: the picked keys and picked offsets q − k as
    index tensors [R, min(v, N)] and [R, min(s, N)], each sorted ascending. The sums come
    from the generated module's estimation kernels when `module` has them, else from
    PyTorch (the same numbers up to summation order)."""
    if module is not None and hasattr(module, "vs_sums"):
        vertical, slash = _vs_sums_kernel(module, q, k, scale)
        return _top(vertical, slash, v, s)
    R, M, _ = q.shape
    N = k.shape[1]
    L = min(VS_LAST_Q, M)
    voters = torch.arange(N - L, N, device=q.device)
    tail = min(L, N)  # only the last L keys can lie after a voter
    after = torch.arange(N - tail, N, device=q.device)[None, :] > voters[:, None]
    width = N + L
    keys, offsets = [], []
    for r0 in range(0, R, _rows_per_chunk(2 * L * width)):
        r1 = min(R, r0 + _rows_per_chunk(2 * L * width))
        scores = torch.matmul(q[r0:r1, M - L:].float() * scale, k[r0:r1].float().transpose(1, 2))
        scores[..., N - tail:].masked_fill_(after, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        if L > N:  # voters at negative positions (M > N) see no key: their row is NaN
            probs = probs.nan_to_num(0.0)
        vertical = probs.sum(1)
        # skew: left-padded by L, voter i (position N-L+i) finds offset d = N-1-e at
        # column e+1+i, so a row stride of width+1 lines the diagonals up as columns e
        padded = torch.nn.functional.pad(probs, (L, 0))  # [c, L, N + L]
        skewed = padded.as_strided((r1 - r0, L, N), (L * width, width + 1, 1), 1)
        slash = skewed.sum(1).flip(-1)
        chunk_keys, chunk_offsets = _top(vertical, slash, v, s)
        keys.append(chunk_keys)
        offsets.append(chunk_offsets)
    return torch.cat(keys), torch.cat(offsets)


def _top(vertical: torch.Tensor, slash: torch.Tensor, v: int, s: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top v keys and top s offsets by their sums, the forced ones first (set to +inf)."""
    N = vertical.shape[-1]
    vertical[:, :min(VS_FORCED_COLUMNS, v)] = math.inf
    slash[:, :min(VS_FORCED_OFFSETS, s)] = math.inf
    return (vertical.topk(min(v, N), dim=-1).indices.sort(-1).values,
            slash.topk(min(s, N), dim=-1).indices.sort(-1).values)


def _vs_sums_kernel(module, q: torch.Tensor, k: torch.Tensor, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and diagonal sums [R, N] of the voters' probabilities by vs_lse + vs_sums."""
    R, M, D = q.shape
    N = k.shape[1]
    L = min(VS_LAST_Q, M)
    q, k = q.contiguous(), k.contiguous()
    lse = torch.empty(R, VS_LAST_Q, dtype=torch.float32, device=q.device)
    vertical = torch.empty(R, N, dtype=torch.float32, device=q.device)
    slash = torch.zeros(R, N, dtype=torch.float32, device=q.device)
    args = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), M, N, L, D,
            scale * 1.4426950408889634)
    shape = dict(D_TILE=1 << (D - 1).bit_length(), VOTERS=VS_LAST_Q, BLOCK=ESTIMATE_BLOCK)
    module.vs_lse[(R,)](q, k, lse, *args, **shape)
    module.vs_sums[(R, -(-N // ESTIMATE_BLOCK))](q, k, lse, vertical, slash, *args, **shape)
    return vertical, slash


def _pooled(x: torch.Tensor, first: int, g: int, blocks: int) -> torch.Tensor:
    """Mean of x [R, L, D] (rows at absolute positions first, first + 1, …) over blocks of g
    absolute positions → [R, blocks, D]; a block with no row stays zero, and rows at
    negative positions (M > N: they see no key) are left out."""
    if first < 0:
        x, first = x[:, -first:], 0
    R, L, D = x.shape
    lead, pad_lo = divmod(first, g)
    length = (blocks - lead) * g
    if pad_lo or L != length:  # ragged ends: pad in x's own dtype
        x = torch.nn.functional.pad(x, (0, 0, pad_lo, length - pad_lo - L))
    sums = x.view(R, -1, g, D).sum(2, dtype=torch.float32)
    per = torch.full((blocks - lead,), float(g), device=x.device)
    per[0] -= pad_lo
    per[-1] -= length - pad_lo - L
    out = torch.zeros(R, blocks, D, device=x.device)
    out[:, lead:] = sums / per.clamp(min=1)[None, :, None]
    return out


def block_picks(q: torch.Tensor, k: torch.Tensor, kind: str, params: list, scale: float
                ) -> torch.Tensor:
    """bool [R, G, G] (G = ⌈N / g⌉): the key blocks each pooled query block keeps."""
    R, M, _ = q.shape
    N = k.shape[1]
    g = int(params[1])
    G = -(-N // g)
    pq = _pooled(q, N - M, g, G)
    pk = _pooled(k, 0, g, G)
    causal = torch.ones(G, G, dtype=torch.bool, device=q.device).tril()
    picks = []
    for r0 in range(0, R, _rows_per_chunk(4 * G * G)):
        r1 = min(R, r0 + _rows_per_chunk(4 * G * G))
        scores = torch.matmul(pq[r0:r1], pk[r0:r1].transpose(1, 2))
        picked = select_blocks(scores, causal, kind, float(params[0]), scale)
        picks.append(picked | torch.eye(G, dtype=torch.bool, device=q.device))
    return torch.cat(picks)


def select_blocks(scores: torch.Tensor, causal: torch.Tensor, kind: str, param: float,
                  scale: float) -> torch.Tensor:
    """bool, scores' shape: the causal key blocks each pooled query block keeps from its
    pooled scores — the `param` highest (block_topk), or the fewest whose softmax mass of
    scale · scores reaches `param` (block_cover, FlexPrefill). A row with no causal block
    keeps none. The caller adds the diagonal block."""
    if kind == "block_topk":
        top = scores.masked_fill(~causal, -math.inf).topk(min(int(param), scores.shape[-1]), -1)
        picked = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        picked.scatter_(-1, top.indices, True)
    else:
        mass = torch.softmax((scores * scale).masked_fill(~causal, -math.inf), -1)
        order = mass.nan_to_num(0.0).sort(-1, descending=True)
        keep = (order.values.cumsum(-1) - order.values) < param
        picked = torch.zeros_like(keep).scatter_(-1, order.indices, keep)
    return picked & causal


# -- conversion to kernel blocks ---------------------------------------------------------
def _block_spans(grid: Grid, device):
    """Absolute positions: first and last query of each query block, first and last key
    of each kv block."""
    QB, KB, BM, BN, M, N = grid.QB, grid.KB, grid.BM, grid.BN, grid.M, grid.N
    i = torch.arange(QB, device=device)
    j = torch.arange(KB, device=device)
    q_lo = i * BM + (N - M)
    q_hi = torch.clamp((i + 1) * BM, max=M) - 1 + (N - M)
    return q_lo, q_hi, j * BN, torch.clamp((j + 1) * BN, max=N) - 1


def slash_blocks(offsets: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool [R, QB, KB]: the blocks picked diagonals cross."""
    R, N = offsets.shape[0], grid.N
    picked = torch.zeros(R, N, dtype=torch.int32, device=offsets.device)
    picked.scatter_(1, offsets, 1)
    below = torch.nn.functional.pad(picked.cumsum(1, dtype=torch.int32), (1, 0))  # [R, N+1]
    q_lo, q_hi, k_lo, k_hi = _block_spans(grid, offsets.device)
    lo = (q_lo[:, None] - k_hi[None, :]).clamp(min=0)
    hi = (q_hi[:, None] - k_lo[None, :]).clamp(max=N - 1)
    some_pair = hi >= lo
    lo_i, hi_i = lo.clamp(max=N - 1).flatten(), (hi + 1).clamp(min=0).flatten()
    width = (hi - lo + 1).clamp(min=0)
    below_diag = (q_lo[:, None] >= k_hi[None, :])
    partial, full = [], []
    for r0 in range(0, R, _rows_per_chunk(grid.QB * grid.KB)):
        r1 = min(R, r0 + _rows_per_chunk(grid.QB * grid.KB))
        b = below[r0:r1]
        count = (b[:, hi_i] - b[:, lo_i]).view(r1 - r0, grid.QB, grid.KB)
        hit = (count > 0) & some_pair
        every = hit & (count == width) & below_diag
        partial.append(hit & ~every)
        full.append(every)
    return torch.cat(partial), torch.cat(full)


def vertical_columns(keys: torch.Tensor, crossed: torch.Tensor, grid: Grid
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns int32 [R, QB, v], counts int32 [R, QB]): per query block, the picked keys
    it may see (k ≤ its last query) outside the blocks `crossed` [R, QB, KB] already covers,
    packed to the front in ascending order."""
    R, v = keys.shape
    _, q_hi, _, _ = _block_spans(grid, keys.device)
    block_of = (keys // grid.BN).long()
    cols, counts = [], []
    for r0 in range(0, R, _rows_per_chunk(4 * grid.QB * v)):
        r1 = min(R, r0 + _rows_per_chunk(4 * grid.QB * v))
        kk, bo = keys[r0:r1], block_of[r0:r1]
        covered = torch.gather(crossed[r0:r1], 2, bo[:, None, :].expand(-1, grid.QB, -1))
        keep = (kk[:, None, :] <= q_hi[None, :, None]) & ~covered  # [c, QB, v]
        slot = torch.where(keep, keep.cumsum(-1, dtype=torch.int64) - 1, v)
        packed = torch.zeros(r1 - r0, grid.QB, v + 1, dtype=torch.int32, device=keys.device)
        packed.scatter_(2, slot, kk[:, None, :].expand(-1, grid.QB, -1).to(torch.int32))
        cols.append(packed[..., :v])
        counts.append(keep.sum(-1, dtype=torch.int32))
    return torch.cat(cols), torch.cat(counts)


def pick_blocks(picks: torch.Tensor, g: int, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool [R, QB, KB] of kernel blocks from g-block picks [R, G, G]."""
    G = picks.shape[1]
    total = torch.nn.functional.pad(picks.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0))
    q_lo, q_hi, k_lo, k_hi = _block_spans(grid, picks.device)
    r_lo, r_hi = (q_lo // g).clamp(0, G - 1), (q_hi // g).clamp(0, G - 1)
    c_lo, c_hi = k_lo // g, k_hi // g
    area = (r_hi - r_lo + 1)[:, None] * (c_hi - c_lo + 1)[None, :]
    below_diag = q_lo[:, None] >= k_hi[None, :]
    some_pair = k_lo[None, :] <= q_hi[:, None]

    def at(r, c):  # total[:, r, c] for every (query block, kv block)
        return total[:, r[:, None], c[None, :]]

    count = at(r_hi + 1, c_hi + 1) - at(r_lo, c_hi + 1) - at(r_hi + 1, c_lo) + at(r_lo, c_lo)
    hit = (count > 0) & some_pair
    every = hit & (count == area) & below_diag
    return hit & ~every, every


def _bits(flags: torch.Tensor) -> torch.Tensor:
    """int8 flags [R, N] → int32 words [R, W], W = ⌈N / 32⌉, in reverse order: bit b of
    word w stands for flag 32·W − 1 − (32·w + b) (0 past N). A kernel row q then finds the
    offsets q − k of consecutive keys k at consecutive bits (templates/_dynamic.py.j2)."""
    R, N = flags.shape
    padded = torch.nn.functional.pad(flags, (0, -N % 32)).flip(-1).view(R, -1, 32)
    weights = torch.ones(32, dtype=torch.int64, device=flags.device) << torch.arange(
        32, device=flags.device)
    words = (padded.to(torch.int64) * weights).sum(-1)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def csr_in_place(classes: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets int32 [R + 1], indices int32 [capacity + 1]) of a bool [R, KB] holding at
    most `capacity` set entries: the CSR csr_of gives, without `nonzero` (which waits for
    the device to learn the count). Entry (r, j) goes to offsets[r] + its rank in row r;
    past offsets[R] the indices array is unused (its last slot takes the unset entries)."""
    R, KB = classes.shape
    device = classes.device
    offsets = torch.nn.functional.pad(
        classes.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    indices = torch.zeros(capacity + 1, dtype=torch.int32, device=device)
    cols = torch.arange(KB, device=device, dtype=torch.int32)
    step = max(1, CSR_CHUNK_ELEMENTS // KB)
    for r0 in range(0, R, step):
        chunk = classes[r0:r0 + step]
        rank = chunk.cumsum(1, dtype=torch.int32) - 1
        slot = torch.where(chunk, offsets[r0:r0 + len(chunk), None] + rank, capacity)
        indices.scatter_(0, slot.flatten().long(), cols.expand_as(slot).flatten())
    return offsets, indices


# -- everything one launch needs ---------------------------------------------------------
@dataclass
class Indices:
    """The estimated indices of one call, for every (batch, head) row bh = b·H + h (rows of
    static heads are empty)."""

    partial: tuple[torch.Tensor, torch.Tensor]  # CSR over bh·QB + m: offsets, kv blocks
    full: tuple[torch.Tensor, torch.Tensor]
    columns: torch.Tensor  # int32 [BH, QB, C]: gathered keys (vertical_slash)
    column_counts: torch.Tensor  # int32 [BH, QB]
    diag: torch.Tensor  # int8 [BH, N]: picked offsets q − k (vertical_slash)
    vert: torch.Tensor  # int8 [BH, N]: picked keys (vertical_slash)
    pick: torch.Tensor  # int8 [BH, G·G]: picked g-blocks (block kinds)
    pick_row: int  # G, the row length of pick

    def kernel_args(self) -> tuple:
        bits = _bits(self.diag)
        return (*self.partial, *self.full, self.columns, self.column_counts, bits, self.vert,
                self.pick, self.columns.shape[-1], self.pick_row, bits.shape[-1])

    def work(self, grid: Grid) -> torch.Tensor:
        """kv blocks and column chunks (one gather of BLOCK_N keys each) that each
        (query block, bh) visits: int64 [QB, BH]."""
        blocks = (self.partial[0].diff() + self.full[0].diff()).view(-1, grid.QB).long()
        chunks = (self.column_counts.long() + grid.BN - 1) // grid.BN
        return (blocks + chunks).T


@dataclass
class Estimate:
    """What one call estimated, as flags of static shape (so the torch.library op can
    return them and autograd can save them for the backward): for every (batch, head) row
    bh = b·H + h, the picked offsets q − k `diag` and picked keys `vert` (int8 [BH, N];
    [1, 1] when no head has vertical_slash) and the picked g-blocks `pick` (int8
    [BH, P·P], P the largest G; [1, 1] when no head has a block kind). Rows of heads
    without a term of that kind are 0. Every element test of the kernels reads only these
    flags, so indices built from them for any block sizes allow exactly the same pairs."""

    diag: torch.Tensor
    vert: torch.Tensor
    pick: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.diag, self.vert, self.pick

    @property
    def pick_row(self) -> int:
        return math.isqrt(self.pick.shape[-1])

    def flag_args(self) -> tuple:
        """The flags as kernels read them: diag as bits (32 to an int32 word), vert, pick,
        pick's row length and the words per diag row."""
        bits = _bits(self.diag)
        return bits, self.vert, self.pick, self.pick_row, bits.shape[-1]


def flag_shapes(parts, B: int, H: int, M: int, N: int) -> tuple[tuple[int, int], ...]:
    """The shapes of Estimate's diag, vert and pick for these parts and sizes."""
    slash = any(p.dynamic.kind == "vertical_slash" for _, p in parts)
    rows = max([-(-N // int(parameters(p.dynamic.prim, M, N)[1])) for _, p in parts
                if p.dynamic.kind != "vertical_slash"], default=0)
    line = (B * H, N) if slash else (1, 1)
    return line, line, ((B * H, rows * rows) if rows else (1, 1))


@functools.lru_cache(maxsize=256)
def _head_rows(heads: tuple[int, ...], B: int, H: int, device) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """(heads, rows b·H + h of every batch) as index tensors on `device`, made once: a
    tensor built from a host list is a copy from pageable memory, which waits for the
    device's queue, so building one per call would stall every dynamic launch."""
    hs = torch.tensor(heads, device=device)
    rows = (torch.arange(B, device=device)[:, None] * H + hs[None, :]).flatten()
    return hs, rows


def pick(parts: list[tuple[tuple[int, ...], Part]], q: torch.Tensor, k: torch.Tensor,
         scale: float, module=None) -> Estimate:
    """The input-dependent step: V and S (vertical_slash) or the picked g-blocks of every
    dynamic part, for q [B, H, M, D], k [B, Hkv, N, D]. The backward reuses the result.
    `module`: the generated kernel module, whose estimation kernels compute
    vertical_slash's sums when it has them (else PyTorch does)."""
    B, H, M, _ = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    device = q.device
    shapes = flag_shapes(parts, B, H, M, N)
    diag, vert, picks = (torch.zeros(s, dtype=torch.int8, device=device) for s in shapes)
    P = math.isqrt(shapes[2][1])
    for heads, part in parts:
        hs, rows = _head_rows(tuple(heads), B, H, device)
        qh = q[:, hs].flatten(0, 1)
        kh = k[:, hs // (H // Hkv)].flatten(0, 1)
        params = parameters(part.dynamic.prim, M, N)
        if part.dynamic.kind == "vertical_slash":
            keys, offsets = vertical_slash_sets(qh, kh, params[0], params[1], scale, module)
            diag[rows] = torch.zeros_like(diag[rows]).scatter_(1, offsets, 1)
            vert[rows] = torch.zeros_like(vert[rows]).scatter_(1, keys, 1)
        else:
            picked = block_picks(qh, kh, part.dynamic.kind, params, scale)
            G = picked.shape[-1]
            square = torch.zeros(len(rows), P, P, dtype=torch.int8, device=device)
            square[:, :G, :G] = picked
            picks[rows] = square.flatten(1)
    return Estimate(diag, vert, picks)


def _ascending(flags: torch.Tensor, count: int) -> torch.Tensor:
    """The positions of the `count` set flags of each row [R, N], ascending [R, count]
    (every row holds exactly `count`: they came from a top-k)."""
    at = torch.arange(flags.shape[1], device=flags.device)
    return torch.where(flags != 0, at, flags.shape[1]).sort(-1).values[:, :count]


def _blocks(parts, est: Estimate, B: int, H: int, M: int, grid: Grid):
    """Block classes (partial, full bool [BH, QB, KB]) and gathered columns (int32
    [BH, QB, C], counts [BH, QB]) of the estimate on `grid`."""
    device, N = est.diag.device, grid.N
    BH, QB, KB = B * H, grid.QB, grid.KB
    partial = torch.zeros(BH, QB, KB, dtype=torch.bool, device=device)
    full = torch.zeros_like(partial)
    n_cols, sets = 1, []
    for heads, part in parts:
        _, rows = _head_rows(tuple(heads), B, H, device)
        params = parameters(part.dynamic.prim, M, N)
        if part.dynamic.kind == "vertical_slash":
            keys = _ascending(est.vert[rows], min(params[0], N))
            offsets = _ascending(est.diag[rows], min(params[1], N))
            p, f = slash_blocks(offsets, grid)
            sets.append((rows, keys, p | f))
            n_cols = max(n_cols, keys.shape[1])
        else:
            g = int(params[1])
            G = -(-N // g)
            P = est.pick_row
            picked = est.pick[rows].view(-1, P, P)[:, :G, :G] != 0
            p, f = pick_blocks(picked, g, grid)
        partial[rows], full[rows] = p, f
    columns = torch.zeros(BH, QB, n_cols, dtype=torch.int32, device=device)
    counts = torch.zeros(BH, QB, dtype=torch.int32, device=device)
    for rows, keys, crossed in sets:
        cols, cnt = vertical_columns(keys, crossed, grid)
        columns[rows, :, :cols.shape[-1]], counts[rows] = cols, cnt
    return partial, full, columns, counts


def indices(parts, est: Estimate, B: int, H: int, M: int, grid: Grid) -> Indices:
    """What the forward and the backward's dQ pass read on `grid`: per (bh, query block)
    the partial and full kv blocks and the gathered columns of the estimate."""
    partial, full, columns, counts = _blocks(parts, est, B, H, M, grid)
    BH, QB, KB = B * H, grid.QB, grid.KB
    capacity = B * sum(len(heads) for heads, _ in parts) * QB * KB  # dynamic rows only
    return Indices(csr_in_place(partial.view(BH * QB, KB), capacity),
                   csr_in_place(full.view(BH * QB, KB), capacity),
                   columns, counts, est.diag, est.vert, est.pick, est.pick_row)


def visited(parts, est: Estimate, B: int, H: int, M: int, grid: Grid
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks a kernel visits for the estimate on `grid`, bool [BH, QB, KB]: (tested,
    full). Tested blocks are the partial blocks and the blocks (m, n) holding a column that
    query block m gathers; a block holding a gathered column is not visited as a block in
    the forward, so no picked diagonal crosses it and the element test `_dyn_allowed` there
    is causal & vert[k]: exactly the pairs the forward's gather computed. (What Flex's
    block mask needs; the backward's dK/dV pass does the columns apart, see `transposed`.)"""
    partial, full, columns, counts = _blocks(parts, est, B, H, M, grid)
    BH, QB, KB = B * H, grid.QB, grid.KB
    used = torch.arange(columns.shape[-1], device=columns.device) < counts[..., None]
    gathered = torch.zeros(BH, QB, KB + 1, dtype=torch.bool, device=columns.device)
    gathered.scatter_(2, torch.where(used, columns.long() // grid.BN, KB), True)
    return partial | gathered[..., :KB], full


def transposed(parts, est: Estimate, B: int, H: int, HKV: int, M: int, grid: Grid):
    """What the backward's dK/dV pass reads on `grid`: ((tested CSR), (full CSR), columns).
    The CSRs list, per (bh, kv block) row bh·KB + n, the query blocks whose elements are
    tested (the partial blocks) and the full ones, in kv-block order (every dK, dV row
    owned by one program: deterministic, no atomics). `columns` is what the column kernel
    reads for vertical_slash heads (None without them): per (b, kv head) the keys any of
    its query heads picked, ascending (int32 [B·HKV, C]), their count (int32 [B·HKV]), and
    per bh the blocks picked diagonals cross (int8 [BH, QB, KB]), whose pairs belong to
    the block loops; the gathered pairs are the others."""
    partial, full, _, _ = _blocks(parts, est, B, H, M, grid)
    BH, QB, KB = B * H, grid.QB, grid.KB
    csrs = (csr_of(partial.transpose(1, 2).reshape(BH * KB, QB)),
            csr_of(full.transpose(1, 2).reshape(BH * KB, QB)))
    if not any(part.dynamic.kind == "vertical_slash" for _, part in parts):
        return (*csrs, None)
    N = est.vert.shape[-1]
    union = (est.vert != 0).view(B, HKV, H // HKV, N).any(2).view(B * HKV, N)
    counts = union.sum(-1, dtype=torch.int32)
    at = torch.arange(N, device=union.device, dtype=torch.int32)
    keys = torch.where(union, at, N).sort(-1).values[:, :max(int(counts.max()), 1)]
    return (*csrs, (keys.contiguous(), counts, (partial | full).to(torch.int8)))


def estimate(parts: list[tuple[tuple[int, ...], Part]], q: torch.Tensor, k: torch.Tensor,
             scale: float, grid: Grid, module=None) -> Indices:
    """The indices of every dynamic part on `grid`: `pick`, then `indices`; `parts` pairs
    each with the query heads it runs for; q [B, H, M, D], k [B, Hkv, N, D]."""
    return indices(parts, pick(parts, q, k, scale, module), q.shape[0], q.shape[1],
                   q.shape[2], grid)


def token_mask(parts: list[tuple[tuple[int, ...], Part]], q: torch.Tensor, k: torch.Tensor,
               scale: float) -> torch.Tensor:
    """bool [B, H, M, N]: the pairs the dynamic parts allow (their own estimate, before any
    static `within` or exclusion) — for pictures and tests; False for static heads."""
    B, H, M, _ = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    pos = torch.arange(M, device=q.device) + (N - M)
    key = torch.arange(N, device=q.device)
    causal = key[None, :] <= pos[:, None]
    out = torch.zeros(B, H, M, N, dtype=torch.bool, device=q.device)
    for heads, part in parts:
        hs, _ = _head_rows(tuple(heads), B, H, q.device)
        qh = q[:, hs].flatten(0, 1)
        kh = k[:, hs // (H // Hkv)].flatten(0, 1)
        params = parameters(part.dynamic.prim, M, N)
        if part.dynamic.kind == "vertical_slash":
            keys, offsets = vertical_slash_sets(qh, kh, params[0], params[1], scale)
            vert = torch.zeros(len(qh), N, dtype=torch.bool, device=q.device)
            vert.scatter_(1, keys, True)
            diag = torch.zeros_like(vert).scatter_(1, offsets, True)
            d = (pos[:, None] - key[None, :]).clamp(min=0)
            allowed = (diag[:, d] | vert[:, None, :]) & causal
        else:
            g = int(params[1])
            picked = block_picks(qh, kh, part.dynamic.kind, params, scale)
            allowed = picked[:, pos // g][:, :, key // g] & causal
        out[:, hs] = allowed.view(B, len(heads), M, N)
    return out


def allowed(pattern: Pattern, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """bool [B, H, M, N]: every pair a (possibly dynamic) pattern allows for these inputs —
    each head's static parts, and its estimate within its static conjuncts (heads grouped
    by pattern as the kernel groups them, so the estimate is computed the same way). Dense:
    for pictures and checks at small sizes."""
    B, H, M, _ = q.shape
    N = k.shape[2]
    out = torch.zeros(B, H, M, N, dtype=torch.bool, device=q.device)
    by_node: dict = {}
    for h, node in enumerate(pattern.head_nodes(H, k.shape[1])):
        by_node.setdefault(node, []).append(h)
    for node, heads in by_node.items():
        for part in decompose(node):
            if part.strategy != "dynamic":
                out[:, heads] |= torch.as_tensor(Pattern(part.node).mask(M, N)).to(q.device)
                continue
            est = token_mask([(tuple(heads), part)], q, k, scale)[:, heads]
            within = part.dynamic.within
            if within is not None:
                est &= torch.as_tensor(Pattern(within).mask(M, N)).to(q.device)
            out[:, heads] |= est
    return out
