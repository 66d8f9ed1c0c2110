"""Building primitives with checked parameters, and the Python builder API.

    from attngen import causal, local, sink, heads
    p = causal & (sink(128) | local(4096))
"""
from __future__ import annotations

from decimal import Decimal

import sympy

from attngen.errors import PatternError, Span, did_you_mean
from attngen.ir import simplify as S
from attngen.ir.arith import SYMBOLS
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.ir.primitives import PRIMITIVES

# Kernels compute positions and parameters in int32: with constants and positions below
# 2^30, sums such as q + r (band) stay below 2^31.
MAX_CONSTANT = 1 << 30


def primitive(name: str, args: list, span: Span | None = None,
              arg_spans: list[Span | None] | None = None) -> Node:
    """A primitive node; arity and constant parameters are checked here."""
    spec = PRIMITIVES.get(name)
    if spec is None:
        raise PatternError(f"unknown primitive `{name}`", span,
                           did_you_mean(name, set(PRIMITIVES) | {"where"}))
    arg_spans = arg_spans or [span] * len(args)
    if spec.variadic:
        if not args:
            raise PatternError(f"{name} takes at least one argument", span)
        names = spec.params * len(args)
    else:
        if not spec.required <= len(args) <= len(spec.params):
            want = (str(len(spec.params)) if spec.required == len(spec.params)
                    else f"{spec.required} to {len(spec.params)}")
            usage = f"{name}({', '.join(spec.params)})" if spec.params else name
            raise PatternError(f"{name} takes {want} argument{'s' * (want != '1')}, "
                               f"got {len(args)}", span, f"usage: {usage}")
        names = spec.params
        args = list(args) + [spec.defaults[p] for p in spec.params[len(args):]]
    values = []
    for pname, value, vspan in zip(names, args, arg_spans + [span] * len(args)):
        written = sympy.sympify(value)
        value = written if pname in spec.fractional else sympy.floor(written)  # DESIGN §3.3
        if value.free_symbols - {SYMBOLS["N"], SYMBOLS["M"]}:
            raise PatternError(f"{name}: parameter {pname} may only depend on N and M", vspan)
        if any(abs(a.p) > MAX_CONSTANT or a.q > MAX_CONSTANT
               for a in written.atoms(sympy.Rational)):
            raise PatternError(f"{name}: parameter {pname} = {sympy.sstr(written)} is too large: "
                               f"constants must be at most {MAX_CONSTANT} (2^30: kernels use "
                               "int32)", vspan)
        if not value.free_symbols and pname in spec.minimum and value < spec.minimum[pname]:
            what = "window" if name in ("local", "dilated", "band") else "size"
            shown = sympy.sstr(written) + (f" (floored to {value})" if written != value else "")
            raise PatternError(f"{name}: {pname} = {shown} is not a valid {what}; "
                               f"it must be at least {spec.minimum[pname]}", vspan)
        if name == "block_cover" and pname == "gamma" and not value.free_symbols \
                and not 0 < value <= 1:
            raise PatternError(f"block_cover: gamma = {value} must lie in (0, 1]", vspan)
        values.append(value)
    if name == "dilated" and not any(v.free_symbols for v in values) \
            and values[0] * values[1] > MAX_CONSTANT:  # the kernel computes w·d
        raise PatternError(f"dilated: w·d = {values[0] * values[1]} is too large: it must be at "
                           f"most {MAX_CONSTANT} (2^30: kernels use int32)", span)
    return S.prim(name, tuple(values))


def _param(x) -> sympy.Expr:
    if isinstance(x, bool):
        raise TypeError("a pattern parameter is an integer expression, not a bool")
    if isinstance(x, float):
        return sympy.Rational(str(Decimal(repr(x))))
    if isinstance(x, str):
        from attngen.dsl.elaborate import parse_int_expr  # text parameters use the DSL

        return parse_int_expr(x)
    return sympy.sympify(x)


def _builder(name: str):
    def make(*args) -> Pattern:
        return Pattern(primitive(name, [_param(a) for a in args]))

    make.__name__ = name
    make.__doc__ = f"`{name}` primitive: {PRIMITIVES[name].doc}"
    return make


full = Pattern(S.FULL)
causal = Pattern(primitive("causal", []))
document = Pattern(primitive("document", []))
local = _builder("local")
band = _builder("band")
sink = _builder("sink")
columns = _builder("columns")
rows = _builder("rows")
strided = _builder("strided")
fixed = _builder("fixed")
dilated = _builder("dilated")
power = _builder("power")
radial = _builder("radial")
vertical_slash = _builder("vertical_slash")
block_topk = _builder("block_topk")
block_cover = _builder("block_cover")


def where(cond) -> Pattern:
    """`where(cond)`: any predicate over q, k, N, M, as DSL text or a sympy boolean."""
    if isinstance(cond, str):
        from attngen.dsl.elaborate import parse  # the condition is DSL text

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
