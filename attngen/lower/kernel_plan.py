"""The kernel plan: the complete value codegen prints. A pattern's query heads grouped by
distinct head pattern, each group's disjoint parts (lower/decompose.py) and the kernel
loops of every ranges part and residue-class pass (lower/loops.py), in query-block order
for the forward and decode and, once a gradient is needed, transposed (kv-block order) for
the backward. Rendering reads it and never lowers anything itself."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.lower.decompose import Part, decompose
from attngen.lower.loops import RangeLoops, range_loops


def head_groups(pattern: Pattern, heads: int, kv_heads: int | None = None
                ) -> tuple[list[Node], tuple[int, ...]]:
    """The distinct head patterns in order of first use, and each query head's index among
    them: the kernel's groups without lowering anything (the cache key needs only this)."""
    index: dict[Node, int] = {}
    head_group = tuple(index.setdefault(n, len(index))
                       for n in pattern.head_nodes(heads, kv_heads))
    return list(index), head_group


@dataclass(frozen=True)
class GroupSpec:
    """One distinct head pattern and the disjoint parts the kernel computes for it."""

    index: int
    node: Node
    parts: tuple[Part, ...]
    table_slot: int  # index among groups with an identity-order table part (-1: none)

    @property
    def identity(self) -> tuple[Part, ...]:
        """The parts computed in the caller's row order (ranges, table), in one pass."""
        return tuple(p for p in self.parts if p.strategy != "permutation")

    @property
    def table(self) -> Part | None:
        return next((p for p in self.parts if p.strategy == "table"), None)

    @property
    def permuted(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.strategy == "permutation")


@dataclass(frozen=True)
class KernelSpec:
    """Everything the source depends on (besides the template and versions)."""

    pattern: Pattern
    groups: tuple[GroupSpec, ...]
    head_group: tuple[int, ...]  # query head → group index
    fused_loops: bool = False  # ranges: one loop per piece, masking decided per block
    # (loop node, transposed) → its loops: the ranges parts' nodes and the permuted parts'
    # residue classes; transposed ones only after complete(transposed=True)
    loops: tuple[tuple[tuple[Node, bool], RangeLoops], ...] = field(
        default=(), compare=False, repr=False)

    @staticmethod
    def build(pattern: Pattern, heads: int, kv_heads: int | None = None,
              fused_loops: bool = False) -> KernelSpec:
        nodes, head_group = head_groups(pattern, heads, kv_heads)
        groups, slots = [], 0
        for i, node in enumerate(nodes):
            parts = decompose(node)
            table = any(p.strategy == "table" for p in parts)
            groups.append(GroupSpec(i, node, parts, slots if table else -1))
            slots += table
        return KernelSpec.from_groups(pattern, tuple(groups), head_group, fused_loops)

    @staticmethod
    def from_groups(pattern: Pattern, groups: tuple[GroupSpec, ...],
                    head_group: tuple[int, ...], fused_loops: bool = False) -> KernelSpec:
        """The plan of groups already decomposed, with the forward's loops."""
        return KernelSpec(pattern, groups, head_group, fused_loops).complete()

    def _loop_nodes(self) -> list[Node]:
        return [p.node for g in self.groups for p in g.identity if p.strategy == "ranges"] + \
            [p.classes for g in self.groups for p in g.permuted]

    def complete(self, transposed: bool = False) -> KernelSpec:
        """This plan with every loop a render needs: the forward's (query-block order), and
        with `transposed` the backward's as well. The cache stores plans without loops
        (`without_loops`: rebuilding their sympy bounds on unpickling costs more than
        computing them), so a render of a cached plan completes it first."""
        have = {(n, t) for (n, t), _ in self.loops}
        want = [(n, t) for t in ((False, True) if transposed else (False,))
                for n in dict.fromkeys(self._loop_nodes())]
        missing = tuple(((n, t), range_loops(n, self.fused_loops, t)) for n, t in want
                        if (n, t) not in have)
        return replace(self, loops=self.loops + missing) if missing else self

    def without_loops(self) -> KernelSpec:
        return replace(self, loops=())

    def loop(self, node: Node, transposed: bool = False) -> RangeLoops:
        """The loops of a ranges part's node or a permuted part's classes."""
        for (n, t), loops in self.loops:
            if n == node and t == transposed:
                return loops
        raise ValueError(f"the kernel plan has no {'transposed ' if transposed else ''}"
                         f"loops for `{node.text}` (KernelSpec.complete() adds them)")

    @property
    def uses_doc(self) -> bool:
        return any("document" in g.node.text for g in self.groups)

    @property
    def dynamic(self) -> tuple[tuple[tuple[int, ...], Part], ...]:
        """Each dynamic part with the query heads it runs for (estimated per call)."""
        return tuple((tuple(h for h, x in enumerate(self.head_group) if x == g.index), p)
                     for g in self.groups for p in g.parts if p.strategy == "dynamic")

    @property
    def periods(self) -> tuple[int, ...]:
        """The permuted passes, in launch order."""
        return tuple(sorted({p.period for g in self.groups for p in g.permuted}))

    @property
    def identity_pass(self) -> bool:
        """Whether `attn_fwd` runs: it writes every row unless a single permuted pass covers
        every head (each row belongs to exactly one residue class)."""
        return len(self.periods) != 1 or any(g.identity or not g.permuted
                                             for g in self.groups)
