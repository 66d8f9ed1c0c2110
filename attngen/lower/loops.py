"""A ranges term as kernel loops: per atom its kv-block bounds in sympy (the template
prints them), then disjoint loops over them, each masked never, always, or outside the
atom's FULL run."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy

from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.node import Node
from attngen.lower.atoms import BIG, SYMPY, Atom, atoms_of, block_ranges, transpose

m_sym = sympy.Symbol("m", integer=True, nonnegative=True)  # query-block index in kernels
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
def range_loops(node: Node, fused: bool = False, transposed: bool = False
                ) -> RangeLoops | None:
    """Disjoint kernel loops covering exactly the kv blocks a union of atoms allows.

    Atom i visits its block interval minus the intervals of atoms 0..i-1 (at most two
    pieces per earlier atom). Split loops (default): each piece becomes masked / FULL (no
    mask) / masked loops around the atom's own FULL run. Fused: one loop per piece that
    decides per block whether to mask (fewer loops, so fewer pipeline fills; one scalar
    branch per block). A block FULL for one atom is FULL for the union, so skipping the
    mask there is exact. None if the node is not a small union of atoms.

    transposed: the loops over query blocks per kv block (the backward's dK/dV pass), from
    the transposed atoms. Then m, BLOCK_M, BLOCK_N, q_first, q_last and n_blocks stand for
    the kv block, BLOCK_N, BLOCK_M, its first and last key + (M − N), and the number of
    query blocks (the kernel's names for them are the printer's business)."""
    atoms = range_atoms(node)
    if atoms is None or not 0 < len(atoms) <= MAX_RANGE_ATOMS:
        return None
    bounds, names = [], []
    for i, a in enumerate(atoms):
        if transposed:
            exprs = block_ranges(transpose(a, M_SYM, N_SYM), m_sym, BM_SYM, BN_SYM, N_SYM,
                                 M_SYM, ops=SYMPY, qa=Q_FIRST, qb=Q_LAST, KB=N_BLOCKS)
        else:
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
