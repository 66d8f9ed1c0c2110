"""Hash-consed pattern nodes.

A node's identity is its canonical text (the DSL it prints as): two structurally equal
subterms anywhere, in any head, are the same Python object. Nodes are built only through
the constructors in `attngen.ir.simplify`, which keep every node in canonical form.
"""
from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from functools import cached_property

import sympy

from attngen.ir.primitives import PRIMITIVES
from attngen.ir.printer import to_text

# Printing precedence of set operators: | < - < & < ~ < atoms.
_PREC = {"or": 1, "and": 3, "not": 4}


@dataclass(frozen=True, eq=False)
class HeadRange:
    lo: int
    hi: int  # inclusive
    child: int  # index into the heads node's children


@dataclass(frozen=True, eq=False)
class Node:
    op: str  # "prim", "where", "empty", "or", "and", "not", "heads"
    children: tuple[Node, ...] = ()
    name: str = ""  # primitive name; for heads: "heads" or "kv_heads"
    params: tuple[sympy.Expr, ...] = ()
    cond: sympy.Basic | None = None  # where's predicate
    ranges: tuple[HeadRange, ...] = ()  # heads: explicit head ranges
    default: int = -1  # heads: child index of `*`, or -1
    text: str = ""

    def __hash__(self) -> int:
        return hash(self.text)

    def __eq__(self, other) -> bool:
        return self is other or (isinstance(other, Node) and self.text == other.text)

    def __repr__(self) -> str:
        return f"Node({self.text})"

    def __reduce__(self):
        # unpickled nodes are interned again: one object per canonical text, as built
        return _rebuild, (self.op, self.children, self.name, self.params, self.cond,
                          self.ranges, self.default)

    @cached_property
    def key(self) -> str:
        """Stable structural hash (sha256 of the canonical text)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @cached_property
    def predicate(self) -> sympy.Basic:
        """The elementwise predicate over q, k, N, M (static, single-head nodes only)."""
        if self.op == "prim":
            spec = PRIMITIVES[self.name]
            if spec.dynamic:
                raise ValueError(f"{self.name} is input-dependent and has no static predicate")
            return spec.predicate(*self.params)
        if self.op == "where":
            return self.cond
        if self.op == "empty":
            return sympy.false
        if self.op == "or":
            return sympy.Or(*[c.predicate for c in self.children])
        if self.op == "and":
            return sympy.And(*[c.predicate for c in self.children])
        if self.op == "not":
            return sympy.Not(self.children[0].predicate)
        raise ValueError("a heads mixture has one predicate per head")

    @property
    def is_dynamic(self) -> bool:
        return any(n.op == "prim" and PRIMITIVES[n.name].dynamic for n in walk(self))

    @property
    def prec(self) -> int:
        if self.op == "and" and self.prints_as_difference:
            return 2
        return _PREC.get(self.op, 9)

    @property
    def prints_as_difference(self) -> bool:
        kinds = {c.op == "not" for c in self.children}
        return self.op == "and" and kinds == {True, False}


def walk(node: Node):
    """Every distinct node under (and including) `node`, children before parents."""
    seen: set[int] = set()
    order: list[Node] = []

    def visit(n: Node):
        if id(n) in seen:
            return
        seen.add(id(n))
        for c in n.children:
            visit(c)
        order.append(n)

    visit(node)
    return order


_INTERNED: weakref.WeakValueDictionary[str, Node] = weakref.WeakValueDictionary()


def intern(node: Node) -> Node:
    text = render(node)
    existing = _INTERNED.get(text)
    if existing is not None:
        return existing
    object.__setattr__(node, "text", text)
    _INTERNED[text] = node
    return node


def _rebuild(op, children, name, params, cond, ranges, default) -> Node:
    return intern(Node(op, children, name, params, cond, ranges, default))


def _child_text(child: Node, parent_prec: int) -> str:
    return f"({child.text})" if child.prec <= parent_prec else child.text


def render(n: Node) -> str:
    if n.op == "prim":
        if not n.params:
            return n.name
        return f"{n.name}({', '.join(to_text(p) for p in n.params)})"
    if n.op == "where":
        return f"where({to_text(n.cond)})"
    if n.op == "empty":
        return "~full"
    if n.op == "not":
        c = n.children[0]
        return "~" + (f"({c.text})" if c.prec < _PREC["not"] else c.text)
    if n.op == "and":
        pos = [c for c in n.children if c.op != "not"]
        neg = [c for c in n.children if c.op == "not"]
        if pos and neg:  # print a & ~b as the difference a - b
            head = " & ".join(_child_text(c, 2) for c in pos)
            return head + "".join(" - " + _child_text(c.children[0], 2) for c in neg)
        return " & ".join(_child_text(c, _PREC["and"] - 1) for c in n.children)
    if n.op == "or":
        return " | ".join(_child_text(c, _PREC["or"]) for c in n.children)
    if n.op == "heads":
        groups: dict[int, list[str]] = {}
        for r in n.ranges:
            groups.setdefault(r.child, []).append(str(r.lo) if r.lo == r.hi else f"{r.lo}..{r.hi}")
        entries = [f"{', '.join(sel)}: {n.children[i].text}" for i, sel in groups.items()]
        if n.default >= 0:
            entries.append(f"*: {n.children[n.default].text}")
        return f"{n.name} {{ {'; '.join(entries)} }}"
    raise ValueError(f"unknown node op {n.op}")
