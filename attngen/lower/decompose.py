"""Disjoint decomposition: a union whose terms want different strategies is split into
parts a, b − a, … that never overlap, each computed by its own loops and merged exactly by
log-sum-exp (DESIGN §4). Today the split that pays is ranges/table ∪ permutation, e.g.
`causal & (local(1024) | strided(128))` → `local(1024)` by ranges, then
`causal & strided(128) − local(1024)` inside residue classes mod 128 (`causal − local(8)`
there: dense blocks). The planner keeps the split only when the cost model (blocks visited
at a reference shape) says it is cheaper than one table for the whole union."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from attngen.ir import simplify as S
from attngen.ir.node import Node
from attngen.lower.atoms import atoms_of, numeric
from attngen.lower.cost import permutation_cost, ranges_cost, table_cost
from attngen.lower.dynamic import DynamicTerm, split
from attngen.lower.grid import Grid
from attngen.lower.loops import range_loops
from attngen.lower.permute import in_classes, period

# Kernels are shape-generic, so the choice is made once, at this shape.
REFERENCE_GRID = Grid(8192, 8192, 128, 128)
MAX_DISJUNCTS = 16


@dataclass(frozen=True)
class Part:
    """One disjoint part of a head's pattern and the strategy that computes it.
    permutation: `classes` is the part in class coordinates mod `period` (exactly, or a
    superset when `exact` is False: then every visited block evaluates the predicate)."""

    node: Node
    strategy: str  # "ranges" | "table" | "permutation" | "dynamic"
    period: int = 1
    classes: Node | None = None
    exact: bool = True
    dynamic: DynamicTerm | None = None  # dynamic: its primitive and what its loops mask


def disjuncts(node: Node) -> list[Node]:
    """node as a union of terms, distributing & over | (up to MAX_DISJUNCTS terms)."""
    if node.op == "or":
        out = [d for c in node.children for d in disjuncts(c)]
    elif node.op == "and" and any(c.op == "or" for c in node.children):
        first = next(c for c in node.children if c.op == "or")
        rest = [c for c in node.children if c is not first]
        out = [d for alt in first.children for d in disjuncts(S.inter(alt, *rest))]
    else:
        out = [node]
    return out if len(out) <= MAX_DISJUNCTS else [node]


def single(node: Node) -> Part:
    return Part(node, "ranges" if range_loops(node) is not None else "table")


@functools.lru_cache(maxsize=512)
def decompose(node: Node) -> tuple[Part, ...]:
    """The disjoint parts a kernel computes for one head pattern, the cheapest candidate
    (ties keep the simpler one): identity-order parts (ranges, then table) come first,
    permuted parts after them."""
    if node.is_dynamic:  # the static union by its own strategies, then the dynamic term
        static, term = split(node, disjuncts(node))
        return (decompose(static) if static is not None else ()) + (
            Part(term.node, "dynamic", dynamic=term),)
    whole = (single(node),)
    if whole[0].strategy == "ranges":
        return whole
    by_period: dict[int, list[Node]] = {}
    affine: list[Node] = []
    other: list[Node] = []
    for d in disjuncts(node):
        s = period(d)
        classes = in_classes(d, s) if s else None
        if classes is not None and range_loops(classes) is not None:
            by_period.setdefault(s, []).append(d)
        elif range_loops(d) is not None:
            affine.append(d)
        else:
            other.append(d)
    if not by_period:
        # ranges ∪ table: one table visits each block once, never more than a split would
        return whole
    candidates = [whole, _split([affine + other], by_period)]
    if affine and other and range_loops(S.union(*affine)) is not None:
        candidates.append(_split([affine, other], by_period))
    candidates = [c for c in candidates if c is not None]
    costs = [sum(_weighted(part_cost(p, REFERENCE_GRID)) for p in c) for c in candidates]
    return candidates[costs.index(min(costs))]


def _weighted(cost: tuple[int, int]) -> float:
    """Blocks visited, a masked block counted 1.25× (the predicate adds about a quarter
    to a block's time on the H100 for the bundled patterns)."""
    blocks, masked = cost
    return blocks + 0.25 * masked


def _split(identity: list[list[Node]], by_period: dict[int, list[Node]]
           ) -> tuple[Part, ...] | None:
    """Parts in order, each minus everything before it: identity-order unions, then one
    permuted part per period; None when a period's terms together are no ranges term in
    class coordinates (each one is, but their union can need too many atoms)."""
    parts, covered = [], S.EMPTY
    for terms in identity:
        if terms:
            parts.append(single(S.diff(S.union(*terms), covered)))
            covered = S.union(covered, *terms)
    for s in sorted(by_period):
        term = S.union(*by_period[s])
        diff = S.diff(term, covered)
        classes = in_classes(diff, s)
        if classes is not None and range_loops(classes) is not None:
            parts.append(Part(diff, "permutation", s, classes, True))
        else:
            superset = in_classes(term, s)
            if superset is None or range_loops(superset) is None:
                return None
            parts.append(Part(diff, "permutation", s, superset, False))
        covered = S.union(covered, term)
    return tuple(parts)


def part_cost(part: Part, g: Grid, doc_ids=None) -> tuple[int, int]:
    """(blocks visited, blocks masked) of one part on grid g, for one head."""
    if part.strategy == "ranges":
        return ranges_cost(atoms_of(part.node, numeric(g.M, g.N)), g)
    if part.strategy == "permutation":
        return permutation_cost(part.classes, part.period, part.exact, g)
    return table_cost(part.node, g, doc_ids)
