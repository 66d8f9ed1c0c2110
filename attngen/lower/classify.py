"""Exact EMPTY / PARTIAL / FULL classification of every block, without the M×N mask.

Affine parts (unions of atoms) are classified in closed form; other static primitives and
`where` by interval bounds over each candidate block, refined exactly (elementwise, on just
those blocks) where the bounds cannot decide. Boolean structure is combined on runs, and
the few blocks whose class the combination cannot decide (P | P, P & P) are refined
exactly at the end. Intersections restrict the candidate blocks of their non-affine parts
to the blocks their affine parts allow, so `causal & where(...)` never looks above the
diagonal.
"""
from __future__ import annotations

import numpy as np

from attngen.ir.arith import k, q
from attngen.ir.node import Node
from attngen.ir.pattern import evaluate_node
from attngen.ir.primitives import doc
from attngen.lower.atoms import atom_runs, atoms_of, numeric
from attngen.lower.bounds import Bounds
from attngen.lower.grid import Grid
from attngen.lower.runs import AND, AND_NOT, EMPTY, FULL, OR, PARTIAL, UNKNOWN, Runs

ELEMENTS_PER_CHUNK = 1 << 22


class Classifier:
    def __init__(self, grid: Grid, doc_ids=None):
        self.grid = grid
        self.value = numeric(grid.M, grid.N)
        self.doc_ids = None if doc_ids is None else np.asarray(doc_ids, dtype=np.int64)
        self.memo: dict[tuple[Node, int], Runs] = {}
        self.regions: list[Runs] = []  # keeps memo keys' regions alive so ids stay unique
        self.everything = Runs.everything(grid.QB, grid.KB)

    def __call__(self, node: Node) -> Runs:
        runs = self.classify(node, self.everything)
        return self.resolve_unknown(node, runs)

    def classify(self, node: Node, region: Runs) -> Runs:
        key = (node, id(region))
        if key not in self.memo:
            self.regions.append(region)
            self.memo[key] = self._classify(node, region)
        return self.memo[key]

    def _classify(self, node: Node, region: Runs) -> Runs:
        atoms = atoms_of(node, self.value)
        if atoms is not None:
            return self.union_of_atoms(atoms).restrict(region)
        if node.op == "or":
            out = self.classify(node.children[0], region)
            for c in node.children[1:]:
                out = out.combine(self.classify(c, region), OR)
            return out
        if node.op == "and":
            affine = [c for c in node.children if atoms_of(c, self.value) is not None]
            rest = [c for c in node.children if c not in affine]
            out = region
            for c in affine:
                out = out.combine(self.classify(c, region), AND)
            narrowed = out.nonempty()
            for c in rest:
                out = out.combine(self.classify(c, narrowed), AND)
                narrowed = out.nonempty()
            return out
        if node.op == "not":
            return region.combine(self.classify(node.children[0], region), AND_NOT)
        return self.by_bounds(node, region)

    def union_of_atoms(self, atoms) -> Runs:
        out = Runs.build(self.grid.QB, self.grid.KB, [], [], [], [])
        for a in atoms:
            out = out.combine(atom_runs(a, self.grid), OR)
        return out

    # -- generic primitives: bounds, then exact refinement --------------------------------
    def by_bounds(self, node: Node, region: Runs) -> Runs:
        g = self.grid
        m, j, _ = region.blocks()
        qa, qb = g.q_bounds(m)
        ka, kb = g.k_bounds(j)
        bounds = Bounds(qa, qb, ka, kb, g.M, g.N, self._lookups(m, j))
        must, may = bounds.truth(node.predicate)
        must, may = np.broadcast_to(must, m.shape), np.broadcast_to(may, m.shape)
        cls = np.where(must, FULL, np.where(may, UNKNOWN, EMPTY)).astype(np.uint8)
        undecided = cls == UNKNOWN
        cls[undecided] = self.exact(node, m[undecided], j[undecided])
        return Runs.from_blocks(g.QB, g.KB, m, j, cls)

    def _lookups(self, m, j) -> dict:
        """Bounds of doc(q) and doc(k) over each block: min/max of the ids it covers."""
        if self.doc_ids is None or self.grid.offset < 0:
            return {}
        g, ids = self.grid, self.doc_ids
        k_starts = np.arange(0, g.N, g.BN)
        q_ids, q_starts = ids[g.offset:], np.arange(0, g.M, g.BM)
        per_block = {
            q: (np.minimum.reduceat(q_ids, q_starts)[m], np.maximum.reduceat(q_ids, q_starts)[m]),
            k: (np.minimum.reduceat(ids, k_starts)[j], np.maximum.reduceat(ids, k_starts)[j]),
        }
        return {doc: lambda sym: tuple(a.astype(np.float64) for a in per_block[sym])}

    def exact(self, node: Node, m: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Exact class of blocks (m, j) by evaluating their elements, a chunk at a time."""
        g = self.grid
        out = np.empty(len(m), dtype=np.uint8)
        step = max(1, ELEMENTS_PER_CHUNK // (g.BM * g.BN))
        di = np.arange(g.BM)[None, :, None]
        dj = np.arange(g.BN)[None, None, :]
        for s in range(0, len(m), step):
            mm, jj = m[s:s + step, None, None], j[s:s + step, None, None]
            rows = mm * g.BM + di
            cols = jj * g.BN + dj
            valid = (rows < g.M) & (cols < g.N)
            allowed = evaluate_node(node, np.minimum(rows, g.M - 1) + g.offset,
                                    np.minimum(cols, g.N - 1), g.M, g.N, self.doc_ids) & valid
            n_allowed = allowed.sum(axis=(1, 2))
            n_valid = valid.sum(axis=(1, 2))
            out[s:s + step] = np.where(n_allowed == 0, EMPTY,
                                       np.where(n_allowed == n_valid, FULL, PARTIAL))
        return out

    def resolve_unknown(self, node: Node, runs: Runs) -> Runs:
        if not np.any(runs.cls == UNKNOWN):
            return runs
        m, j, _ = runs.blocks(UNKNOWN)
        cls = self.exact(node, m, j)
        known = runs.cls != UNKNOWN
        return Runs.build(runs.rows, runs.cols,
                          np.concatenate([runs.row[known], m]),
                          np.concatenate([runs.start[known], j]),
                          np.concatenate([runs.stop[known], j + 1]),
                          np.concatenate([runs.cls[known], cls])).coalesce()


def classify(node: Node, grid: Grid, doc_ids=None) -> Runs:
    """Exact block classes of one head's pattern on `grid`."""
    return Classifier(grid, doc_ids)(node)
