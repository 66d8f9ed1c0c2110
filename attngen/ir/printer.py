"""sympy → pattern-language text. A table from sympy node types to how each is written."""
from __future__ import annotations

from decimal import Decimal, localcontext

import sympy

from attngen.ir.bitops import bitand, bitlen

# Binding strength of each printed form; a child binding weaker than its parent gets parens.
_OR, _AND, _NOT, _CMP, _ADD, _MUL, _NEG, _ATOM = range(8)

_REL = {
    sympy.StrictLessThan: "<", sympy.LessThan: "<=", sympy.StrictGreaterThan: ">",
    sympy.GreaterThan: ">=", sympy.Equality: "==", sympy.Unequality: "!=",
}


def _decimal(r: sympy.Rational) -> str:
    if r.q == 1:
        return str(r.p)
    den = r.q
    for f in (2, 5):
        while den % f == 0:
            den //= f
    if den != 1:
        raise ValueError(f"{r} has no finite decimal form")
    with localcontext() as ctx:
        ctx.prec = 60
        text = format(Decimal(r.p) / Decimal(r.q), "f")
    return text


def _wrap(text_prec: tuple[str, int], min_prec: int) -> str:
    text, prec = text_prec
    return f"({text})" if prec < min_prec else text


def _add(e: sympy.Add) -> tuple[str, int]:
    terms = e.as_ordered_terms()
    out = _wrap(_print(terms[0]), _ADD)
    for t in terms[1:]:
        coeff, rest = t.as_coeff_Mul()
        if coeff.is_negative:
            out += " - " + _wrap(_print(-t), _MUL)
        else:
            out += " + " + _wrap(_print(t), _MUL)
    return out, _ADD


def _mul(e: sympy.Mul) -> tuple[str, int]:
    coeff, rest = e.as_coeff_Mul()
    if coeff == -1:
        return "-" + _wrap(_print(rest), _NEG), _NEG
    if coeff.is_negative:  # -2*k, not -1*2*k
        return "-" + _wrap(_print(-e), _MUL), _NEG
    factors = e.as_ordered_factors()
    return "*".join(_wrap(_print(f), _MUL + 1) for f in factors), _MUL


def _floor(e: sympy.floor) -> tuple[str, int]:
    num, den = sympy.fraction(sympy.together(e.args[0]))
    if den.is_negative:
        num, den = -num, -den
    return f"{_wrap(_print(num), _MUL)} // {_wrap(_print(den), _MUL + 1)}", _MUL


def _call(name: str):
    return lambda e: (f"{name}({', '.join(_print(a)[0] for a in _sorted(e.args))})", _ATOM)


def _sorted(args):
    return sorted(args, key=sympy.default_sort_key)


def _joined(word: str, prec: int):
    return lambda e: (f" {word} ".join(_wrap(_print(a), prec + 1)
                                        for a in _sorted(e.args)), prec)


_TABLE = {
    sympy.Add: _add,
    sympy.Mul: _mul,
    sympy.floor: _floor,
    sympy.Mod: lambda e: (
        f"{_wrap(_print(e.args[0]), _MUL)} % {_wrap(_print(e.args[1]), _MUL + 1)}", _MUL),
    sympy.Abs: lambda e: (f"abs({_print(e.args[0])[0]})", _ATOM),
    sympy.Min: _call("min"),
    sympy.Max: _call("max"),
    sympy.And: _joined("and", _AND),
    sympy.Or: _joined("or", _OR),
    sympy.Not: lambda e: ("not " + _wrap(_print(e.args[0]), _NOT), _NOT),
}


def _print(e: sympy.Basic) -> tuple[str, int]:
    if e is sympy.true or e is sympy.false:
        raise ValueError("constant predicates are simplified away before printing")
    if e.is_Rational:
        text = _decimal(e)
        return text, (_ATOM if e >= 0 else _NEG)
    if e.is_Symbol:
        return e.name, _ATOM
    if type(e) in _REL:
        return f"{_wrap(_print(e.lhs), _ADD)} {_REL[type(e)]} {_wrap(_print(e.rhs), _ADD)}", _CMP
    for kind, rule in _TABLE.items():
        if isinstance(e, kind):
            return rule(e)
    if isinstance(e, (bitand, bitlen, sympy.Pow, sympy.Piecewise)):
        raise ValueError(f"{type(e).__name__} is internal to a primitive and has no text form")
    raise ValueError(f"cannot print {type(e).__name__}: {e}")


def to_text(e: sympy.Basic) -> str:
    """Text of an integer expression or a predicate that parses back to the same sympy tree."""
    return _print(sympy.sympify(e))[0]
