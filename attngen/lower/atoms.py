"""Affine atoms and their block ranges in closed form.

An atom is the conjunction  dlo <= q - k <= dhi,  klo <= k <= khi,  qlo <= q <= qhi.
causal, local, band, sink, full, rows and columns are atoms (or unions of atoms), and an
intersection of atoms is an atom, so `causal & (sink(s) | local(w))` becomes the union of
two atoms. For every query block the allowed keys of an atom are one contiguous run of kv
blocks, with a contiguous FULL run inside it; `block_ranges` gives both in closed form. The
same formula runs on numpy arrays (layouts, costs) and on sympy symbols (the plan the kernel
template prints), so the two can never disagree.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import sympy

from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.arith import evaluate_int
from attngen.ir.node import Node
from attngen.ir.primitives import PRIMITIVES
from attngen.lower.grid import Grid
from attngen.lower.runs import FULL, PARTIAL, Runs

BIG = 1 << 40  # "unbounded": far beyond any position, small enough that sums stay in int64
MAX_ATOMS = 64


@dataclass(frozen=True)
class Atom:
    dlo: object = -BIG
    dhi: object = BIG
    klo: object = -BIG
    khi: object = BIG
    qlo: object = -BIG
    qhi: object = BIG

    def intersect(self, o: Atom) -> Atom:
        mx, mn = (sympy.Max, sympy.Min) if _symbolic(self, o) else (max, min)
        return Atom(mx(self.dlo, o.dlo), mn(self.dhi, o.dhi), mx(self.klo, o.klo),
                    mn(self.khi, o.khi), mx(self.qlo, o.qlo), mn(self.qhi, o.qhi))

    def is_empty(self) -> bool:
        if _symbolic(self):
            return False
        return self.dlo > self.dhi or self.klo > self.khi or self.qlo > self.qhi


def _symbolic(*atoms: Atom) -> bool:
    return any(isinstance(v, sympy.Basic) for a in atoms for v in vars(a).values())


def prim_atoms(node: Node, value) -> list[Atom] | None:
    """The atoms of a primitive from its boxes (ir/primitives.py), or None when it has none;
    `value` turns a parameter into a number or symbol."""
    spec = PRIMITIVES[node.name]
    if spec.atoms is None:
        return None
    boxes = spec.boxes(*[value(x) for x in node.params])
    return None if boxes is None else [Atom(**box) for box in boxes]


def atoms_of(node: Node, value) -> list[Atom] | None:
    """`node` as a union of atoms, or None when it is not one (or would need too many)."""
    if node.op == "prim":
        return prim_atoms(node, value)
    if node.op == "empty":
        return []
    if node.op not in ("or", "and", "not"):
        return None
    parts = [atoms_of(c, value) for c in node.children]
    if any(p is None for p in parts):
        return None
    if node.op == "not":  # ~(A1 | A2 | …) = ~A1 & ~A2 & …, each ~Ai a union of half-spaces
        parts = [_complement(a) for a in parts[0]]
        if not parts:
            return [Atom()]
    if node.op == "or":
        out = [a for p in parts for a in p]
    else:
        out = []
        for combo in itertools.product(*parts):
            a = combo[0]
            for b in combo[1:]:
                a = a.intersect(b)
            if not a.is_empty():
                out.append(a)
            if len(out) > MAX_ATOMS:
                return None
    return out if len(out) <= MAX_ATOMS else None


def _complement(a: Atom) -> list[Atom]:
    """The half-spaces whose union is the complement of atom a (unbounded sides give none)."""
    out = []
    for lo_name, hi_name in (("dlo", "dhi"), ("klo", "khi"), ("qlo", "qhi")):
        lo, hi = getattr(a, lo_name), getattr(a, hi_name)
        if lo != -BIG:
            out.append(Atom(**{hi_name: lo - 1}))
        if hi != BIG:
            out.append(Atom(**{lo_name: hi + 1}))
    return out


def numeric(M: int, N: int):
    env = {N_SYM: N, M_SYM: M}
    return lambda x: int(evaluate_int(x, env))


NUMPY = SimpleNamespace(max=np.maximum, min=np.minimum, where=np.where,
                        floordiv=lambda a, b: a // b)
SYMPY = SimpleNamespace(max=sympy.Max, min=sympy.Min,
                        where=lambda c, a, b: sympy.Piecewise((a, c), (b, True)),
                        floordiv=lambda a, b: sympy.floor(a / b))


def block_ranges(atom: Atom, m, BM: int, BN: int, M, N, ops=NUMPY, qa=None, qb=None, KB=None):
    """Per query block m: non-empty kv blocks [nlo, nhi] and FULL kv blocks [flo, fhi]
    (inclusive; an empty range has lo > hi). qa, qb (first and last absolute query
    position of the block) and KB (number of kv blocks) may be given as names."""
    KB = ops.floordiv(N + BN - 1, BN) if KB is None else KB
    off = N - M
    qa = m * BM + off if qa is None else qa
    qb = ops.min((m + 1) * BM, M) - 1 + off if qb is None else qb
    klo, khi = ops.max(atom.klo, 0), ops.min(atom.khi, N - 1)
    v0 = ops.max(klo + atom.dlo, atom.qlo)
    v1 = ops.min(khi + atom.dhi, atom.qhi)
    qa2, qb2 = ops.max(qa, v0), ops.min(qb, v1)
    sane = (klo <= khi) & (atom.dlo <= atom.dhi) if ops is NUMPY else \
        sympy.And(klo <= khi, atom.dlo <= atom.dhi)

    def lower(q):
        return ops.max(klo, q - atom.dhi)

    def upper(q):
        return ops.min(khi, q - atom.dlo)

    nonempty = sane & (qa2 <= qb2) if ops is NUMPY else sympy.And(sane, qa2 <= qb2)
    nlo = ops.where(nonempty, ops.floordiv(lower(qa2), BN), 0)
    nhi = ops.where(nonempty, ops.floordiv(upper(qb2), BN), -1)
    all_rows = (nonempty & (qa2 == qa) & (qb2 == qb)) if ops is NUMPY else \
        sympy.And(nonempty, sympy.Eq(qa2, qa), sympy.Eq(qb2, qb))
    flo = ops.where(all_rows, -ops.floordiv(-lower(qb), BN), 0)
    fhi_full = ops.where(upper(qa) >= N - 1, KB - 1, ops.floordiv(upper(qa) + 1, BN) - 1)
    fhi = ops.where(all_rows, fhi_full, -1)
    return nlo, nhi, flo, fhi


def transpose(atom: Atom, M, N) -> Atom:
    """The atom seen from the keys, for the backward's pass over query blocks per kv block:
    key k becomes the query q' = k + (M − N) of an N-query, M-key problem (bottom-right
    aligned like every problem), and query row i = q − (N − M) becomes its key k'. Then
    q − k = k' − q', so `block_ranges(transpose(a, M, N), n, BN, BM, N, M)` gives, per kv
    block n, the query blocks (and the FULL ones) that atom a touches."""
    off = N - M
    return Atom(dlo=-atom.dhi, dhi=-atom.dlo, klo=atom.qlo - off, khi=atom.qhi - off,
                qlo=atom.klo - off, qhi=atom.khi - off)


def atom_runs(atom: Atom, grid: Grid) -> Runs:
    m = np.arange(grid.QB, dtype=np.int64)
    nlo, nhi, flo, fhi = block_ranges(atom, m, grid.BM, grid.BN, grid.M, grid.N)
    has_full = flo <= fhi
    # PARTIAL before the full run, the FULL run, PARTIAL after it; or one PARTIAL run.
    row = np.concatenate([m, m, m])
    start = np.concatenate([nlo, np.where(has_full, flo, nlo), np.where(has_full, fhi + 1, 0)])
    stop = np.concatenate([np.where(has_full, flo, nhi + 1), np.where(has_full, fhi + 1, 0),
                           np.where(has_full, nhi + 1, 0)])
    cls = np.concatenate([np.full(grid.QB, PARTIAL), np.where(has_full, FULL, 0),
                          np.full(grid.QB, PARTIAL)])
    return Runs.build(grid.QB, grid.KB, row, start, stop, cls)
