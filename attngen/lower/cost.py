"""What a term costs: kv blocks visited per query block, summed (one head), and how many
of them need the predicate evaluated. The planner compares strategies with these numbers."""
from __future__ import annotations

import numpy as np

from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.lower.atoms import Atom, atoms_of, block_ranges, numeric
from attngen.lower.grid import Grid
from attngen.lower.layout import build_layout
from attngen.lower.permute import class_shape


def causal_blocks(g: Grid) -> int:
    return ranges_cost([Atom(dlo=0)], g)[0]


def _interval_union_size(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per row, the size of the union of inclusive intervals lo[:, i]..hi[:, i]."""
    order = np.argsort(lo, axis=1)
    lo, hi = np.take_along_axis(lo, order, 1), np.take_along_axis(hi, order, 1)
    total = np.zeros(lo.shape[0], dtype=np.int64)
    reach = np.full(lo.shape[0], -1, dtype=np.int64)  # last block already counted
    for i in range(lo.shape[1]):
        start = np.maximum(lo[:, i], reach + 1)
        total += np.maximum(hi[:, i] - start + 1, 0)
        reach = np.maximum(reach, hi[:, i])
    return total


def ranges_rows(atoms: list[Atom], g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per query block: kv blocks visited, and of those the ones needing the mask."""
    m = np.arange(g.QB, dtype=np.int64)
    spans = [block_ranges(a, m, g.BM, g.BN, g.M, g.N) for a in atoms]
    if not spans or g.QB == 0:
        return np.zeros(g.QB, dtype=np.int64), np.zeros(g.QB, dtype=np.int64)
    visit = _interval_union_size(np.stack([s[0] for s in spans], 1),
                                 np.stack([s[1] for s in spans], 1))
    full = _interval_union_size(np.stack([s[2] for s in spans], 1),
                                np.stack([s[3] for s in spans], 1))
    return visit, visit - full


def ranges_cost(atoms: list[Atom], g: Grid) -> tuple[int, int]:
    visit, masked = ranges_rows(atoms, g)
    return int(visit.sum()), int(masked.sum())


def table_cost(node: Node, g: Grid, doc_ids=None) -> tuple[int, int]:
    ids = None if doc_ids is None else np.asarray(
        doc_ids.cpu() if hasattr(doc_ids, "cpu") else doc_ids, dtype=np.int64)
    if ids is not None and ids.shape != (g.N,):
        raise ValueError(f"doc_ids must have shape [{g.N}], got {list(ids.shape)}")
    partial, full = build_layout(Pattern(node), g, doc_ids=ids).block_counts()
    return partial + full, partial


def permutation_cost(classes: Node, period: int, exact: bool, g: Grid) -> tuple[int, int]:
    """Blocks of `classes` (the term in class coordinates) summed over the residue classes,
    plus one block per query block for merging the pass into the output."""
    shapes: dict[tuple[int, int], int] = {}
    # class_shape is constant between these residues, so a huge period costs nothing more
    cuts = sorted({0, period, g.N % period, (g.N - g.M) % period})
    for r, end in zip(cuts, cuts[1:]):
        shape = class_shape(g.M, g.N, period, r)
        shapes[shape] = shapes.get(shape, 0) + end - r
    blocks = masked = 0
    for (m, n), count in shapes.items():
        if m == 0:
            continue
        if n == 0:  # queries before the first key of their class (M > N): nothing to visit
            blocks += count * -(-m // g.BM)
            continue
        b, p = ranges_cost(atoms_of(classes, numeric(m, n)), Grid(m, n, g.BM, g.BN))
        blocks += count * (b + -(-m // g.BM))
        masked += count * (p if exact else b)
    return blocks, masked
