"""Smart constructors: the only way nodes are made, so every node is canonical.

Rules (each one is a set identity, so meaning never changes):
flatten nested | and &; drop duplicates; x & full = x; x | full = full; x & ~full = ~full;
x | ~full = x; ~~x = x; x & ~x = ~full; x | ~x = full; a - b = a & ~b; and subsumption
(x & y = x and x | y = y when x ⊆ y is provable, e.g. causal & local(w) = local(w)).
Operands are sorted by their canonical text, so the order a user wrote them in does not
change the node, its text or its hash.
"""
from __future__ import annotations

import sympy

from attngen.ir.node import HeadRange, Node, intern
from attngen.ir.primitives import PRIMITIVES


def prim(name: str, params: tuple = ()) -> Node:
    return intern(Node("prim", name=name, params=tuple(sympy.sympify(p) for p in params)))


FULL = prim("full")
EMPTY = intern(Node("empty"))


def where(cond: sympy.Basic) -> Node:
    if cond is sympy.true:
        return FULL
    if cond is sympy.false:
        return EMPTY
    return intern(Node("where", cond=cond))


def neg(a: Node) -> Node:
    if a.op == "not":
        return a.children[0]
    if a is FULL:
        return EMPTY
    if a is EMPTY:
        return FULL
    return intern(Node("not", (a,)))


def _proved_le(x: sympy.Expr, y: sympy.Expr) -> bool:
    diff = sympy.sympify(y - x)
    if diff.is_Number:
        return bool(diff >= 0)
    return bool(diff.is_nonnegative)


def subset(a: Node, b: Node) -> bool:
    """True only when a ⊆ b is provable for every N and M (False means unknown)."""
    if a is b or a is EMPTY or b is FULL:
        return True
    if a.op == "or":
        return all(subset(c, b) for c in a.children)
    if b.op == "and":
        return all(subset(a, c) for c in b.children)
    if a.op == "and" and any(subset(c, b) for c in a.children):
        return True
    if b.op == "or" and any(subset(a, c) for c in b.children):
        return True
    if a.op != "prim" or b.op != "prim":
        return False
    return _box_within(PRIMITIVES[a.name].hull_of(*a.params),
                       PRIMITIVES[b.name].boxes(*b.params))


def _box_within(box: dict | None, boxes: list[dict] | None) -> bool:
    """Whether `box` provably lies inside the one box of `boxes` (ir/primitives.py)."""
    if box is None or boxes is None or len(boxes) != 1:
        return False
    for bound, limit in boxes[0].items():
        if bound not in box:
            return False
        lower, upper = (limit, box[bound]) if bound.endswith("lo") else (box[bound], limit)
        if not _proved_le(lower, upper):
            return False
    return True


def _operands(op: str, items) -> list[Node]:
    flat: list[Node] = []
    for x in items:
        flat.extend(x.children if x.op == op else (x,))
    unique = {x.text: x for x in flat}
    return [unique[t] for t in sorted(unique)]


MAX_SUBSUMPTION = 256  # operands compared pairwise; a longer flat union stays as written


def _drop_subsumed(items: list[Node], keep_smaller: bool) -> list[Node]:
    if len(items) > MAX_SUBSUMPTION:  # quadratic: thousands of terms would take minutes
        return items
    kept = []
    for i, x in enumerate(items):
        others = items[:i] + items[i + 1:]
        if keep_smaller and any(subset(y, x) and not (subset(x, y) and i < items.index(y))
                                for y in others):
            continue
        if not keep_smaller and any(subset(x, y) and not (subset(y, x) and i < items.index(y))
                                    for y in others):
            continue
        kept.append(x)
    return kept


def _has_complement(xs: list[Node]) -> bool:
    texts = {x.text for x in xs}
    return any(neg(x).text in texts for x in xs)


def union(*items: Node) -> Node:
    xs = [x for x in _operands("or", items) if x is not EMPTY]
    if any(x is FULL for x in xs) or _has_complement(xs):
        return FULL
    xs = _drop_subsumed(xs, keep_smaller=False)
    if not xs:
        return EMPTY
    return xs[0] if len(xs) == 1 else intern(Node("or", tuple(xs)))


def inter(*items: Node) -> Node:
    xs = [x for x in _operands("and", items) if x is not FULL]
    if any(x is EMPTY for x in xs) or _has_complement(xs):
        return EMPTY
    xs = _drop_subsumed(xs, keep_smaller=True)
    if not xs:
        return FULL
    return xs[0] if len(xs) == 1 else intern(Node("and", tuple(xs)))


def diff(a: Node, b: Node) -> Node:
    return inter(a, neg(b))


def heads(kind: str, ranges: list[tuple[int, int, Node]], default: Node | None) -> Node:
    """A per-head mixture; `ranges` are inclusive (lo, hi, pattern), `default` covers the rest."""
    ranges = sorted((r for r in ranges if r[2] is not default), key=lambda r: r[0])
    if not ranges:
        if default is None:
            raise ValueError("a heads mixture needs at least one entry")
        return default
    children = sorted({r[2].text: r[2] for r in ranges} | (
        {default.text: default} if default is not None else {}), key=lambda t: t)
    nodes = {t: i for i, t in enumerate(children)}
    child_nodes = {r[2].text: r[2] for r in ranges}
    if default is not None:
        child_nodes[default.text] = default
    merged: list[list] = []
    for lo, hi, node in ranges:
        if merged and merged[-1][2] is node and merged[-1][1] + 1 == lo:
            merged[-1][1] = hi
        else:
            merged.append([lo, hi, node])
    return intern(Node(
        "heads",
        tuple(child_nodes[t] for t in children),
        name=kind,
        ranges=tuple(HeadRange(lo, hi, nodes[n.text]) for lo, hi, n in merged),
        default=nodes[default.text] if default is not None else -1,
    ))


def bind(node: Node, env: dict) -> Node:
    """`node` with symbols replaced by values (N and M by the lengths of one call), rebuilt
    through the constructors above so the result is canonical: `causal & local(N // 4)`
    with N = 1000 becomes `local(250)`."""
    memo: dict[Node, Node] = {}

    def go(n: Node) -> Node:
        if n not in memo:
            if n.op == "prim":
                memo[n] = prim(n.name, tuple(p.xreplace(env) for p in n.params))
            elif n.op == "where":
                memo[n] = where(n.cond.xreplace(env))
            elif n.op == "not":
                memo[n] = neg(go(n.children[0]))
            elif n.op in ("or", "and"):
                memo[n] = (union if n.op == "or" else inter)(*[go(c) for c in n.children])
            elif n.op == "heads":
                memo[n] = heads(n.name, [(r.lo, r.hi, go(n.children[r.child]))
                                         for r in n.ranges],
                                go(n.children[n.default]) if n.default >= 0 else None)
            else:
                memo[n] = n
        return memo[n]

    return go(node)
