"""Input-dependent terms (DESIGN §5): a head's pattern split into the static union the
other strategies compute and the one dynamic term whose indices are estimated at run time.

    sink(64) | vertical_slash(1000, 6096)
      static:  sink(64)                              (ranges)
      dynamic: vertical_slash(1000, 6096), minus sink(64) (masked inside its blocks)

A dynamic disjunct is a dynamic primitive, optionally intersected with static terms
(`local(8192) & block_topk(8, 64)`); its kernel loops visit the estimated blocks and
columns and mask each element by `within & ~static` so no pair is counted twice.
"""
from __future__ import annotations

from dataclasses import dataclass

from attngen.errors import PatternError
from attngen.ir import simplify as S
from attngen.ir.node import Node, walk
from attngen.ir.primitives import PRIMITIVES

BLOCK_KINDS = ("block_topk", "block_cover")  # picked key blocks of g tokens per query block


@dataclass(frozen=True)
class DynamicTerm:
    """The dynamic part of one head pattern."""

    node: Node  # the disjunct, as written (e.g. `local(8192) & block_topk(8, 64)`)
    prim: Node  # its dynamic primitive
    within: Node | None  # the static conjuncts beside it, None when there are none
    static: Node | None  # the head's static union (computed by other parts), None if empty

    @property
    def kind(self) -> str:
        return self.prim.name

    @property
    def mask(self) -> Node | None:
        """What its loops must still test besides the estimated indices (None: nothing)."""
        terms = [t for t in (self.within,) if t is not None]
        if self.static is not None:
            terms.append(S.neg(self.static))
        return S.inter(*terms) if terms else None


def _is_dynamic_prim(n: Node) -> bool:
    return n.op == "prim" and PRIMITIVES[n.name].dynamic


def split(node: Node, disjuncts: list[Node]) -> tuple[Node | None, DynamicTerm]:
    """(static union or None, the dynamic term) of a dynamic head pattern, given its
    disjuncts; a PatternError says why a pattern has no kernel."""
    dynamic = [d for d in disjuncts if d.is_dynamic]
    if len(dynamic) > 1:
        raise PatternError(
            f"`{node.text}` unites {len(dynamic)} input-dependent terms "
            f"({', '.join(f'`{d.text}`' for d in dynamic)}); a head takes at most one",
            hint="give heads different dynamic patterns with `heads { … }`")
    term = dynamic[0]
    if term.op == "prim":
        prim, within = term, None
    elif term.op == "and" and sum(c.is_dynamic for c in term.children) == 1:
        prim = next(c for c in term.children if c.is_dynamic)
        rest = [c for c in term.children if c is not prim]
        within = S.inter(*rest)
    else:
        prim, within = None, None
    if prim is None or not _is_dynamic_prim(prim):
        inner = next(n for n in walk(term) if _is_dynamic_prim(n))
        raise PatternError(
            f"`{inner.text}` inside `{term.text}`: a dynamic term can be united with static "
            "terms or intersected with them, not negated or combined with another dynamic "
            "term")
    others = [d for d in disjuncts if not d.is_dynamic]
    static = S.union(*others) if others else None
    return static, DynamicTerm(term, prim, within, static)
