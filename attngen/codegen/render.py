"""Render the forward template for one pattern: groups of heads, each with its loops."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import jinja2
import sympy

from attngen.codegen.printer import Printer
from attngen.errors import PatternError
from attngen.ir.arith import M, N, k, q
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.ir.primitives import doc
from attngen.lower.plan import BM_SYM, BN_SYM, N_BLOCKS, Q_FIRST, Q_LAST, m_sym, range_loops

TEMPLATE = "attention_fwd.py.j2"

_KERNEL_NAMES = {q: "q_pos", k: "k_pos", N: "N", M: "M", m_sym: "m", BM_SYM: "BLOCK_M",
                 BN_SYM: "BLOCK_N", Q_FIRST: "q_first", Q_LAST: "q_last", N_BLOCKS: "n_blocks"}


def template_text(name: str = TEMPLATE) -> str:
    return resources.files("attngen.templates").joinpath(name).read_text()


_ENV = jinja2.Environment(loader=jinja2.FunctionLoader(template_text),
                          undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True, keep_trailing_newline=True)


@dataclass(frozen=True)
class GroupSpec:
    """One distinct head pattern and how the kernel runs it."""

    index: int
    node: Node
    strategy: str  # "ranges" | "table"
    table_slot: int  # index among table groups (-1 for ranges)


@dataclass(frozen=True)
class KernelSpec:
    """Everything the source depends on (besides the template and versions)."""

    pattern: Pattern
    groups: tuple[GroupSpec, ...]
    head_group: tuple[int, ...]  # query head → group index
    fused_loops: bool = False  # ranges: one loop per piece, masking decided per block

    @staticmethod
    def build(pattern: Pattern, heads: int, kv_heads: int | None = None,
              fused_loops: bool = False) -> KernelSpec:
        if pattern.is_dynamic:
            raise PatternError(f"`{pattern}` is input-dependent; its kernels (estimation on "
                               "the GPU) are not generated yet")
        nodes: dict[Node, int] = {}
        head_group = []
        for n in pattern.head_nodes(heads, kv_heads):
            head_group.append(nodes.setdefault(n, len(nodes)))
        groups, slots = [], 0
        for node, i in nodes.items():
            if range_loops(node) is not None:
                groups.append(GroupSpec(i, node, "ranges", -1))
            else:
                groups.append(GroupSpec(i, node, "table", slots))
                slots += 1
        return KernelSpec(pattern, tuple(groups), tuple(head_group), fused_loops)

    @property
    def uses_doc(self) -> bool:
        return any("document" in g.node.text for g in self.groups)


def render(spec: KernelSpec, key: str, version: str) -> str:
    printer = Printer(_KERNEL_NAMES, "tl", {doc: "tl.load(DOC + {})"})
    groups = []
    for g in spec.groups:
        entry = {"index": g.index, "name": g.node.text, "strategy": g.strategy,
                 "predicate": printer(g.node.predicate), "table_slot": g.table_slot,
                 "bounds": [], "segments": []}
        if g.strategy == "ranges":
            loops = range_loops(g.node, spec.fused_loops)
            local = Printer({**_KERNEL_NAMES, **{s: s.name for _, e in loops.bounds
                                                 for s in e.free_symbols}}, "tl")
            entry["bounds"] = [(name, local(e)) for name, e in loops.bounds]
            names = {sympy.Symbol(n, integer=True): n for n, _ in loops.bounds}
            seg_printer = Printer({**_KERNEL_NAMES, **names}, "tl")
            entry["segments"] = [
                {"start": seg_printer(s.start), "stop": seg_printer(s.stop),
                 "full_lo": seg_printer(s.full_lo), "full_hi": seg_printer(s.full_hi),
                 "masked": s.masked, "note": s.note} for s in loops.segments]
        groups.append(entry)
    text = " ".join(g["predicate"] for g in groups)
    helpers = {h for h in ("bitlen", "ffloor") if f"_{h}(" in text}
    plan_lines = [f"group {g.index} ({g.strategy}), heads "
                  f"{[h for h, x in enumerate(spec.head_group) if x == g.index]}: {g.node.text}"
                  for g in spec.groups]
    return _ENV.get_template(TEMPLATE).render(
        pattern=str(spec.pattern), key=key, version=version, plan_lines=plan_lines,
        groups=groups, helpers=helpers)
