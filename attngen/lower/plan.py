"""`attngen.lower`: the plan a kernel runs: per head group, its terms, each with the
strategy that computes it and its cost.

Strategies (DESIGN §4): "ranges" (a union of affine atoms: per query block, kv-block
intervals in closed form, nothing to build), "table" (other static terms: CSR of kv blocks
from the exact layout), "dynamic" (indices estimated at run time). The plan itself is
numeric and cheap (vectorised over query blocks); the sympy form of a ranges term's bounds,
which the kernel template prints, is `range_loops` (cached per term).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import sympy

from attngen.ir import simplify as S
from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.lower.atoms import BIG, SYMPY, Atom, atoms_of, block_ranges, numeric
from attngen.lower.grid import Grid
from attngen.lower.layout import _block, layout

m_sym = sympy.Symbol("m", integer=True, nonnegative=True)  # query-block index in kernels


@dataclass(frozen=True)
class Term:
    pattern: str
    strategy: str  # "ranges" | "table" | "dynamic"
    blocks: int  # kv blocks visited, summed over query blocks (one head)
    masked_blocks: int  # of which need the mask evaluated (not provably FULL)
    node: Node = field(repr=False, compare=False)


@dataclass(frozen=True)
class HeadGroup:
    heads: tuple[int, ...]
    pattern: str
    terms: tuple[Term, ...]

    @property
    def blocks(self) -> int:
        return sum(t.blocks for t in self.terms)


@dataclass(frozen=True)
class Plan:
    pattern: str
    grid: Grid
    groups: tuple[HeadGroup, ...]
    head_dim: int
    dtype_bytes: int

    @property
    def blocks(self) -> int:
        """kv blocks visited over all heads and query blocks."""
        return sum(g.blocks * len(g.heads) for g in self.groups)

    @property
    def elements(self) -> int:
        """Score elements computed (blocks × BM × BN)."""
        return self.blocks * self.grid.BM * self.grid.BN

    @property
    def bytes_read(self) -> int:
        """K and V bytes read for the visited blocks (Q and O are extra, once each)."""
        return self.blocks * self.grid.BN * self.head_dim * 2 * self.dtype_bytes

    @property
    def block_density(self) -> float:
        """Visited blocks ÷ blocks a causal kernel visits."""
        g = self.grid
        causal = _causal_blocks(g)
        return self.blocks / (causal * sum(len(x.heads) for x in self.groups))

    def summary(self) -> str:
        g = self.grid
        lines = [f"plan for `{self.pattern}`  M={g.M} N={g.N} block={g.BM}x{g.BN}",
                 f"  visits {self.blocks} kv blocks ({self.block_density:.2%} of causal), "
                 f"reads {self.bytes_read / 2**20:.1f} MiB of K and V"]
        for grp in self.groups:
            heads = _ranges_text(grp.heads)
            lines.append(f"  heads {heads}: {grp.pattern}")
            for t in grp.terms:
                lines.append(f"    {t.strategy:<8} {t.pattern}  [{t.blocks} blocks, "
                             f"{t.masked_blocks} masked]")
        return "\n".join(lines)


def _ranges_text(heads: tuple[int, ...]) -> str:
    out, start = [], heads[0]
    for a, b in zip(heads, heads[1:] + (None,)):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}..{a}")
            start = b
    return ", ".join(out)


def _causal_blocks(g: Grid) -> int:
    atom = Atom(dlo=0)
    nlo, nhi, _, _ = block_ranges(atom, np.arange(g.QB), g.BM, g.BN, g.M, g.N)
    return int(np.maximum(nhi - nlo + 1, 0).sum())


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


def _ranges_cost(atoms: list[Atom], g: Grid) -> tuple[int, int]:
    m = np.arange(g.QB, dtype=np.int64)
    spans = [block_ranges(a, m, g.BM, g.BN, g.M, g.N) for a in atoms]
    if not spans:
        return 0, 0
    visit = _interval_union_size(np.stack([s[0] for s in spans], 1),
                                 np.stack([s[1] for s in spans], 1))
    full = _interval_union_size(np.stack([s[2] for s in spans], 1),
                                np.stack([s[3] for s in spans], 1))
    return int(visit.sum()), int((visit - full).sum())


def _split_terms(node: Node, value) -> list[tuple[str, Node]]:
    """(strategy, node) terms of one head's pattern; ranges terms are merged into one."""
    if node.is_dynamic:
        if node.op == "or":
            parts = [_split_terms(c, value) for c in node.children]
            terms = [t for p in parts for t in p]
            ranges = [n for s, n in terms if s == "ranges"]
            others = [(s, n) for s, n in terms if s != "ranges"]
            return ([("ranges", S.union(*ranges))] if ranges else []) + others
        return [("dynamic", node)]
    if atoms_of(node, value) is not None:
        return [("ranges", node)]
    if node.op == "or":
        affine = [c for c in node.children if atoms_of(c, value) is not None]
        rest = [c for c in node.children if c not in affine]
        return ([("ranges", S.union(*affine))] if affine else []) + [("table", c) for c in rest]
    return [("table", node)]


def lower(pattern: Pattern | str, M: int, N: int | None = None,
          block: int | tuple[int, int] = 128, heads: int = 1, kv_heads: int | None = None,
          head_dim: int = 128, dtype_bytes: int = 2, doc_ids=None) -> Plan:
    """The plan for `pattern` at M queries × N keys (DESIGN §4)."""
    if isinstance(pattern, str):
        from attngen.dsl import parse  # text is accepted for convenience at the API edge

        pattern = parse(pattern)
    N = M if N is None else N
    pattern.check(M, N)
    grid = Grid(M, N, *_block(block))
    value = numeric(M, N)
    by_node: dict[Node, list[int]] = {}
    for h, n in enumerate(pattern.head_nodes(heads, kv_heads)):
        by_node.setdefault(n, []).append(h)
    groups = []
    for node, hs in by_node.items():
        terms = []
        for strategy, term in _split_terms(node, value):
            if strategy == "ranges":
                blocks, masked = _ranges_cost(atoms_of(term, value), grid)
            elif strategy == "table":
                lay = layout(Pattern(term), M, N, block=block, doc_ids=doc_ids)
                partial, full = lay.block_counts()
                blocks, masked = partial + full, partial
            else:
                blocks = masked = _dynamic_blocks(term, grid, value)
            terms.append(Term(term.text, strategy, blocks, masked, term))
        groups.append(HeadGroup(tuple(hs), node.text, tuple(terms)))
    return Plan(str(pattern), grid, tuple(groups), head_dim, dtype_bytes)


def _dynamic_blocks(node: Node, g: Grid, value) -> int:
    """A budget estimate of the blocks a dynamic term visits (its indices come at run time)."""
    prim = node if node.op == "prim" else next(
        (c for c in node.children if c.op == "prim" and c.is_dynamic), None)
    causal = _causal_blocks(g)
    if prim is None:
        return causal
    p = [value(x) if x.is_integer else float(x) for x in prim.params]
    if prim.name == "vertical_slash":
        per_row = -(-p[0] // g.BN) + -(-p[1] // g.BN)
        return min(causal, per_row * g.QB)
    if prim.name == "block_topk":
        return min(causal, (int(p[0]) + 1) * g.QB)
    return causal  # block_cover: unknown until run time; bounded by causal


# -- kernel loops for a ranges term --------------------------------------------------------
BM_SYM = sympy.Symbol("BLOCK_M", integer=True, positive=True)
BN_SYM = sympy.Symbol("BLOCK_N", integer=True, positive=True)
MAX_RANGE_ATOMS = 3  # each further atom doubles the loops a kernel needs


Q_FIRST = sympy.Symbol("q_first", integer=True)  # first absolute query position of block m
Q_LAST = sympy.Symbol("q_last", integer=True)
N_BLOCKS = sympy.Symbol("n_blocks", integer=True, positive=True)  # cdiv(N, BLOCK_N)
BOUND_NAMES = ("lo", "hi", "full_lo", "full_hi")


NEVER, ALWAYS, OUTSIDE_FULL = 0, 1, 2  # when a loop evaluates the predicate


@dataclass(frozen=True)
class Segment:
    """One kernel loop over kv blocks start..stop-1 of a query block. `masked`: NEVER,
    ALWAYS, or OUTSIDE_FULL (on blocks outside full_lo..full_hi, decided per block at run
    time). Bounds are sympy in the per-atom names lo_i, hi_i, full_lo_i, full_hi_i."""

    start: sympy.Expr
    stop: sympy.Expr
    masked: int
    note: str
    full_lo: sympy.Expr = sympy.Integer(0)
    full_hi: sympy.Expr = sympy.Integer(-1)


@dataclass(frozen=True)
class RangeLoops:
    """A ranges term as kernel loops: per atom its block bounds (sympy in m, N, M,
    BLOCK_M, BLOCK_N, q_first, q_last, n_blocks), then disjoint loops over them."""

    bounds: tuple[tuple[str, sympy.Expr], ...]  # (name, expression), in order
    segments: tuple[Segment, ...]


def range_atoms(node: Node) -> list[Atom] | None:
    """The atoms of a ranges term with symbolic parameters and ±oo for unbounded sides."""
    atoms = atoms_of(node, lambda x: int(x) if x.is_Integer else x)
    if atoms is None:
        return None
    unbounded = {sympy.Integer(BIG): sympy.oo, sympy.Integer(-BIG): -sympy.oo}
    return [Atom(**{f: sympy.sympify(v).xreplace(unbounded) for f, v in vars(a).items()})
            for a in atoms]


@functools.lru_cache(maxsize=256)
def range_loops(node: Node, fused: bool = False) -> RangeLoops | None:
    """Disjoint kernel loops covering exactly the kv blocks a union of atoms allows.

    Atom i visits its block interval minus the intervals of atoms 0..i-1 (at most two
    pieces per earlier atom). Split loops (default): each piece becomes masked / FULL (no
    mask) / masked loops around the atom's own FULL run. Fused: one loop per piece that
    decides per block whether to mask (fewer loops, so fewer pipeline fills; one scalar
    branch per block). A block FULL for one atom is FULL for the union, so skipping the
    mask there is exact. None if the node is not a small union of atoms."""
    atoms = range_atoms(node)
    if atoms is None or not 0 < len(atoms) <= MAX_RANGE_ATOMS:
        return None
    bounds, names = [], []
    for i, a in enumerate(atoms):
        exprs = block_ranges(a, m_sym, BM_SYM, BN_SYM, M_SYM, N_SYM, ops=SYMPY,
                             qa=Q_FIRST, qb=Q_LAST, KB=N_BLOCKS)
        syms = [sympy.Symbol(f"{b}_{i}", integer=True) for b in BOUND_NAMES]
        bounds += [(s.name, e) for s, e in zip(syms, exprs)]
        names.append(syms)
    segments: list[Segment] = []
    for i, (lo, hi, flo, fhi) in enumerate(names):
        pieces = [(lo, hi)]
        for lo_j, hi_j, _, _ in names[:i]:
            pieces = [p for a, b in pieces
                      for p in ((a, sympy.Min(b, lo_j - 1)), (sympy.Max(a, hi_j + 1), b))]
        note = f"atom {i}" + (f" outside atoms 0..{i - 1}" if i else "")
        for a, b in pieces:
            if fused:
                segments.append(Segment(a, b + 1, OUTSIDE_FULL, note + ": masked outside its "
                                        "full blocks", flo, fhi))
                continue
            segments += [
                Segment(a, sympy.Min(b, flo - 1) + 1, ALWAYS, note + ": partial blocks before"),
                Segment(sympy.Max(a, flo), sympy.Min(b, fhi) + 1, NEVER, note + ": full blocks"),
                # flo also bounds "after" from below: when an atom has no FULL run
                # (flo > fhi) the "before" loop already covers blocks up to flo - 1
                Segment(sympy.Max(a, fhi + 1, flo), b + 1, ALWAYS,
                        note + ": partial blocks after"),
            ]
    return RangeLoops(tuple(bounds), tuple(segments))
