"""`attngen.lower`: the plan a kernel runs: per head group, its terms, each with the
strategy that computes it and its cost.

Strategies (DESIGN §4): "ranges" (a union of affine atoms: per query block, kv-block
intervals in closed form, nothing to build), "table" (other static terms: CSR of kv blocks
from the exact layout), "permutation" (a periodic term computed densely inside residue
classes, lower.permute), "dynamic" (indices estimated at run time). A union whose terms want
different strategies is split into disjoint parts (lower.decompose). Costs are numeric and
cheap (vectorised over query blocks); the sympy form of a ranges term's bounds, which the
kernel template prints, is `lower.loops.range_loops` (cached per term).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from attngen.ir.node import Node
from attngen.ir.pattern import Pattern, check_sizes
from attngen.lower.atoms import numeric
from attngen.lower.cost import causal_blocks
from attngen.lower.decompose import decompose, part_cost
from attngen.lower.grid import Grid
from attngen.lower.layout import _block, checked_grid


@dataclass(frozen=True)
class Term:
    pattern: str
    strategy: str  # "ranges" | "table" | "permutation" | "dynamic"
    blocks: int  # kv blocks visited, summed over query blocks (one head)
    masked_blocks: int  # of which need the mask evaluated (not provably FULL)
    node: Node = field(repr=False, compare=False)
    period: int = 1  # permutation: residue classes mod period


@dataclass(frozen=True)
class HeadGroup:
    heads: tuple[int, ...]
    pattern: str
    terms: tuple[Term, ...]

    @property
    def blocks(self) -> int:
        return sum(t.blocks for t in self.terms)


@dataclass(frozen=True)
class Plan:
    pattern: str
    grid: Grid
    groups: tuple[HeadGroup, ...]
    head_dim: int
    dtype_bytes: int

    @property
    def blocks(self) -> int:
        """kv blocks visited over all heads and query blocks."""
        return sum(g.blocks * len(g.heads) for g in self.groups)

    @property
    def elements(self) -> int:
        """Score elements computed (blocks × BM × BN)."""
        return self.blocks * self.grid.BM * self.grid.BN

    @property
    def bytes_read(self) -> int:
        """K and V bytes read for the visited blocks (Q and O are extra, once each)."""
        return self.blocks * self.grid.BN * self.head_dim * 2 * self.dtype_bytes

    @property
    def block_density(self) -> float:
        """Visited blocks ÷ blocks a causal kernel visits."""
        g = self.grid
        causal = causal_blocks(g)
        return self.blocks / (causal * sum(len(x.heads) for x in self.groups))

    def summary(self) -> str:
        g = self.grid
        lines = [f"plan for `{self.pattern}`  M={g.M} N={g.N} block={g.BM}x{g.BN}",
                 f"  visits {self.blocks} kv blocks ({self.block_density:.2%} of causal), "
                 f"reads {self.bytes_read / 2**20:.1f} MiB of K and V"]
        for grp in self.groups:
            heads = _ranges_text(grp.heads)
            lines.append(f"  heads {heads}: {grp.pattern}")
            for t in grp.terms:
                how = f"{t.strategy} mod {t.period}" if t.period > 1 else t.strategy
                lines.append(f"    {how:<8} {t.pattern}  [{t.blocks} blocks, "
                             f"{t.masked_blocks} masked]")
        return "\n".join(lines)


def _ranges_text(heads: tuple[int, ...]) -> str:
    out, start = [], heads[0]
    for a, b in zip(heads, heads[1:] + (None,)):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}..{a}")
            start = b
    return ", ".join(out)


def lower(pattern: Pattern | str, M: int, N: int | None = None,
          block: int | tuple[int, int] = 128, heads: int = 1, kv_heads: int | None = None,
          head_dim: int = 128, dtype_bytes: int = 2, doc_ids=None) -> Plan:
    """The plan for `pattern` at M queries × N keys (DESIGN §4)."""
    if isinstance(pattern, str):
        from attngen.dsl import parse  # text is accepted for convenience at the API edge

        pattern = parse(pattern)
    N = M if N is None else N
    check_sizes(M, N, heads)
    pattern.check(M, N)
    grid = checked_grid(M, N, *_block(block))
    value = numeric(M, N)
    by_node: dict[Node, list[int]] = {}
    for h, n in enumerate(pattern.head_nodes(heads, kv_heads)):
        by_node.setdefault(n, []).append(h)
    groups = []
    for node, hs in by_node.items():
        terms = []
        for part in decompose(node):
            if part.strategy == "dynamic":
                blocks = masked = _dynamic_blocks(part.node, grid, value)
            else:
                blocks, masked = part_cost(part, grid, doc_ids)
            terms.append(Term(part.node.text, part.strategy, blocks, masked, part.node,
                              part.period))
        groups.append(HeadGroup(tuple(hs), node.text, tuple(terms)))
    return Plan(str(pattern), grid, tuple(groups), head_dim, dtype_bytes)


def _dynamic_blocks(node: Node, g: Grid, value) -> int:
    """A budget estimate of the blocks a dynamic term visits (its indices come at run time)."""
    prim = node if node.op == "prim" else next(
        (c for c in node.children if c.op == "prim" and c.is_dynamic), None)
    causal = causal_blocks(g)
    if prim is None:
        return causal
    p = [value(x) if x.is_integer else float(x) for x in prim.params]
    if prim.name == "vertical_slash":
        per_row = -(-p[0] // g.BN) + -(-p[1] // g.BN)
        return min(causal, per_row * g.QB)
    if prim.name == "block_topk":
        return min(causal, (int(p[0]) + 1) * g.QB)
    return causal  # block_cover: unknown until run time; bounded by causal
