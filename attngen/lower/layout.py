"""`BlockLayout`: the exact block classes of a pattern, held as CSR per distinct head pattern."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attngen.errors import PatternError
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern, check_sizes, evaluate_node, set_layout
from attngen.lower.classify import classify
from attngen.lower.grid import Grid
from attngen.lower.runs import FULL, PARTIAL, Runs


@dataclass(frozen=True)
class CSR:
    """Kv block indices per query block: indices[offsets[m]:offsets[m+1]]."""

    offsets: np.ndarray  # int64 [QB + 1]
    indices: np.ndarray  # int32 [nnz], ascending within a row

    @staticmethod
    def from_runs(runs: Runs, cls: int) -> CSR:
        row, col, _ = runs.blocks(cls)
        counts = np.bincount(row, minlength=runs.rows)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return CSR(offsets, col.astype(np.int32))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, m: int) -> np.ndarray:
        return self.indices[self.offsets[m]:self.offsets[m + 1]]


@dataclass(frozen=True)
class BlockLayout:
    grid: Grid
    heads: int
    head_index: np.ndarray  # [heads] → index into the per-pattern lists below
    nodes: tuple[Node, ...]
    partial: tuple[CSR, ...]
    full: tuple[CSR, ...]
    doc_ids: object = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.heads, self.grid.QB, self.grid.KB

    def classes(self) -> torch.Tensor:
        """[H, QB, KB] uint8: 0 empty, 1 partial, 2 full (small sizes only)."""
        H, QB, KB = self.shape
        out = np.zeros((H, QB, KB), dtype=np.uint8)
        for h in range(H):
            out[h] = self.pattern_classes(self.head_index[h])
        return torch.from_numpy(out)

    def pattern_classes(self, i: int) -> np.ndarray:
        """[QB, KB] uint8 classes of distinct head pattern i (self.nodes[i])."""
        check_dense("the block classes", self.grid.QB * self.grid.KB)
        out = np.zeros((self.grid.QB, self.grid.KB), dtype=np.uint8)
        for csr, value in ((self.partial[i], PARTIAL), (self.full[i], FULL)):
            out[np.repeat(np.arange(self.grid.QB), csr.counts), csr.indices] = value
        return out

    def to_flex(self, width: int | None = None) -> dict[str, torch.Tensor]:
        """FlexAttention's kv_num_blocks/kv_indices (partial) and full_* tensors [1, H, QB, W],
        W = the widest row unless `width` is given (BlockMask needs W = KB)."""
        def padded(csrs):
            w = max(1, max(int(c.counts.max(initial=0)) for c in csrs))
            width_ = w if width is None else max(width, w)
            num = np.zeros((self.heads, self.grid.QB), dtype=np.int32)
            idx = np.zeros((self.heads, self.grid.QB, width_), dtype=np.int32)
            for h in range(self.heads):
                c = csrs[self.head_index[h]]
                num[h] = c.counts
                rows = np.repeat(np.arange(self.grid.QB), c.counts)
                pos = np.arange(len(c.indices)) - np.repeat(c.offsets[:-1], c.counts)
                idx[h, rows, pos] = c.indices
            return torch.from_numpy(num)[None], torch.from_numpy(idx)[None]

        kv_num, kv_idx = padded(self.partial)
        full_num, full_idx = padded(self.full)
        return {"kv_num_blocks": kv_num, "kv_indices": kv_idx,
                "full_kv_num_blocks": full_num, "full_kv_indices": full_idx}

    def to_block_mask(self, device: str | torch.device = "cpu"):
        """A FlexAttention BlockMask with the exact mask_mod on partial blocks."""
        from torch.nn.attention.flex_attention import BlockMask

        g = self.grid
        if g.BM != g.BN:
            raise ValueError("FlexAttention block masks here use square blocks (BM == BN)")
        # from_kv_blocks scatters the indices into a [QB, W + 1] table: W must be KB
        t = {name: v.to(device) for name, v in self.to_flex(width=g.KB).items()}
        return BlockMask.from_kv_blocks(
            t["kv_num_blocks"], t["kv_indices"], t["full_kv_num_blocks"],
            t["full_kv_indices"], BLOCK_SIZE=(g.BM, g.BN), mask_mod=self.mask_mod(device),
            seq_lengths=(g.M, g.N))

    def mask_mod(self, device):
        """A FlexAttention mask_mod evaluating the exact predicate (dense, for small sizes)."""
        g = self.grid
        check_dense("mask_mod", len(self.nodes) * g.M * g.N)
        rows = np.arange(g.M)[:, None] + g.offset
        cols = np.arange(g.N)[None, :]
        per_pattern = torch.from_numpy(np.stack([
            evaluate_node(n, rows, cols, g.M, g.N, self.doc_ids) for n in self.nodes]))
        table = per_pattern[torch.from_numpy(self.head_index)].to(device)

        last = table.shape[0] - 1  # a one-head layout broadcasts over every head

        def mask_mod(b, h, q_idx, kv_idx):
            return table[torch.clamp(h, max=last), q_idx, kv_idx]

        return mask_mod

    # -- counts -------------------------------------------------------------------------
    def block_counts(self) -> tuple[int, int]:
        """(partial, full) non-empty blocks summed over heads."""
        p = sum(len(self.partial[i].indices) for i in self.head_index)
        f = sum(len(self.full[i].indices) for i in self.head_index)
        return p, f

    def allowed_elements(self) -> int:
        """Allowed (q, k) pairs over all heads: FULL blocks by area, PARTIAL ones counted
        element by element (refused beyond MAX_COUNTED elements, before counting)."""
        g = self.grid
        work = sum(len(c.indices) for c in self.partial) * g.BM * g.BN
        if work > MAX_COUNTED:
            raise ValueError(f"the exact count would evaluate {work} elements of partial "
                             f"blocks, more than {MAX_COUNTED}: use smaller blocks or a "
                             "smaller M, N")
        total = 0
        per_pattern = []
        for i, node in enumerate(self.nodes):
            fm = np.repeat(np.arange(g.QB), self.full[i].counts)
            count = int(g.area(fm, self.full[i].indices.astype(np.int64)).sum())
            pm = np.repeat(np.arange(g.QB), self.partial[i].counts)
            count += _count_partial(node, g, pm, self.partial[i].indices.astype(np.int64),
                                    self.doc_ids)
            per_pattern.append(count)
        for i in self.head_index:
            total += per_pattern[i]
        return total

    def density(self) -> float:
        """Allowed pairs ÷ causal pairs (bottom-right aligned), averaged over heads."""
        return self.allowed_elements() / (causal_pairs(self.grid.M, self.grid.N) * self.heads)


def check_dense(what: str, elements: int) -> None:
    """Dense per-head tables are for small sizes: refuse before allocating a large one."""
    from attngen.env import max_mask_elements  # every limit is read in one place

    if elements > max_mask_elements():
        raise ValueError(f"{what} would allocate {elements} elements, more than the limit of "
                         f"{max_mask_elements()} (raise it with $ATTNGEN_MAX_MASK_ELEMENTS)")


def causal_pairs(M: int, N: int) -> int:
    q = np.arange(M, dtype=np.int64) + (N - M)
    return int(np.clip(q + 1, 0, N).sum())


def _count_partial(node: Node, g: Grid, m: np.ndarray, j: np.ndarray, doc_ids) -> int:
    total = 0
    step = max(1, (1 << 22) // (g.BM * g.BN))
    di, dj = np.arange(g.BM)[None, :, None], np.arange(g.BN)[None, None, :]
    for s in range(0, len(m), step):
        rows = m[s:s + step, None, None] * g.BM + di
        cols = j[s:s + step, None, None] * g.BN + dj
        valid = (rows < g.M) & (cols < g.N)
        allowed = evaluate_node(node, np.minimum(rows, g.M - 1) + g.offset,
                                np.minimum(cols, g.N - 1), g.M, g.N, doc_ids)
        total += int((allowed & valid).sum())
    return total


def distinct_heads(pattern: Pattern, heads: int, kv_heads: int | None
                   ) -> tuple[tuple[Node, ...], np.ndarray]:
    """The distinct head patterns in first-seen order, and each head's index among them."""
    distinct: dict[Node, int] = {}
    head_nodes = pattern.head_nodes(heads, kv_heads)
    for n in head_nodes:
        distinct.setdefault(n, len(distinct))
    return tuple(distinct), np.array([distinct[n] for n in head_nodes], dtype=np.int64)


MAX_BLOCK_SIDE = 1 << 16
MAX_COUNTED = 1 << 30  # partial-block elements allowed_elements evaluates (seconds)
MAX_BLOCK_AREA = 1 << 24


def _block(block) -> tuple[int, int]:
    try:
        bm, bn = (block, block) if isinstance(block, int) else tuple(block)
    except (TypeError, ValueError):
        raise TypeError(f"block is an int or a (BM, BN) pair, got {block!r}") from None
    if any(isinstance(b, bool) or not isinstance(b, int | np.integer) for b in (bm, bn)):
        raise TypeError(f"block sizes must be ints, got {block!r}")
    if bm < 1 or bn < 1:
        raise ValueError(f"block sizes must be positive, got {block}")
    if max(bm, bn) > MAX_BLOCK_SIDE or bm * bn > MAX_BLOCK_AREA:
        raise ValueError(f"block {bm}x{bn} is too large: sides at most {MAX_BLOCK_SIDE} and "
                         f"area at most {MAX_BLOCK_AREA} (a partial block is evaluated "
                         "element by element)")
    return int(bm), int(bn)


def checked_grid(M: int, N: int, bm: int, bn: int) -> Grid:
    """The grid, if its query blocks × kv blocks are within $ATTNGEN_MAX_BLOCKS."""
    from attngen.env import max_blocks  # every limit is read in one place

    grid = Grid(M, N, bm, bn)
    if grid.QB * grid.KB > max_blocks():
        raise ValueError(f"M={M}, N={N} with {bm}x{bn} blocks make {grid.QB}x{grid.KB} blocks, "
                         f"more than the limit of {max_blocks()} (use larger blocks, or raise "
                         "$ATTNGEN_MAX_BLOCKS)")
    return grid


def layout(pattern: Pattern | str, M: int, N: int | None = None,
           block: int | tuple[int, int] = 128, heads: int = 1, kv_heads: int | None = None,
           doc_ids=None) -> BlockLayout:
    """Exact block layout of `pattern` for M queries × N keys (DESIGN §4)."""
    if isinstance(pattern, str):
        from attngen.dsl import parse  # text is accepted for convenience at the API edge

        pattern = parse(pattern)
    N = M if N is None else N
    check_sizes(M, N, heads)
    if pattern.is_dynamic:
        raise PatternError(f"`{pattern}` is input-dependent: its layout exists only at run time")
    pattern.check(M, N)
    bm, bn = _block(block)
    grid = checked_grid(M, N, bm, bn)
    if doc_ids is not None:
        doc_ids = np.asarray(doc_ids.cpu() if isinstance(doc_ids, torch.Tensor) else doc_ids,
                             dtype=np.int64)
        if doc_ids.shape != (N,):
            raise ValueError(f"doc_ids must have shape [{N}], got {list(doc_ids.shape)}")
    return build_layout(pattern, grid, heads, kv_heads, doc_ids)


def build_layout(pattern: Pattern, grid: Grid, heads: int = 1, kv_heads: int | None = None,
                 doc_ids: np.ndarray | None = None) -> BlockLayout:
    """`layout` on a checked grid, without the size limits (the planner's own reference grid
    is not the user's size)."""
    nodes, head_index = distinct_heads(pattern, heads, kv_heads)
    runs = [classify(n, grid, doc_ids) for n in nodes]
    return BlockLayout(
        grid=grid, heads=heads, head_index=head_index, nodes=nodes,
        partial=tuple(CSR.from_runs(r, PARTIAL) for r in runs),
        full=tuple(CSR.from_runs(r, FULL) for r in runs),
        doc_ids=doc_ids,
    )


set_layout(layout)
