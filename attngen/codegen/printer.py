"""sympy → Triton (or torch) expression text. A table from sympy node types to templates.

Integer `//` and `%` print as the `_floordiv` / `_mod` helpers every kernel defines:
Triton's own `//` truncates toward zero on the GPU, while the interpreter follows NumPy;
the helpers give floor semantics under both. Comparisons with rational coefficients are
cleared of denominators first, so kernels only ever do integer arithmetic, except for
Radial Attention's power-of-two scale, which is exact in fp32.
"""
from __future__ import annotations

import sympy

from attngen.ir.arith import bitand, bitlen

_REL = {sympy.StrictLessThan: "<", sympy.LessThan: "<=", sympy.StrictGreaterThan: ">",
        sympy.GreaterThan: ">=", sympy.Equality: "==", sympy.Unequality: "!="}


class Printer:
    """Prints expressions for one target: `lib` is "tl" (Triton) or "torch" (Flex mask_mod)."""

    def __init__(self, names: dict[sympy.Symbol, str], lib: str = "tl",
                 functions: dict | None = None):
        self.names = names
        self.lib = lib
        self.functions = functions or {}  # undefined sympy function → format string

    def __call__(self, e: sympy.Basic) -> str:
        return self.p(_integer_mods(sympy.sympify(e)))

    # -- helpers for the two targets ----------------------------------------------------
    def _min(self, a, b):
        return f"{self.lib}.minimum({a}, {b})"

    def _max(self, a, b):
        return f"{self.lib}.maximum({a}, {b})"

    def _where(self, c, a, b):
        return f"{self.lib}.where({c}, {a}, {b})"

    def p(self, e: sympy.Basic) -> str:
        if e is sympy.true:
            return "True"
        if e is sympy.false:
            return "False"
        if e.is_Integer:
            return str(int(e))
        if e is sympy.oo or e is -sympy.oo:
            raise ValueError("unbounded value reached the printer")
        if e.is_Rational:
            return f"({e.p} / {e.q})"
        if e.is_Symbol:
            return self.names[e]
        for kind, rule in _RULES:
            if isinstance(e, kind):
                return rule(self, e)
        if isinstance(e, sympy.core.function.AppliedUndef) and e.func in self.functions:
            return self.functions[e.func].format(*[self.p(a) for a in e.args])
        raise ValueError(f"no kernel form for {type(e).__name__}: {e}")


def _integer_mods(e: sympy.Basic) -> sympy.Basic:
    """Mod(a/d, b) → Mod(a, b·d)/d, so that every modulus runs on integers."""
    def rewrite(m):
        (na, da), (nb, db) = (sympy.fraction(sympy.together(x)) for x in m.args)
        if da == 1 and db == 1:
            return m
        return sympy.Mod(na * db, nb * da, evaluate=False) / (da * db)

    return e.replace(lambda x: isinstance(x, sympy.Mod), rewrite)


def _add(pr: Printer, e: sympy.Add) -> str:
    out = ""
    for t in e.as_ordered_terms():
        coeff, rest = t.as_coeff_Mul()
        if out and coeff.is_Number and coeff < 0:
            out += " - " + pr.p(-t)
        else:
            out += (" + " if out else "") + pr.p(t)
    return f"({out})"


def _mul(pr: Printer, e: sympy.Mul) -> str:
    coeff, rest = e.as_coeff_Mul()
    if coeff.is_Rational and not coeff.is_Integer and not rest.atoms(sympy.Pow):
        raise ValueError(f"rational coefficient outside floor/comparison: {e}")
    if coeff == -1:
        return f"(-{pr.p(rest)})"
    return "(" + " * ".join(pr.p(a) for a in e.as_ordered_factors()) + ")"


def _integral_fraction(e: sympy.Expr):
    """(numerator, positive integer denominator) when e is a rational-coefficient
    polynomial of integer terms; None when it involves a fractional power."""
    num, den = sympy.fraction(sympy.together(e))
    if den.is_integer and den.is_positive:
        return num, den
    if den.is_integer and den.is_negative:
        return -num, -den
    return None


def _floor(pr: Printer, e: sympy.floor) -> str:
    num, den = sympy.fraction(sympy.together(e.args[0]))
    if not den.is_integer or num.atoms(sympy.Pow):
        return f"_ffloor({pr.p(e.args[0])})"  # radial's power-of-two scale, exact in fp32
    # _floordiv is exact for a divisor of either sign
    return pr.p(num) if den == 1 else f"_floordiv({pr.p(num)}, {pr.p(den)})"


def _ceiling(pr: Printer, e: sympy.ceiling) -> str:
    return pr.p(-sympy.floor(-e.args[0]))


def _mod(pr: Printer, e: sympy.Mod) -> str:
    return f"_mod({pr.p(e.args[0])}, {pr.p(e.args[1])})"


def _minmax(pr: Printer, e) -> str:
    fold = pr._min if isinstance(e, sympy.Min) else pr._max
    out = pr.p(e.args[0])
    for a in e.args[1:]:
        out = fold(out, pr.p(a))
    return out


def _rel(pr: Printer, e) -> str:
    frac = _integral_fraction(e.lhs - e.rhs)
    if frac is None or frac[0].atoms(sympy.Pow):
        return f"({pr.p(e.lhs)} {_REL[type(e)]} {pr.p(e.rhs)})"
    return f"({pr.p(sympy.expand(frac[0]))} {_REL[type(e)]} 0)"


def _piecewise(pr: Printer, e: sympy.Piecewise) -> str:
    out = pr.p(e.args[-1][0])
    for value, cond in reversed(e.args[:-1]):
        out = pr._where(pr.p(cond), pr.p(value), out)
    return out


def _pow(pr: Printer, e: sympy.Pow) -> str:
    base, exp = e.args
    if base == 2:
        cast = ".to(tl.float32)" if pr.lib == "tl" else ".float()"
        return f"{pr.lib}.exp2(({pr.p(exp)}){cast})"
    if exp.is_Integer and exp > 0:
        return "(" + " * ".join([pr.p(base)] * int(exp)) + ")"
    raise ValueError(f"no kernel form for the power {e}")


_RULES = [
    (sympy.Add, _add),
    (sympy.Mul, _mul),
    (sympy.floor, _floor),
    (sympy.ceiling, _ceiling),
    (sympy.Mod, _mod),
    (sympy.Abs, lambda pr, e: f"{pr.lib}.abs({pr.p(e.args[0])})"),
    ((sympy.Min, sympy.Max), _minmax),
    (sympy.Piecewise, _piecewise),
    (sympy.Pow, _pow),
    (bitand, lambda pr, e: f"({pr.p(e.args[0])} & {pr.p(e.args[1])})"),
    (bitlen, lambda pr, e: f"_bitlen({pr.p(e.args[0])})"),
    (sympy.And, lambda pr, e: "(" + " & ".join(pr.p(a) for a in e.args) + ")"),
    (sympy.Or, lambda pr, e: "(" + " | ".join(pr.p(a) for a in e.args) + ")"),
    (sympy.Not, lambda pr, e: f"(~{pr.p(e.args[0])})" if pr.lib == "torch"
     else f"({pr.p(e.args[0])} == 0)"),
    (sympy.core.relational.Relational, _rel),
]
