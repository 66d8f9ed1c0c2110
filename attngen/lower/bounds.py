"""Interval bounds of a predicate over block boxes, vectorised over blocks.

For every block, q ranges over [qa, qb] and k over [ka, kb]. Each integer expression gets a
sound interval (lo, hi), each predicate a pair (must, may): `must` means true for every
element of the box, `not may` means false for every element. Blocks that the bounds cannot
decide are refined exactly by the caller. Float64 is exact for the integers involved
(< 2^53); the few rational steps are widened by a hair so rounding never makes a bound
unsound (a wider bound only sends a block to exact refinement).
"""
from __future__ import annotations

import functools

import numpy as np
import sympy

from attngen.ir.arith import M, N, bitand, bitlen, k, q

INF = np.inf


def _fold(fn, arrays):
    return functools.reduce(fn, arrays)


def _widen(lo, hi):
    eps = 1e-9 * (1.0 + np.maximum(np.abs(lo), np.abs(hi)))
    return lo - eps, hi + eps


def _mul(a, b):
    with np.errstate(invalid="ignore"):  # 0 * inf is nan, mapped to 0 below
        c = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    c = [np.where(np.isnan(x), 0.0, x) for x in c]  # 0 * inf
    return _fold(np.minimum, c), _fold(np.maximum, c)


def _floor(a):
    lo, hi = _widen(*a)
    return np.floor(lo), np.floor(hi)


def _mod(a, b):
    lo_b, hi_b = b
    const = np.all(lo_b == hi_b) and np.all(lo_b > 0)
    if not const:
        pos = lo_b > 0
        return np.where(pos, 0.0, -INF), np.where(pos, hi_b, INF)
    period = lo_b
    qlo, qhi = _floor((a[0] / period, a[1] / period))
    same = (qlo == qhi) & np.isfinite(qlo)
    lo = np.where(same, a[0] - qlo * period, 0.0)
    hi = np.where(same, a[1] - qlo * period, period)  # x mod p < p, also for rational x
    return lo, hi


def _abs(a):
    lo, hi = a
    return (np.where(lo >= 0, lo, np.where(hi <= 0, -hi, 0.0)),
            np.maximum(np.abs(lo), np.abs(hi)))


def _bitlen(a):
    lo, hi = _abs(a)
    f = lambda x: np.where(x >= 1, np.floor(np.log2(np.maximum(x, 1))) + 1, 0.0)  # noqa: E731
    return np.maximum(f(lo) - 1, 0), f(hi) + 1  # ±1 absorbs log2 rounding


class Bounds:
    """Evaluates sympy expressions to intervals given the block boxes."""

    def __init__(self, qa, qb, ka, kb, M_val: int, N_val: int, lookups: dict | None = None):
        f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
        self.env = {q: (f(qa), f(qb)), k: (f(ka), f(kb)), N: (f(N_val),) * 2,
                    M: (f(M_val),) * 2}
        self.lookups = lookups or {}  # sympy function → callable(lo, hi) → (min, max)

    def value(self, e: sympy.Basic):
        if e.is_Number:
            v = float(e)
            return (v, v) if e.is_Integer else _widen(v, v)
        if e.is_Symbol:
            return self.env[e]
        args = e.args
        if isinstance(e, sympy.Add):
            lo, hi = self.value(args[0])
            for a in args[1:]:
                alo, ahi = self.value(a)
                lo, hi = lo + alo, hi + ahi
            return lo, hi
        if isinstance(e, sympy.Mul):
            acc = self.value(args[0])
            for a in args[1:]:
                acc = _mul(acc, self.value(a))
            return acc
        if isinstance(e, sympy.floor):
            return _floor(self.value(args[0]))
        if isinstance(e, sympy.ceiling):
            lo, hi = _widen(*self.value(args[0]))
            return np.ceil(lo), np.ceil(hi)
        if isinstance(e, sympy.Mod):
            return _mod(self.value(args[0]), self.value(args[1]))
        if isinstance(e, sympy.Abs):
            return _abs(self.value(args[0]))
        if isinstance(e, (sympy.Min, sympy.Max)):
            vals = [self.value(a) for a in args]
            red = np.minimum if isinstance(e, sympy.Min) else np.maximum
            return _fold(red, [v[0] for v in vals]), _fold(red, [v[1] for v in vals])
        if isinstance(e, sympy.Pow) and args[0].is_Number and args[0] > 1:
            lo, hi = self.value(args[1])
            b = float(args[0])
            return _widen(np.power(b, lo), np.power(b, hi))
        if isinstance(e, bitlen):
            return _bitlen(self.value(args[0]))
        if isinstance(e, bitand):
            a, b = self.value(args[0]), self.value(args[1])
            nonneg = (a[0] >= 0) & (b[0] >= 0)
            return np.where(nonneg, 0.0, -INF), np.where(nonneg, np.minimum(a[1], b[1]), INF)
        if isinstance(e, sympy.Piecewise):
            vals = [self.value(v) for v, _ in args]
            return _fold(np.minimum, [v[0] for v in vals]), _fold(np.maximum, [v[1] for v in vals])
        if isinstance(e, sympy.core.function.AppliedUndef) and e.func in self.lookups:
            lo, hi = self.value(args[0])
            if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
                return self.lookups[e.func](np.asarray(lo, dtype=np.int64),
                                            np.asarray(hi, dtype=np.int64))
        shape = np.broadcast(self.env[q][0], self.env[k][0]).shape
        return np.full(shape, -INF), np.full(shape, INF)

    def truth(self, e: sympy.Basic):
        """(must, may) boolean arrays."""
        if e is sympy.true or e is sympy.false:
            v = bool(e)
            return np.bool_(v), np.bool_(v)
        if isinstance(e, sympy.And) or isinstance(e, sympy.Or):
            parts = [self.truth(a) for a in e.args]
            red = np.logical_and if isinstance(e, sympy.And) else np.logical_or
            return _fold(red, [p[0] for p in parts]), _fold(red, [p[1] for p in parts])
        if isinstance(e, sympy.Not):
            must, may = self.truth(e.args[0])
            return ~may, ~must
        if e.is_Relational:
            (alo, ahi), (blo, bhi) = self.value(e.lhs), self.value(e.rhs)
            if isinstance(e, sympy.StrictLessThan):
                return ahi < blo, alo < bhi
            if isinstance(e, sympy.LessThan):
                return ahi <= blo, alo <= bhi
            if isinstance(e, sympy.StrictGreaterThan):
                return alo > bhi, ahi > blo
            if isinstance(e, sympy.GreaterThan):
                return alo >= bhi, ahi >= blo
            point = (alo == ahi) & (blo == bhi) & (alo == blo)
            overlap = (alo <= bhi) & (blo <= ahi)
            if isinstance(e, sympy.Equality):
                return point, overlap
            return ~overlap, ~point
        raise TypeError(f"no bounds for {type(e).__name__}")


class RangeMinMax:
    """Min and max of an int array over inclusive index ranges (a sparse table)."""

    def __init__(self, values: np.ndarray):
        self.n = len(values)
        self.lo_tables, self.hi_tables = [values], [values]
        width = 1
        while 2 * width <= self.n:
            lo, hi = self.lo_tables[-1], self.hi_tables[-1]
            self.lo_tables.append(np.minimum(lo[:-width], lo[width:]))
            self.hi_tables.append(np.maximum(hi[:-width], hi[width:]))
            width *= 2

    def __call__(self, a: np.ndarray, b: np.ndarray):
        a, b = np.clip(a, 0, self.n - 1), np.clip(b, 0, self.n - 1)
        a, b = np.broadcast_arrays(np.minimum(a, b), np.maximum(a, b))
        level = np.floor(np.log2(b - a + 1)).astype(np.int64)
        lo, hi = np.empty(a.shape), np.empty(a.shape)
        for lv in np.unique(level):
            sel = level == lv
            w = 1 << int(lv)
            lo[sel] = np.minimum(self.lo_tables[lv][a[sel]], self.lo_tables[lv][b[sel] - w + 1])
            hi[sel] = np.maximum(self.hi_tables[lv][a[sel]], self.hi_tables[lv][b[sel] - w + 1])
        return lo, hi


INT32 = (-(1 << 31), (1 << 31) - 1)


def int32_escape(cond: sympy.Basic, M_val: int, N_val: int) -> sympy.Expr | None:
    """A subexpression of `cond` whose values leave int32 for some query position
    q ∈ [N − M, N − 1] and key k ∈ [0, N − 1] (the kernels compute predicates in int32),
    or None. Only finite bounds count: an expression with unknown bounds (a run-time
    lookup) is no evidence of overflow."""
    box = Bounds(N_val - M_val, N_val - 1, 0, N_val - 1, M_val, N_val)
    for e in sympy.preorder_traversal(cond):
        if not isinstance(e, sympy.Expr) or e.is_Number or e.is_Symbol \
                or not e.free_symbols & {q, k}:
            continue
        lo, hi = (float(np.min(x)) for x in box.value(e))
        if (np.isfinite(lo) and lo < INT32[0]) or (np.isfinite(hi) and hi > INT32[1]):
            return e
    return None
