"""Symbols of the predicate language and exact evaluation of sympy expressions over arrays.

Predicates are sympy expressions over q (absolute query position), k (key position), N and M.
`//` is `floor(a / b)` and `%` is `Mod(a, b)` (Python semantics: floor division, result
with the divisor's sign). Values are evaluated as exact rationals (numerator, denominator)
of int64 arrays, so `floor`, `Mod` and comparisons never round.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy

from attngen.errors import PatternError
from attngen.ir.bitops import bitand, bitlen
from attngen.ir.printer import to_text

# q is not nonnegative: with M > N (bottom-right alignment, q = i + N − M) the first
# queries sit at negative positions. Keys are always 0 … N − 1.
q = sympy.Symbol("q", integer=True)
k = sympy.Symbol("k", integer=True, nonnegative=True)
N = sympy.Symbol("N", integer=True, positive=True)
M = sympy.Symbol("M", integer=True, positive=True)
SYMBOLS = {"q": q, "k": k, "N": N, "M": M}



def floordiv(a, b) -> sympy.Expr:
    return sympy.floor(sympy.sympify(a) / b)


# -- exact evaluation ---------------------------------------------------------------------
# A value is (numerator, denominator) with denominator > 0, or None for integers (the
# common case, kept free of rational bookkeeping).
Rat = tuple[np.ndarray, np.ndarray | None]


def _norm(n, d) -> Rat:
    n = np.asarray(n, dtype=np.int64)
    if d is None:
        return n, None
    d = np.asarray(d, dtype=np.int64)
    if np.any(d == 0):
        raise ZeroDivisionError("division by zero")
    # Not reduced by the gcd: magnitudes stay far below int64 for positions < 2^31.
    sign = np.where(d < 0, -1, 1)
    n, d = n * sign, d * sign
    return (n, None) if np.all(d == 1) else (n, d)


def _den(a: Rat):
    return 1 if a[1] is None else a[1]


def _add(a: Rat, b: Rat) -> Rat:
    if a[1] is None and b[1] is None:
        return a[0] + b[0], None
    return _norm(a[0] * _den(b) + b[0] * _den(a), _den(a) * _den(b))


def _mul(a: Rat, b: Rat) -> Rat:
    if a[1] is None and b[1] is None:
        return a[0] * b[0], None
    return _norm(a[0] * b[0], _den(a) * _den(b))


def _neg(a: Rat) -> Rat:
    return -a[0], a[1]


def _inv(a: Rat) -> Rat:
    return _norm(_den(a), a[0])


def _floor(a: Rat) -> Rat:
    return (a[0], None) if a[1] is None else (np.floor_divide(a[0], a[1]), None)


def _mod(a: Rat, b: Rat) -> Rat:
    if np.any(b[0] == 0):
        raise ZeroDivisionError("modulo by zero")
    return _add(a, _neg(_mul(_floor(_mul(a, _inv(b))), b)))


def _cmp(a: Rat, b: Rat) -> np.ndarray:
    """Sign of a - b."""
    if a[1] is None and b[1] is None:
        return np.sign(a[0] - b[0])
    return np.sign(a[0] * _den(b) - b[0] * _den(a))


def _pow(base: Rat, exp: Rat) -> Rat:
    e = _floor(exp)[0]
    if np.all(e >= 0):
        return _norm(np.power(base[0], e), None if base[1] is None else np.power(base[1], e))
    pos, neg = np.maximum(e, 0), np.maximum(-e, 0)
    d = _den(base)
    return _norm(np.power(base[0], pos) * np.power(d, neg),
                 np.power(d, pos) * np.power(base[0], neg))


def _bitlen(x: Rat) -> Rat:
    v = np.abs(_floor(x)[0]).astype(np.int64)
    out = np.zeros_like(v)
    nz = v > 0
    out[nz] = np.floor(np.log2(v[nz].astype(np.float64))).astype(np.int64) + 1
    # float log2 can be off by one near powers of two; fix exactly.
    out = np.where(nz & (np.left_shift(1, np.maximum(out - 1, 0)) > v), out - 1, out)
    out = np.where(nz & (np.left_shift(1, out) <= v), out + 1, out)
    return out, None


def _select(cond, a: Rat, b: Rat) -> Rat:
    if a[1] is None and b[1] is None:
        return np.where(cond, a[0], b[0]), None
    return np.where(cond, a[0], b[0]), np.where(cond, _den(a), _den(b))


def _min(args: list[Rat]) -> Rat:
    best = args[0]
    for a in args[1:]:
        best = _select(_cmp(a, best) < 0, a, best)
    return best


def _max(args: list[Rat]) -> Rat:
    return _neg(_min([_neg(a) for a in args]))


_REL: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    sympy.StrictLessThan: lambda s: s < 0,
    sympy.LessThan: lambda s: s <= 0,
    sympy.StrictGreaterThan: lambda s: s > 0,
    sympy.GreaterThan: lambda s: s >= 0,
    sympy.Equality: lambda s: s == 0,
    sympy.Unequality: lambda s: s != 0,
}


def evaluate(expr: sympy.Basic, env: dict[sympy.Symbol, np.ndarray | int]):
    """Evaluate an integer expression (→ Rat) or a predicate (→ bool array) exactly.
    A division or modulo by zero at some position raises PatternError."""
    try:
        if isinstance(expr, sympy.logic.boolalg.Boolean) or expr.is_Relational:
            return _bool(expr, env)
        return _value(expr, env)
    except ZeroDivisionError:
        raise _division_by_zero(expr) from None


def _division_by_zero(expr: sympy.Basic) -> PatternError:
    try:
        text = to_text(expr)
    except ValueError:
        text = sympy.sstr(expr)
    return PatternError(f"division by zero while evaluating `{text}`: a divisor is 0 at some "
                        "position")


def evaluate_int(expr: sympy.Basic, env: dict) -> np.ndarray:
    """An integer expression, floored (parameters are floored when evaluated)."""
    try:
        return _floor(_value(sympy.sympify(expr), env))[0]
    except ZeroDivisionError:
        raise _division_by_zero(expr) from None


def _value(e: sympy.Basic, env: dict) -> Rat:
    if e.is_Integer:
        return np.int64(int(e)), None
    if e.is_Rational:
        return np.int64(e.p), np.int64(e.q)
    if e.is_Symbol:
        return np.asarray(env[e], dtype=np.int64), None
    if isinstance(e, sympy.Add):
        acc = _value(e.args[0], env)
        for a in e.args[1:]:
            acc = _add(acc, _value(a, env))
        return acc
    if isinstance(e, sympy.Mul):
        acc = _value(e.args[0], env)
        for a in e.args[1:]:
            acc = _mul(acc, _value(a, env))
        return acc
    if isinstance(e, sympy.floor):
        return _floor(_value(e.args[0], env))
    if isinstance(e, sympy.ceiling):
        return _neg(_floor(_neg(_value(e.args[0], env))))
    if isinstance(e, sympy.Mod):
        return _mod(_value(e.args[0], env), _value(e.args[1], env))
    if isinstance(e, sympy.Abs):
        a = _value(e.args[0], env)
        return np.abs(a[0]), a[1]
    if isinstance(e, sympy.Min):
        return _min([_value(a, env) for a in e.args])
    if isinstance(e, sympy.Max):
        return _max([_value(a, env) for a in e.args])
    if isinstance(e, sympy.Pow):
        return _pow(_value(e.args[0], env), _value(e.args[1], env))
    if isinstance(e, bitand):
        a, b = (_floor(_value(x, env))[0] for x in e.args)
        return np.bitwise_and(a, b), None
    if isinstance(e, bitlen):
        return _bitlen(_value(e.args[0], env))
    if isinstance(e, sympy.core.function.AppliedUndef):
        # A runtime lookup table such as document ids: env maps the function to an array.
        index = _floor(_value(e.args[0], env))[0]
        return np.asarray(env[e.func], dtype=np.int64)[index], None
    if isinstance(e, sympy.Piecewise):
        # Conditions are tried in order; the last one of a sympy Piecewise is always true.
        branches = [(_value(v, env), _bool(c, env)) for v, c in e.args]
        out = branches[-1][0]
        for value, cond in reversed(branches[:-1]):
            out = _select(cond, value, out)
        return out
    raise TypeError(f"cannot evaluate {type(e).__name__}: {e}")


def _bool(e: sympy.Basic, env: dict) -> np.ndarray:
    if e is sympy.true:
        return np.bool_(True)
    if e is sympy.false:
        return np.bool_(False)
    if type(e) in _REL:
        return _REL[type(e)](_cmp(_value(e.lhs, env), _value(e.rhs, env)))
    if isinstance(e, sympy.And):
        out = np.bool_(True)
        for a in e.args:
            out = np.logical_and(out, _bool(a, env))
        return out
    if isinstance(e, sympy.Or):
        out = np.bool_(False)
        for a in e.args:
            out = np.logical_or(out, _bool(a, env))
        return out
    if isinstance(e, sympy.Not):
        return np.logical_not(_bool(e.args[0], env))
    raise TypeError(f"cannot evaluate predicate {type(e).__name__}: {e}")
