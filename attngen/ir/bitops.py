"""The bitwise functions of the predicate language, apart from arith so that the printer
(which arith uses for messages) can name them."""
from __future__ import annotations

import sympy


class bitand(sympy.Function):
    """Bitwise and of two integers (PowerAttention's `d & (d - 1) == 0`)."""

    is_integer = True

    @classmethod
    def eval(cls, a, b):
        if a.is_Integer and b.is_Integer:
            return sympy.Integer(int(a) & int(b))


class bitlen(sympy.Function):
    """Python's int.bit_length of |x| (Radial Attention's frame-distance exponent)."""

    is_integer = True
    is_nonnegative = True

    @classmethod
    def eval(cls, x):
        if x.is_Integer:
            return sympy.Integer(abs(int(x)).bit_length())
