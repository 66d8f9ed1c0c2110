"""Building primitives with checked parameters (the Python builders, which also accept DSL
text, live above the parser in attngen.dsl.builders)."""
from __future__ import annotations

import sympy

from attngen.errors import PatternError, Span, did_you_mean
from attngen.ir import simplify as S
from attngen.ir.arith import SYMBOLS
from attngen.ir.node import Node
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
