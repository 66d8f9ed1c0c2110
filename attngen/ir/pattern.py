"""`Pattern`: the user-facing handle on an IR node, with the source spans it came from."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import sympy
import torch

from attngen.errors import PatternError
from attngen.ir import simplify as S
from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.arith import evaluate, evaluate_int, k, q
from attngen.ir.node import Node, walk
from attngen.ir.primitives import PRIMITIVES, doc


@dataclass(frozen=True, eq=False)
class Pattern:
    """A sparse-attention pattern. Equal patterns have equal canonical text and hash."""

    node: Node
    spans: dict = field(default_factory=dict, compare=False, repr=False)  # Node → Span

    # -- identity ----------------------------------------------------------------------
    def __str__(self) -> str:
        return self.node.text

    def __repr__(self) -> str:
        return f"Pattern({self.node.text!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Pattern) and self.node is other.node

    def __hash__(self) -> int:
        return hash(self.node)

    @property
    def key(self) -> str:
        """Stable structural hash: sha256 of the canonical text."""
        return self.node.key

    @property
    def is_dynamic(self) -> bool:
        return self.node.is_dynamic

    @property
    def is_mixture(self) -> bool:
        return self.node.op == "heads"

    # -- the algebra (the Python builder) -------------------------------------------------
    def _join(self, other: Pattern, node: Node) -> Pattern:
        if self.is_mixture or _as_pattern(other).is_mixture:
            raise PatternError("`heads { … }` may only appear at the top of a pattern")
        return Pattern(node, {**_as_pattern(other).spans, **self.spans})

    def __or__(self, other):
        return self._join(other, S.union(self.node, _as_pattern(other).node))

    def __and__(self, other):
        return self._join(other, S.inter(self.node, _as_pattern(other).node))

    def __sub__(self, other):
        return self._join(other, S.diff(self.node, _as_pattern(other).node))

    def __invert__(self):
        return self._join(self, S.neg(self.node))

    # -- structure ---------------------------------------------------------------------
    def dag(self) -> nx.DiGraph:
        """The expression DAG: one vertex per distinct subterm, edges parent → child."""
        g = nx.DiGraph()
        for n in walk(self.node):
            g.add_node(n, op=n.op, text=n.text)
            for c in n.children:
                g.add_edge(n, c)
        return g

    def head_nodes(self, heads: int, kv_heads: int | None = None) -> list[Node]:
        """The pattern of every query head, checking head indices against `heads`."""
        check_sizes(heads=heads)
        n = self.node
        if n.op != "heads":
            return [n] * heads
        kv_heads = heads if kv_heads is None else kv_heads
        if heads % kv_heads:
            raise PatternError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
        count = heads if n.name == "heads" else kv_heads
        assigned: list[Node | None] = [None] * count
        for r in n.ranges:
            if r.hi >= count:
                raise PatternError(
                    f"head index {r.hi} is out of range: the layer has {count} "
                    f"{'query' if n.name == 'heads' else 'kv'} heads",
                    self.spans.get(("head", r.hi)))
            for h in range(r.lo, r.hi + 1):
                assigned[h] = n.children[r.child]
        for h in range(count):
            if assigned[h] is None:
                if n.default < 0:
                    raise PatternError(f"head {h} has no pattern: add a `*: …` entry",
                                       self.spans.get(n))
                assigned[h] = n.children[n.default]
        if n.name == "heads":
            return assigned
        group = heads // kv_heads
        return [assigned[h // group] for h in range(heads)]

    def check(self, M: int, N: int) -> None:
        """Raise PatternError if a parameter evaluates below its minimum at these lengths."""
        env = {N_SYM: N, M_SYM: M}
        for n in walk(self.node):
            if n.op != "prim":
                continue
            spec = PRIMITIVES[n.name]
            names = spec.params if not spec.variadic else spec.params * len(n.params)
            for pname, value in zip(names, n.params):
                if pname not in spec.minimum or not value.free_symbols:
                    continue
                try:
                    v = int(evaluate_int(value, env))
                except PatternError:
                    raise PatternError(f"{n.name}: parameter {pname} = {sympy.sstr(value)} "
                                       f"divides by zero at N={N}, M={M}",
                                       self.spans.get(n)) from None
                if v < spec.minimum[pname]:
                    raise PatternError(
                        f"{n.name}: parameter {pname} = {sympy.sstr(value)} evaluates to {v} "
                        f"at N={N}, M={M}; it must be at least {spec.minimum[pname]}",
                        self.spans.get(n))

    # -- evaluation --------------------------------------------------------------------
    def mask(self, M: int, N: int | None = None, heads: int = 1, kv_heads: int | None = None,
             doc_ids=None) -> torch.Tensor:
        """Dense boolean mask [heads, M, N] (tests and pictures at small sizes only)."""
        N = M if N is None else N
        if self.is_dynamic:
            raise PatternError(f"`{self}` is input-dependent: its mask exists only at run time",
                               self.spans.get(self.node))
        check_sizes(M, N, heads, at_least=0)
        from attngen.env import max_mask_elements  # every limit is read in one place

        if heads * M * N > max_mask_elements():
            raise ValueError(f"a dense mask of {heads}x{M}x{N} elements is larger than the limit "
                             f"of {max_mask_elements()} (raise it with "
                             "$ATTNGEN_MAX_MASK_ELEMENTS; layouts need no dense mask)")
        self.check(M, N)
        rows = np.arange(M, dtype=np.int64)[:, None] + (N - M)
        cols = np.arange(N, dtype=np.int64)[None, :]
        out = np.zeros((heads, M, N), dtype=bool)
        cache: dict[Node, np.ndarray] = {}
        for h, node in enumerate(self.head_nodes(heads, kv_heads)):
            if node not in cache:
                cache[node] = evaluate_node(node, rows, cols, M, N, doc_ids)
            out[h] = cache[node]
        return torch.from_numpy(out)

    def density(self, M: int, N: int | None = None, heads: int = 1,
                kv_heads: int | None = None, block: int | tuple[int, int] = 128,
                doc_ids=None) -> float:
        """Allowed pairs ÷ causal pairs, counted from the block layout (not the mask)."""
        if _layout is None:  # nothing has loaded the layout stage yet: load it by name
            importlib.import_module(LAYOUT_STAGE)
        lay = _layout(self, M, N, block=block, heads=heads, kv_heads=kv_heads, doc_ids=doc_ids)
        return lay.density()


# The block layout belongs to a later stage (lower) that imports this module, so it hands
# its `layout` in when it loads (docs/design.md, "Pipeline"); `import attngen` loads its
# names lazily, so the first density() loads that stage if nothing else has.
LAYOUT_STAGE = "attngen.lower.layout"
_layout: Callable[..., Any] | None = None


def set_layout(layout: Callable[..., Any]) -> None:
    """Called by attngen.lower.layout: the function `Pattern.density` counts from."""
    global _layout
    _layout = layout


def check_sizes(M: int | None = None, N: int | None = None, heads: int | None = None,
                at_least: int = 1) -> None:
    """Refuse sizes that are not integers or would make attngen build more than its limits
    allow (checked before anything is allocated; each limit names its variable)."""
    from attngen.env import max_heads, max_length  # every limit is read in one place

    for what, v, limit, var in (("M", M, max_length(), "ATTNGEN_MAX_LENGTH"),
                                ("N", N, max_length(), "ATTNGEN_MAX_LENGTH"),
                                ("heads", heads, max_heads(), "ATTNGEN_MAX_HEADS")):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise TypeError(f"{what} must be an int, got {type(v).__name__}")
        if v < (at_least if what != "heads" else 1):
            raise ValueError(f"{what} must be at least {at_least if what != 'heads' else 1}, "
                             f"got {v}")
        if v > limit:
            raise ValueError(f"{what} = {v} is larger than the limit of {limit} "
                             f"(raise it with ${var})")


def evaluate_node(node: Node, rows: np.ndarray, cols: np.ndarray, M: int, N: int,
                  doc_ids=None) -> np.ndarray:
    """The predicate of one head's node on a grid of absolute positions (broadcasting)."""
    env = {q: rows, k: cols, N_SYM: N, M_SYM: M}
    if doc_ids is not None:
        if np.min(rows) < 0:
            raise PatternError("document masking needs M <= N (every query has a position)")
        env[doc] = np.asarray(doc_ids.cpu() if isinstance(doc_ids, torch.Tensor) else doc_ids)
    memo: dict[Node, np.ndarray] = {}
    for n in walk(node):
        if n.op == "or":
            v = np.logical_or.reduce([memo[c] for c in n.children])
        elif n.op == "and":
            v = np.logical_and.reduce([memo[c] for c in n.children])
        elif n.op == "not":
            v = ~memo[n.children[0]]
        elif n.op == "prim" and n.name == "document" and doc not in env:
            raise PatternError("document needs doc_ids: one int per key position")
        else:
            try:
                v = evaluate(n.predicate, env)
            except PatternError:
                raise PatternError(f"division by zero while evaluating `{n.text}`: a divisor "
                                   "is 0 at some position") from None
        memo[n] = np.broadcast_to(v, np.broadcast_shapes(rows.shape, cols.shape))
    return memo[node]


def _as_pattern(x) -> Pattern:
    if isinstance(x, Pattern):
        return x
    raise TypeError(f"expected a Pattern, got {type(x).__name__}")

