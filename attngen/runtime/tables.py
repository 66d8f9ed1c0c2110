"""Block layouts built on the device: the predicate evaluated densely, a chunk of query
blocks at a time, reduced to block classes, compacted to CSR with `nonzero`.

The analytic layouts of `attngen.lower` are exact and fast for structured patterns, but
slow for irregular ones (a 2D neighbourhood via `where`, radial) at long lengths. On a GPU
the dense evaluation is a few element-wise kernels over M×N positions, O(M·N / throughput)
and independent of the pattern's shape; only the CSR (O(non-empty blocks)) leaves the
device when a caller needs it on the host."""
from __future__ import annotations

import numpy as np
import torch

from attngen.codegen.torch_predicate import predicate_fn
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.lower.grid import Grid
from attngen.lower.layout import CSR, BlockLayout, _block, distinct_heads

CHUNK_ELEMENTS = 1 << 23  # positions evaluated at once (int64 intermediates: 64 MiB each)


def block_classes(node: Node, grid: Grid, device, doc_ids: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool [QB, KB] on `device`: a block is FULL when every in-range
    element is allowed, PARTIAL when some but not all are. Evaluated a tile of blocks at a
    time (at most CHUNK_ELEMENTS positions), so the memory it takes does not grow with M·N:
    at 128K a whole row of blocks would hold 128 MiB per int64 intermediate."""
    M, N, BM, BN = grid.M, grid.N, grid.BM, grid.BN
    QB, KB = grid.QB, grid.KB
    allowed_at = predicate_fn(node, M, N, doc_ids)
    block = BM * BN
    row_blocks = max(1, CHUNK_ELEMENTS // (block * KB))
    col_blocks = KB if row_blocks > 1 else max(1, min(KB, CHUNK_ELEMENTS // block))
    partial = torch.empty((QB, KB), dtype=torch.bool, device=device)
    full = torch.empty_like(partial)
    for m0 in range(0, QB, row_blocks):
        m1 = min(QB, m0 + row_blocks)
        rows = torch.arange(m0 * BM, m1 * BM, device=device)
        for n0 in range(0, KB, col_blocks):
            n1 = min(KB, n0 + col_blocks)
            cols = torch.arange(n0 * BN, n1 * BN, device=device)
            in_range = (rows < M)[:, None] & (cols < N)[None, :]
            allowed = allowed_at(rows[:, None] + (N - M), cols[None, :])
            shape = (m1 - m0, BM, n1 - n0, BN)
            some = (allowed & in_range).view(shape).any(3).any(1)
            every = (allowed | ~in_range).view(shape).all(3).all(1)
            full[m0:m1, n0:n1] = every & some
            partial[m0:m1, n0:n1] = some & ~every
    return partial, full


def csr_of(classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets int32 [QB + 1], indices int32 [nnz]) of a bool [QB, KB] on its device."""
    rows, cols = classes.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=classes.shape[0])
    offsets = torch.zeros(classes.shape[0] + 1, dtype=torch.int64, device=classes.device)
    offsets[1:] = counts.cumsum(0)
    return offsets.to(torch.int32), cols.to(torch.int32)


def device_layout(pattern: Pattern, M: int, N: int, block: int | tuple[int, int] = 128,
                  heads: int = 1, kv_heads: int | None = None, device="cuda",
                  doc_ids: torch.Tensor | None = None) -> BlockLayout:
    """The same BlockLayout as `attngen.layout`, computed by dense evaluation on `device`."""
    pattern.check(M, N)
    grid = Grid(M, N, *_block(block))
    doc = None if doc_ids is None else doc_ids.to(device=device, dtype=torch.int64)
    nodes, head_index = distinct_heads(pattern, heads, kv_heads)
    partial, full = [], []
    for node in nodes:
        for out, classes in zip((partial, full), block_classes(node, grid, device, doc)):
            offsets, indices = csr_of(classes)
            out.append(CSR(offsets.cpu().numpy().astype(np.int64), indices.cpu().numpy()))
    return BlockLayout(grid=grid, heads=heads, head_index=head_index, nodes=nodes,
                       partial=tuple(partial), full=tuple(full),
                       doc_ids=None if doc_ids is None else doc_ids.cpu().numpy())


def transpose_csr(offsets: torch.Tensor, indices: torch.Tensor, n_cols: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The transposed block tables, with torch ops on the tables' device: `offsets`
    [R, QB + 1] stacks R CSRs over QB rows whose column lists lie one after another in
    `indices`; the result stacks, in the same order, R CSRs over `n_cols` rows listing
    the rows that hold each column (ascending): offsets [R, n_cols + 1] and indices (with
    one padding entry, like the forward's)."""
    R, QB = offsets.shape[0], offsets.shape[1] - 1
    device = offsets.device
    counts = (offsets[:, 1:] - offsets[:, :-1]).long().flatten()
    rows = torch.repeat_interleave(torch.arange(R * QB, device=device), counts)
    cols = indices[int(offsets[0, 0]):int(offsets[0, 0]) + len(rows)].long()
    target = (rows // QB) * n_cols + cols  # (table, column) of every entry
    target, order = torch.sort(target, stable=True)  # rows stay ascending within a column
    per_row = torch.bincount(target, minlength=R * n_cols)
    starts = torch.zeros(R * n_cols + 1, dtype=torch.int64, device=device)
    starts[1:] = per_row.cumsum(0)
    at = torch.arange(R, device=device)[:, None] * n_cols + torch.arange(n_cols + 1,
                                                                         device=device)
    transposed = (rows % QB)[order]
    return (starts[at].to(torch.int32).contiguous(),
            torch.cat([transposed, transposed.new_zeros(1)]).to(torch.int32))
