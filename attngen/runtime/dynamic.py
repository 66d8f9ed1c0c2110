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

import math
from dataclasses import dataclass

import torch

from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.pattern import Pattern
from attngen.lower.decompose import Part, decompose
from attngen.lower.grid import Grid
from attngen.runtime.tables import csr_of

VS_LAST_Q = 64  # queries that vote (MInference's last_q)
VS_FORCED_COLUMNS = 30  # first keys always in V
VS_FORCED_OFFSETS = 100  # nearest diagonals always in S
ESTIMATE_BLOCK = 64  # keys per step of the estimation kernels
CHUNK_ELEMENTS = 1 << 26  # bound on the largest temporary (elements) while estimating


def parameters(prim, M: int, N: int) -> list[float]:
    """The primitive's parameters at this shape (integers stay integers)."""
    env = {N_SYM: N, M_SYM: M}
    out = []
    for p in prim.params:
        value = p.subs(env)
        out.append(int(value) if value.is_integer else float(value))
    return out


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
        if kind == "block_topk":
            top = scores.masked_fill(~causal, -math.inf).topk(min(int(params[0]), G), -1)
            picked = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top.indices, True)
        else:  # block_cover: fewest blocks whose softmax mass reaches gamma
            mass = torch.softmax((scores * scale).masked_fill(~causal, -math.inf), -1)
            order = mass.sort(-1, descending=True)
            before = order.values.cumsum(-1) - order.values
            keep = before < float(params[0])
            picked = torch.zeros_like(keep).scatter_(-1, order.indices, keep)
        picks.append((picked & causal) | torch.eye(G, dtype=torch.bool, device=q.device))
    return torch.cat(picks)


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
    """int8 flags [R, N] → int32 words [R, ⌈N / 32⌉], bit b of word w = flag 32·w + b."""
    R, N = flags.shape
    padded = torch.nn.functional.pad(flags, (0, -N % 32)).view(R, -1, 32).to(torch.int64)
    weights = torch.ones(32, dtype=torch.int64, device=flags.device) << torch.arange(
        32, device=flags.device)
    words = (padded * weights).sum(-1)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


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


def estimate(parts: list[tuple[tuple[int, ...], Part]], q: torch.Tensor, k: torch.Tensor,
             scale: float, grid: Grid, module=None) -> Indices:
    """The indices of every dynamic part: `parts` pairs each with the query heads it runs
    for; q [B, H, M, D], k [B, Hkv, N, D]; `module`: the generated kernel module, whose
    estimation kernels compute vertical_slash's sums when it has them."""
    B, H, M, _ = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    device = q.device
    BH, QB, KB = B * H, grid.QB, grid.KB
    partial = torch.zeros(BH, QB, KB, dtype=torch.bool, device=device)
    full = torch.zeros_like(partial)
    n_cols, pick_row = 1, 1
    sets, picks = [], []
    for heads, part in parts:
        hs = torch.tensor(heads, device=device)
        rows = (torch.arange(B, device=device)[:, None] * H + hs[None, :]).flatten()
        qh = q[:, hs].flatten(0, 1)
        kh = k[:, hs // (H // Hkv)].flatten(0, 1)
        params = parameters(part.dynamic.prim, M, N)
        if part.dynamic.kind == "vertical_slash":
            keys, offsets = vertical_slash_sets(qh, kh, params[0], params[1], scale, module)
            p, f = slash_blocks(offsets, grid)
            sets.append((rows, keys, offsets, p | f))
            n_cols = max(n_cols, keys.shape[1])
        else:
            picked = block_picks(qh, kh, part.dynamic.kind, params, scale)
            p, f = pick_blocks(picked, int(params[1]), grid)
            picks.append((rows, picked))
            pick_row = max(pick_row, picked.shape[-1])
        partial[rows], full[rows] = p, f
    columns = torch.zeros(BH, QB, n_cols, dtype=torch.int32, device=device)
    counts = torch.zeros(BH, QB, dtype=torch.int32, device=device)
    diag = torch.zeros(BH if sets else 1, N if sets else 1, dtype=torch.int8, device=device)
    vert = torch.zeros_like(diag)
    for rows, keys, offsets, crossed in sets:
        cols, cnt = vertical_columns(keys, crossed, grid)
        columns[rows, :, :cols.shape[-1]], counts[rows] = cols, cnt
        diag[rows] = torch.zeros_like(diag[rows]).scatter_(1, offsets, 1)
        vert[rows] = torch.zeros_like(vert[rows]).scatter_(1, keys, 1)
    pick = torch.zeros(BH if picks else 1, pick_row * pick_row, dtype=torch.int8,
                       device=device)
    for rows, picked in picks:
        G = picked.shape[-1]
        square = torch.zeros(len(rows), pick_row, pick_row, dtype=torch.int8, device=device)
        square[:, :G, :G] = picked
        pick[rows] = square.flatten(1)
    return Indices(csr_of(partial.view(BH * QB, KB)), csr_of(full.view(BH * QB, KB)),
                   columns, counts, diag, vert, pick, pick_row)


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
        hs = torch.tensor(heads, device=q.device)
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
