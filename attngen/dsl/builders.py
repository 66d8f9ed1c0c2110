"""The Python builder API; text parameters and conditions are read by the DSL.

    from attngen import causal, local, sink, heads
    p = causal & (sink(128) | local(4096))

Every primitive of ir/primitives.py gets its builder here by name (a new primitive needs
no edit of this file); `where`, `heads` and `kv_heads` are written out below.
"""
from __future__ import annotations

from decimal import Decimal

import sympy

from attngen.dsl.elaborate import parse, parse_int_expr
from attngen.errors import PatternError
from attngen.ir import simplify as S
from attngen.ir.build import primitive
from attngen.ir.pattern import Pattern
from attngen.ir.primitives import PRIMITIVES


def _param(x) -> sympy.Expr:
    if isinstance(x, bool):
        raise TypeError("a pattern parameter is an integer expression, not a bool")
    if isinstance(x, float):
        return sympy.Rational(str(Decimal(repr(x))))
    if isinstance(x, str):
        return parse_int_expr(x)
    return sympy.sympify(x)


def _builder(name: str):
    def make(*args) -> Pattern:
        return Pattern(primitive(name, [_param(a) for a in args]))

    make.__name__ = name
    make.__doc__ = f"`{name}` primitive: {PRIMITIVES[name].doc}"
    return make


def _constant(name: str) -> Pattern:
    return Pattern(S.FULL) if name == "full" else Pattern(primitive(name, []))


# one builder per primitive of the registry: a Pattern for those without parameters
# (`causal`), a function for the others (`local(4096)`)
globals().update({name: _constant(name) if not spec.params else _builder(name)
                  for name, spec in PRIMITIVES.items()})


def where(cond) -> Pattern:
    """`where(cond)`: any predicate over q, k, N, M, as DSL text or a sympy boolean."""
    if isinstance(cond, str):
        return parse(f"where({cond})")
    return Pattern(S.where(cond))


def _mixture(kind: str, mapping: dict) -> Pattern:
    ranges, default = [], None
    for key, pat in mapping.items():
        if not isinstance(pat, Pattern) or pat.is_mixture:
            raise PatternError(f"{kind} entries must be plain patterns, got {pat!r}")
        if key == "*":
            default = pat.node
        elif isinstance(key, range):
            ranges.append((key.start, key.stop - 1, pat.node))
        elif isinstance(key, tuple):
            ranges.extend((h, h, pat.node) for h in key)
        else:
            ranges.append((int(key), int(key), pat.node))
    ordered = sorted((lo, hi) for lo, hi, _ in ranges)  # compared as intervals, not sets
    reach = -1
    for lo, hi in ordered:
        if lo < 0 or hi < lo:
            raise PatternError(f"{kind}: bad head range {lo}..{hi}")
        if lo <= reach:
            raise PatternError(f"head {lo} is assigned twice in {kind}")
        reach = max(reach, hi)
    return Pattern(S.heads(kind, ranges, default))


def heads(mapping: dict) -> Pattern:
    """Per query head: `heads({range(0, 4): a_shape, (4, 6): local(1024), "*": causal})`."""
    return _mixture("heads", mapping)


def kv_heads(mapping: dict) -> Pattern:
    """Per KV head: every query head of a group gets its KV head's pattern."""
    return _mixture("kv_heads", mapping)
