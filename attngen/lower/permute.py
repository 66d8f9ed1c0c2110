"""Residue classes: the change of coordinates behind the permutation strategy.

A term that allows only pairs with (q − k) mod s == 0 (strided(s), dilated(w, s), or a
`where` with that conjunct) never mixes residue classes: query q meets only keys k ≡ q
(mod s). Renumbering class r as q = r + s·i, k = r + s·j turns each class into an
ordinary attention problem of about M/s queries and N/s keys, bottom-right aligned like
the original (the last query and the last key of a class are the last ones ≤ N − 1).
When the term depends on q − k alone, its predicate in class coordinates is P(s·(i − j)):
again a function of i − j, so `strided(s)` becomes `full`, `causal & dilated(w, s)` becomes
`local(w)`, and the term is computed densely by the ranges strategy, with work
proportional to its allowed pairs.
"""
from __future__ import annotations

import math

import sympy

from attngen.ir import simplify as S
from attngen.ir.arith import k, q
from attngen.ir.node import Node

_d = sympy.Symbol("_d", integer=True)


def _constant(x: sympy.Expr) -> int | None:
    return int(x) if x.is_Integer else None


def period(node: Node) -> int | None:
    """The largest s ≥ 2 provable from the structure such that node ⊆ strided(s)."""
    if node.op == "prim":
        if node.name == "strided":
            s = _constant(node.params[0])
        elif node.name == "dilated":
            s = _constant(node.params[1])
        else:
            return None
        return s if s is not None and s >= 2 else None
    if node.op == "where":
        found = [s for s in map(_mod_zero_of_difference, sympy.And.make_args(node.cond))
                 if s is not None]
        return math.lcm(*found) if found else None
    if node.op == "and":
        found = [p for p in map(period, node.children) if p is not None]
        return math.lcm(*found) if found else None
    if node.op == "or":
        found = [period(c) for c in node.children]
        if any(p is None for p in found):
            return None
        g = math.gcd(*found)
        return g if g >= 2 else None
    return None


def _mod_zero_of_difference(cond: sympy.Basic) -> int | None:
    """s when cond is Eq(Mod(±(q − k), s), 0) with a constant s ≥ 2."""
    if not isinstance(cond, sympy.Eq) or sympy.Integer(0) not in cond.args:
        return None
    mod = cond.args[0] if cond.args[1] == 0 else cond.args[1]
    if not isinstance(mod, sympy.Mod) or sympy.expand(mod.args[0] ** 2 - (q - k) ** 2) != 0:
        return None
    s = _constant(mod.args[1])
    return s if s is not None and s >= 2 else None


def in_classes(node: Node, s: int) -> Node | None:
    """The pattern inside one residue class mod s, in class coordinates (i, j), when `node`
    depends on q − k alone with constant parameters; None otherwise."""
    if node.op == "empty":
        return node
    if node.op == "prim":
        return _prim_in_classes(node, s)
    if node.op == "where":
        cond = node.cond
        if not cond.free_symbols <= {q, k} or k in _normalised(cond.subs(q, k + _d)).free_symbols:
            return None
        return _d_form_node(_normalised(cond.xreplace({q: s * q, k: s * k}).subs(q, k + _d)))
    parts = [in_classes(c, s) for c in node.children]
    if any(p is None for p in parts):
        return None
    if node.op == "not":
        return S.neg(parts[0])
    return S.inter(*parts) if node.op == "and" else S.union(*parts) if node.op == "or" else None


def _d_form_node(cond: sympy.Basic) -> Node | None:
    """A predicate of d = q − k (relations a·d + c ⋈ 0, Eq(Mod(a·d, t), 0), and/or/not) as
    a union of primitives, so the ranges strategy can run it; None when it is not one."""
    if cond is sympy.true or cond is sympy.false:
        return S.where(cond)
    if isinstance(cond, (sympy.And, sympy.Or)):
        parts = [_d_form_node(c) for c in cond.args]
        if any(p is None for p in parts):
            return None
        return S.inter(*parts) if isinstance(cond, sympy.And) else S.union(*parts)
    if isinstance(cond, sympy.Not):
        inner = _d_form_node(cond.args[0])
        return None if inner is None else S.neg(inner)
    if not isinstance(cond, sympy.core.relational.Relational) or cond.rhs != 0:
        return None
    if isinstance(cond, (sympy.Eq, sympy.Ne)) and isinstance(cond.lhs, sympy.Mod):
        a, t = _linear(cond.lhs.args[0]), cond.lhs.args[1]
        if a is None or a[1] != 0 or not t.is_Integer:
            return None
        multiples = _strided(int(t) // math.gcd(int(t), a[0]))
        return multiples if isinstance(cond, sympy.Eq) else S.neg(multiples)
    poly = _linear(cond.lhs)
    if poly is None:
        return None
    a, c = poly
    if a < 0:  # a·d + c ⋈ 0  ⇔  (−a)·d − c ⋈' 0
        a, c, cond = -a, -c, cond.reversed.func(-cond.lhs, 0)
    lo, hi = -(c // a), (-c) // a  # a·d + c >= 0 ⇔ d >= lo;  <= 0 ⇔ d <= hi
    if isinstance(cond, sympy.GreaterThan):
        return _at_least(lo)
    if isinstance(cond, sympy.StrictGreaterThan):
        return _at_least(hi + 1)
    if isinstance(cond, sympy.LessThan):
        return S.neg(_at_least(hi + 1))
    if isinstance(cond, sympy.StrictLessThan):
        return S.neg(_at_least(lo))
    exact = S.inter(_at_least(lo), S.neg(_at_least(hi + 1))) if lo == hi else S.EMPTY
    return exact if isinstance(cond, sympy.Eq) else S.neg(exact)


def _linear(expr: sympy.Expr) -> tuple[int, int] | None:
    """(a, c) when expr is a·d + c with integers a ≠ 0 and c."""
    try:
        poly = sympy.Poly(expr, _d)
    except sympy.PolynomialError:
        return None
    coeffs = poly.all_coeffs()
    if poly.degree() != 1 or not all(c.is_Integer for c in coeffs):
        return None
    return int(coeffs[0]), int(coeffs[1])


def _at_least(lo: int) -> Node:
    """d >= lo as primitives."""
    if lo > 0:
        return S.inter(S.prim("causal"), S.neg(S.prim("local", (lo,))))
    return S.prim("causal") if lo == 0 else S.union(S.prim("causal"), S.prim("band", (0, -lo)))


def _normalised(cond: sympy.Basic) -> sympy.Basic:
    """Relations moved to one side and expanded, so `k + d >= k` reads `d >= 0`."""
    return cond.replace(lambda e: isinstance(e, sympy.core.relational.Relational),
                        lambda e: e.func(sympy.expand(e.lhs - e.rhs), 0))


def _prim_in_classes(node: Node, s: int) -> Node | None:
    p = [_constant(x) for x in node.params]
    if any(x is None for x in p):
        return None
    name = node.name
    if name in ("full", "causal"):
        return node
    if name == "local":  # 0 <= s·e < w  ⇔  0 <= e <= (w − 1) // s
        return S.prim("local", ((p[0] - 1) // s + 1,))
    if name == "band":  # −r <= s·e <= l  ⇔  −(r // s) <= e <= l // s
        return S.prim("band", (p[0] // s, p[1] // s))
    if name == "strided":
        return _strided(p[0] // math.gcd(s, p[0]))
    if name == "dilated":  # 0 <= s·e < w·d and s·e ≡ 0 (mod d)
        w, d = p
        return S.inter(S.prim("local", ((w * d - 1) // s + 1,)), _strided(d // math.gcd(s, d)))
    return None


def _strided(t: int) -> Node:
    return S.FULL if t == 1 else S.prim("strided", (t,))


def class_shape(M: int, N: int, s: int, r: int) -> tuple[int, int]:
    """(queries, keys) of residue class r mod s: keys r, r + s, … below N; queries the
    positions ≡ r among the last M (bottom-right aligned: negative positions when M > N)."""
    keys = -(-(N - r) // s)
    first_query = -(-(N - M - r) // s)
    return keys - first_query, keys
