"""The primitive patterns: their parameters, defaults, constraints, sympy predicates and
boxes. A primitive's meaning lives here and only here: the language, the builders, the
simplifier's containment proofs and the block lowering all read it from PRIMITIVES.

Each predicate is `allowed(q, k)` of DESIGN §3 over absolute query position q and key k.
A box is a dict of bounds on d = q − k, k and q (keys dlo, dhi, klo, khi, qlo, qhi; a
missing key is unbounded): the set  dlo <= q − k <= dhi, klo <= k <= khi, qlo <= q <= qhi.
`atoms` gives the boxes whose union is exactly the primitive (lower/atoms.py turns them
into block ranges), `hull` one box that holds it (ir/simplify.py proves a ⊆ b when a's
hull lies in b's only atom). tests/test_primitives.py checks both against the predicate.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import sympy

from attngen.ir.arith import bitand, bitlen, floordiv, k, q

doc = sympy.Function("doc")  # runtime document id of a position: document masking


@dataclass(frozen=True)
class PrimSpec:
    name: str
    params: tuple[str, ...]
    defaults: dict  # parameter name → default value
    minimum: dict   # parameter name → smallest allowed value
    predicate: Callable[..., sympy.Basic] | None  # None for dynamic primitives
    variadic: bool = False
    doc: str = ""
    fractional: tuple[str, ...] = ()  # parameters not floored to integers
    atoms: Callable[..., list[dict] | None] | None = None  # exact boxes (module doc)
    hull: Callable[..., dict] | None = None  # a box holding it (default: its one atom)
    # allowed(q + c, k + c) = allowed(q, k) for every shift c when the parameters are
    # constants: it depends on q − k alone (document: on ids that move with the positions)
    shift_invariant: bool = False

    def boxes(self, *params) -> list[dict] | None:
        """The exact boxes of the primitive with these parameters, or None."""
        return None if self.atoms is None else self.atoms(*params)

    def hull_of(self, *params) -> dict | None:
        """A box holding the primitive with these parameters, or None (unbounded)."""
        if self.hull is not None:
            return self.hull(*params)
        boxes = self.boxes(*params)
        return boxes[0] if boxes is not None and len(boxes) == 1 else None

    @property
    def dynamic(self) -> bool:
        return self.predicate is None

    @property
    def required(self) -> int:
        return sum(1 for p in self.params if p not in self.defaults)


def _runs(values) -> list[tuple[int, int]] | None:
    """Sorted maximal runs of consecutive integers in `values`; None unless every value is
    a plain (Python or NumPy) integer, as on the numeric side of lowering (a symbolic plan
    keeps rows and columns as predicates)."""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, sympy.Basic)
               for v in values):
        return None
    out: list[list[int]] = []
    for v in sorted({int(v) for v in values}):
        if out and out[-1][1] + 1 == v:
            out[-1][1] = v
        else:
            out.append([v, v])
    return [(a, b) for a, b in out]


def _on_runs(lo: str, hi: str):
    def boxes(*values):
        runs = _runs(values)
        return None if runs is None else [{lo: a, hi: b} for a, b in runs]
    return boxes


def _any_eq(sym, values):
    return sympy.Or(*[sympy.Eq(sym, v) for v in values])


def _radial(f, b, decay):
    t = sympy.Abs(floordiv(q, f) - floordiv(k, f))
    s = sympy.Integer(2) ** (bitlen(f) - bitlen(t))
    width = sympy.Piecewise((f, t <= 1), (sympy.Max(b, s * decay), True))
    band = sympy.Abs(sympy.Mod(q, f) - sympy.Mod(k, f)) <= width
    # floor(b/s) >= 1 whenever s < b; the Max only keeps the unused branch defined.
    keep_frame = sympy.Or(s >= b, sympy.Eq(sympy.Mod(t, sympy.Max(1, floordiv(b, s))), 0))
    return sympy.And(band, keep_frame)


def _power(g):
    t = sympy.Abs(floordiv(q, g) - floordiv(k, g))
    return sympy.Eq(bitand(t, t - 1), 0)


_SPECS = [
    PrimSpec("full", (), {}, {}, lambda: sympy.true, doc="every key", atoms=lambda: [{}],
             shift_invariant=True),
    PrimSpec("causal", (), {}, {}, lambda: k <= q, doc="k <= q",
             atoms=lambda: [{"dlo": 0}],
             shift_invariant=True),
    PrimSpec("local", ("w",), {}, {"w": 1}, lambda w: sympy.And(q - w < k, k <= q),
             doc="q - w < k <= q: w keys ending at the diagonal",
             atoms=lambda w: [{"dlo": 0, "dhi": w - 1}],
             shift_invariant=True),
    PrimSpec("band", ("l", "r"), {}, {"l": 0, "r": 0},
             lambda l, r: sympy.And(q - l <= k, k <= q + r), doc="q - l <= k <= q + r",
             atoms=lambda l, r: [{"dlo": -r, "dhi": l}],
             shift_invariant=True),
    PrimSpec("sink", ("n",), {}, {"n": 1}, lambda n: k < n, doc="k < n",
             atoms=lambda n: [{"khi": n - 1}]),
    PrimSpec("columns", ("c",), {}, {"c": 0}, lambda *c: _any_eq(k, c), variadic=True,
             doc="k in {c, ...}", atoms=_on_runs("klo", "khi")),
    PrimSpec("rows", ("r",), {}, {"r": 0}, lambda *r: _any_eq(q, r), variadic=True,
             doc="q in {r, ...}", atoms=_on_runs("qlo", "qhi")),
    PrimSpec("strided", ("s",), {}, {"s": 1}, lambda s: sympy.Eq(sympy.Mod(q - k, s), 0),
             doc="(q - k) mod s == 0",
             shift_invariant=True),
    PrimSpec("fixed", ("l", "c"), {}, {"l": 1, "c": 0},
             lambda l, c: sympy.Or(sympy.Eq(floordiv(k, l), floordiv(q, l)),
                                   sympy.Mod(k, l) >= l - c),
             doc="k // l == q // l or k mod l >= l - c"),
    PrimSpec("dilated", ("w", "d"), {}, {"w": 1, "d": 1},
             lambda w, d: sympy.And(q - k >= 0, q - k < w * d, sympy.Eq(sympy.Mod(q - k, d), 0)),
             doc="0 <= q - k < w*d and (q - k) mod d == 0",
             hull=lambda w, d: {"dlo": 0, "dhi": w * d - 1},
             shift_invariant=True),
    PrimSpec("chunked", ("c",), {}, {"c": 1},
             lambda c: sympy.Eq(floordiv(q, c), floordiv(k, c)),
             doc="q // c == k // c: Llama 4's chunked attention (combine with causal)"),
    PrimSpec("power", ("g",), {}, {"g": 1}, _power,
             doc="|q//g - k//g| is 0 or a power of two"),
    PrimSpec("radial", ("f", "b", "decay"), {"b": 128, "decay": 1}, {"f": 1, "b": 1},
             _radial, doc="Radial Attention token rule, frames of f tokens",
             fractional=("decay",)),
    PrimSpec("document", (), {}, {}, lambda: sympy.Eq(doc(q), doc(k)),
             doc="doc_ids[q] == doc_ids[k] (ids given at run time)",
             shift_invariant=True),
    PrimSpec("vertical_slash", ("v", "s"), {}, {"v": 1, "s": 1}, None,
             doc="dynamic: MInference vertical and slash lines"),
    PrimSpec("block_topk", ("t", "g"), {"g": 64}, {"t": 1, "g": 1}, None,
             doc="dynamic: top-t key blocks of g tokens per query block"),
    PrimSpec("block_cover", ("gamma", "g"), {"g": 64}, {"g": 1}, None,
             doc="dynamic: fewest key blocks reaching attention mass gamma (FlexPrefill)",
             fractional=("gamma",)),
]

PRIMITIVES: dict[str, PrimSpec] = {s.name: s for s in _SPECS}
