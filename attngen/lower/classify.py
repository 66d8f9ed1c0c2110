"""Exact EMPTY / PARTIAL / FULL classification of every block, without the M×N mask.

Four methods, tried in this order on every subterm:
1. a union of affine atoms (causal, local, band, sink, rows, columns and their
   intersections): closed form per query block (`atoms.py`);
2. a predicate of one form only (q - k, or k, or q), e.g. `causal & strided(s)` or
   `fixed`'s column part: exact from one prefix count along that axis, since a block box
   attains every value of the form between its extremes;
3. `|`, `&`, `~` (of the IR or inside a primitive's predicate): the parts are classified
   and combined on runs. Intersections first classify their affine parts and only look at
   the blocks those allow (so `causal & where(...)` never looks above the diagonal);
4. anything else: interval bounds of the predicate over each block box (`bounds.py`), and
   exact elementwise evaluation of just the blocks the bounds cannot decide.
Combining two PARTIAL blocks can leave a block UNKNOWN (P | P may be FULL); those are
resolved exactly at the end by evaluating their elements.
"""
from __future__ import annotations

import functools

import numpy as np
import sympy

from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.arith import evaluate, k, q
from attngen.ir.node import Node
from attngen.ir.pattern import evaluate_node
from attngen.ir.primitives import doc
from attngen.lower.atoms import atom_runs, atoms_of, numeric
from attngen.lower.bounds import Bounds, RangeMinMax
from attngen.lower.grid import Grid
from attngen.lower.refine import refine
from attngen.lower.runs import AND, AND_NOT, EMPTY, FULL, OR, PARTIAL, UNKNOWN, Runs

_D = sympy.Symbol("d", integer=True)


@functools.lru_cache(maxsize=8192)
def form_of(pred: sympy.Basic) -> tuple[str, int] | None:
    """The single form a predicate depends on, if any:
    ("d", g): a function of q//g - k//g alone (g = 1: of q - k; power(g) has g > 1);
    ("k", 1): of k alone; ("q", 1): of q alone. None otherwise."""
    if pred.atoms(sympy.core.function.AppliedUndef):
        return None
    free = pred.free_symbols
    if k not in free:
        return ("q", 1)
    if q not in free:
        return ("k", 1)
    grains = {1} | {int(1 / f.args[0].coeff(q)) for f in pred.atoms(sympy.floor)
                    if f.args[0].is_Mul and f.args[0].coeff(q).is_Rational
                    and f.args[0].coeff(q).p == 1 and q in f.args[0].free_symbols}
    for g in sorted(grains):
        # q//g - k//g = u  ⇔  q = g·(u + k//g) + r: substitute and see whether k remains.
        if g == 1:
            shifted = pred.subs(q, k + _D)
        else:
            shifted = pred.xreplace({sympy.floor(q / g): _D + sympy.floor(k / g)})
            if q in shifted.free_symbols:
                continue
        shifted = shifted.replace(
            lambda e: e.is_Relational, lambda e: e.func(sympy.expand(e.lhs - e.rhs), 0))
        if k not in shifted.free_symbols:
            return ("d", g)
    return None


def _node_form(node: Node) -> str | None:
    if node.op == "heads" or node.is_dynamic:
        return None
    return form_of(node.predicate)


class Classifier:
    def __init__(self, grid: Grid, doc_ids=None):
        self.grid = grid
        self.value = numeric(grid.M, grid.N)
        self.doc_ids = None if doc_ids is None else np.asarray(doc_ids, dtype=np.int64)
        self.memo: dict[tuple[object, int], Runs] = {}
        self.regions: list[Runs] = []  # keeps memo keys' regions alive so ids stay unique
        self.everything = Runs.everything(grid.QB, grid.KB)

    def __call__(self, node: Node) -> Runs:
        runs = self.node(node, self.everything)
        return self.resolve_unknown(node, runs)

    # -- IR nodes ------------------------------------------------------------------------
    def node(self, node: Node, region: Runs) -> Runs:
        key = (node, id(region))
        if key not in self.memo:
            self.regions.append(region)
            self.memo[key] = self._node(node, region)
        return self.memo[key]

    def _node(self, node: Node, region: Runs) -> Runs:
        atoms = atoms_of(node, self.value)
        if atoms is not None:
            runs = self.union_of_atoms(atoms)
            return runs if region is self.everything else runs.restrict(region)
        form = _node_form(node)
        if form is not None:
            return self.by_form(node.predicate, form, region)
        if node.op == "not":
            return region.combine(self.node(node.children[0], region), AND_NOT)
        if node.op in ("or", "and"):
            return self.combination(node.op, list(node.children), region, self.node,
                                    self._is_affine)
        return self.predicate(node.predicate, region)

    # -- predicates (inside primitives and where) --------------------------------------------
    def predicate(self, pred: sympy.Basic, region: Runs) -> Runs:
        form = form_of(pred)
        if form is not None:
            return self.by_form(pred, form, region)
        if isinstance(pred, sympy.Not):
            return region.combine(self.predicate(pred.args[0], region), AND_NOT)
        if isinstance(pred, (sympy.And, sympy.Or)):
            op = "and" if isinstance(pred, sympy.And) else "or"
            return self.combination(op, list(pred.args), region, self.predicate, lambda c: False)
        return self.by_bounds(pred, region)

    def combination(self, op: str, parts: list, region: Runs, classify, is_affine) -> Runs:
        """`parts` joined by | or &. Parts of the same single form are classified as one
        predicate (exactly); the rest are combined class by class."""
        groups: dict[object, list] = {}
        for c in parts:
            pred = c.predicate if isinstance(c, Node) else c
            f = None if isinstance(c, Node) and c.is_dynamic else form_of(pred)
            groups.setdefault(f or id(c), []).append(c)
        join = sympy.Or if op == "or" else sympy.And
        terms = []
        for key, group in groups.items():
            if len(group) == 1:
                terms.append((group[0], classify))
            else:
                preds = [c.predicate if isinstance(c, Node) else c for c in group]
                terms.append((join(*preds), functools.partial(self.by_form, form=key)))
        if op == "or":
            out = Runs.build(region.rows, region.cols, [], [], [], [])
            for term, fn in terms:
                out = out.combine(fn(term, region=region), OR)
            return out
        # Intersections: affine parts first, then the rest only where those allow anything.
        terms.sort(key=lambda t: not is_affine(t[0]))
        out = region
        for term, fn in terms:
            out = out.combine(fn(term, region=out.nonempty()), AND)
        return out

    def _is_affine(self, part) -> bool:
        return isinstance(part, Node) and atoms_of(part, self.value) is not None

    def union_of_atoms(self, atoms) -> Runs:
        if not atoms:
            return Runs.build(self.grid.QB, self.grid.KB, [], [], [], [])
        out = atom_runs(atoms[0], self.grid)
        for a in atoms[1:]:
            out = out.combine(atom_runs(a, self.grid), OR)
        return out

    # -- one-form predicates: exact, from prefix counts over one axis --------------------
    def by_form(self, pred: sympy.Basic, form: tuple[str, int], region: Runs) -> Runs:
        """Exact classes of a predicate of one form (q//g - k//g, or k, or q) alone.

        Over a block box the form takes every integer between its minimum and maximum,
        so a block is FULL iff all those values are allowed and EMPTY iff none is: one
        prefix count over the form's whole range answers every block in O(1)."""
        g = self.grid
        m, j, _ = region.blocks()
        qa, qb = g.q_bounds(m)
        ka, kb = g.k_bounds(j)
        kind, grain = form
        if kind == "d":
            lo, hi = qa // grain - kb // grain, qb // grain - ka // grain
            first = min(g.offset, 0) // grain - (g.N - 1) // grain
            values = np.arange(first, (g.N - 1) // grain + 1, dtype=np.int64)
            at = (values * grain, 0)
        else:
            lo, hi = (ka, kb) if kind == "k" else (qa, qb)
            first = 0 if kind == "k" else g.offset
            values = np.arange(first, g.N, dtype=np.int64)
            at = (0, values) if kind == "k" else (values, 0)
        allowed = self.evaluate(pred, np.asarray(at[0]), np.asarray(at[1]))
        prefix = np.concatenate([[0], np.cumsum(np.broadcast_to(allowed, values.shape))])
        count = prefix[hi - first + 1] - prefix[lo - first]
        cls = np.where(count == 0, EMPTY, np.where(count == hi - lo + 1, FULL, PARTIAL))
        return Runs.from_blocks(g.QB, g.KB, m, j, cls)

    # -- everything else: bounds, then exact refinement ----------------------------------
    def by_bounds(self, pred: sympy.Basic, region: Runs) -> Runs:
        g = self.grid
        m, j, _ = region.blocks()
        qa, qb = g.q_bounds(m)
        ka, kb = g.k_bounds(j)
        must, may = Bounds(qa, qb, ka, kb, g.M, g.N, self._lookups()).truth(pred)
        must, may = np.broadcast_to(must, m.shape), np.broadcast_to(may, m.shape)
        cls = np.where(must, FULL, np.where(may, UNKNOWN, EMPTY)).astype(np.uint8)
        undecided = cls == UNKNOWN
        cls[undecided] = self.exact(pred, m[undecided], j[undecided])
        return Runs.from_blocks(g.QB, g.KB, m, j, cls)

    def _lookups(self) -> dict:
        """Bounds of doc(x) over any position interval: range min/max of the ids."""
        if self.doc_ids is None:
            return {}
        table = RangeMinMax(self.doc_ids)
        return {doc: lambda lo, hi: table(lo, hi)}

    def evaluate(self, target, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        g = self.grid
        if isinstance(target, Node):
            return evaluate_node(target, rows, cols, g.M, g.N, self.doc_ids)
        env = {q: rows, k: cols, N_SYM: g.N, M_SYM: g.M}
        if self.doc_ids is not None:
            env[doc] = self.doc_ids
        return evaluate(target, env)

    def exact(self, pred: sympy.Basic, m: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Exact class of blocks (m, j): bounds on ever smaller sub-boxes, then elements."""
        g = self.grid
        qa, qb = g.q_bounds(m)
        ka, kb = g.k_bounds(j)
        lookups = self._lookups()

        def bounds_of(a, b, c, d):
            return Bounds(a, b, c, d, g.M, g.N, lookups).truth(pred)

        return refine(bounds_of, lambda rows, cols: self.evaluate(pred, rows, cols),
                      qa, qb, ka, kb)

    def resolve_unknown(self, node: Node, runs: Runs) -> Runs:
        if not np.any(runs.cls == UNKNOWN):
            return runs
        m, j, _ = runs.blocks(UNKNOWN)
        cls = self.exact(node.predicate, m, j)
        known = runs.cls != UNKNOWN
        return Runs.build(runs.rows, runs.cols,
                          np.concatenate([runs.row[known], m]),
                          np.concatenate([runs.start[known], j]),
                          np.concatenate([runs.stop[known], j + 1]),
                          np.concatenate([runs.cls[known], cls])).coalesce()


def classify(node: Node, grid: Grid, doc_ids=None) -> Runs:
    """Exact block classes of one head's pattern on `grid`."""
    return Classifier(grid, doc_ids)(node)
