"""Render a template (forward, backward or decode) for one pattern: groups of heads, each
with its loops (the backward also gets each ranges loop transposed: query blocks per kv
block)."""
from __future__ import annotations

from importlib import resources

import jinja2
import sympy

from attngen.codegen.printer import Printer
from attngen.errors import PatternError
from attngen.ir.arith import M, N, k, q
from attngen.ir.primitives import doc
from attngen.lower.decompose import Part
from attngen.lower.dynamic import BLOCK_KINDS
from attngen.lower.kernel_plan import KernelSpec
from attngen.lower.loops import ALWAYS, BM_SYM, BN_SYM, N_BLOCKS, Q_FIRST, Q_LAST, RangeLoops, m_sym

TEMPLATE = "attention_fwd.py.j2"
BACKWARD_TEMPLATE = "attention_bwd.py.j2"
DECODE_TEMPLATE = "attention_decode.py.j2"
TEMPLATES = {"forward": TEMPLATE, "backward": BACKWARD_TEMPLATE, "decode": DECODE_TEMPLATE}
SHARED_TEMPLATES = ("_predicates.py.j2", "_attn_inner.py.j2", "_dynamic.py.j2",
                    "_estimate.py.j2")  # included by the others

_KERNEL_NAMES = {q: "q_pos", k: "k_pos", N: "N", M: "M", m_sym: "m", BM_SYM: "BLOCK_M",
                 BN_SYM: "BLOCK_N", Q_FIRST: "q_first", Q_LAST: "q_last", N_BLOCKS: "n_blocks"}
# transposed loops (range_loops(…, transposed=True)): per kv block n, over query blocks
_TRANSPOSED_NAMES = {**_KERNEL_NAMES, m_sym: "n", BM_SYM: "BLOCK_N", BN_SYM: "BLOCK_M",
                     Q_FIRST: "kq_first", Q_LAST: "kq_last", N_BLOCKS: "m_blocks"}


def template_text(name: str = TEMPLATE) -> str:
    return resources.files("attngen.templates").joinpath(name).read_text()


_ENV = jinja2.Environment(loader=jinja2.FunctionLoader(template_text),
                          undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True, keep_trailing_newline=True)


KINDS = {"vertical_slash": 1, "block_topk": 2, "block_cover": 2}  # _dyn_allowed's KIND
_RES = sympy.Symbol("res", integer=True, nonnegative=True)  # residue class in permuted passes


def _loops(loops: RangeLoops, names: dict) -> dict:
    """A ranges part's bounds and segments as kernel text."""
    local = Printer({**names, **{s: s.name for _, e in loops.bounds for s in e.free_symbols
                                 if s not in names}}, "tl")
    bounds = [(name, local(e)) for name, e in loops.bounds]
    seg_printer = Printer({**names, **{sympy.Symbol(n, integer=True): n
                                       for n, _ in loops.bounds}}, "tl")
    segments = [{"start": seg_printer(s.start), "stop": seg_printer(s.stop),
                 "full_lo": seg_printer(s.full_lo), "full_hi": seg_printer(s.full_hi),
                 "masked": s.masked, "note": s.note} for s in loops.segments]
    return {"bounds": bounds, "segments": segments}


def _dynamic_loop(part: Part, predicate, printer: Printer) -> dict:
    """A dynamic part's loops: its kind for the kernel, the static predicate its elements
    still test (-1: none) and, for picked g-blocks, g as kernel text."""
    term = part.dynamic
    mask = term.mask
    return {"strategy": "dynamic", "name": part.node.text, "kind": KINDS[term.kind],
            "gather": term.kind == "vertical_slash",
            "pred": predicate(mask.text, mask.predicate) if mask is not None else -1,
            "g": printer(term.prim.params[1]) if term.kind in BLOCK_KINDS else "1"}


def render(spec: KernelSpec, key: str, version: str, kind: str = "forward") -> str:
    """The source of the `kind` module ("forward", "backward" or "decode") for spec."""
    backward = kind == "backward"
    if spec.dynamic and kind == "decode":
        raise PatternError(f"`{spec.pattern}`: the decode of input-dependent patterns is not "
                           "generated yet; only their forward and backward are")
    printer = Printer({**_KERNEL_NAMES, _RES: "res"}, "tl", {doc: "tl.load(DOC + {})"})
    predicates: list[dict] = []

    def predicate(name: str, expr: sympy.Basic) -> int:
        predicates.append({"index": len(predicates), "name": name, "expr": printer(expr)})
        return len(predicates) - 1

    groups, periods = [], {s: [] for s in spec.periods}
    class_names = {**_KERNEL_NAMES, N: "n_keys", M: "m_class"}
    transposed_class_names = {**_TRANSPOSED_NAMES, N: "n_keys", M: "m_class"}
    for g in spec.groups:
        if g.identity:
            loops = []
            for part in g.identity:
                if part.strategy == "dynamic":
                    loops.append(_dynamic_loop(part, predicate, printer))
                    continue
                loop = {"strategy": part.strategy, "name": part.node.text,
                        "pred": predicate(part.node.text, part.node.predicate)}
                if part.strategy == "ranges":
                    loop.update(_loops(spec.loop(part.node), _KERNEL_NAMES))
                    if backward:
                        loop["transposed"] = _loops(spec.loop(part.node, True),
                                                    _TRANSPOSED_NAMES)
                loops.append(loop)
            groups.append({"index": g.index, "name": g.node.text, "table_slot": g.table_slot,
                           "loops": loops})
        for part in g.permuted:
            s = part.period
            in_class = part.node.predicate.xreplace({q: _RES + s * q, k: _RES + s * k})
            entry = {"index": g.index, "name": f"{part.node.text}  (mod {s}: "
                     f"{part.classes.text})", "pred": predicate(part.node.text, in_class),
                     **_loops(spec.loop(part.classes), class_names)}
            if backward:
                entry["transposed"] = _loops(spec.loop(part.classes, True),
                                             transposed_class_names)
            if not part.exact:  # the loops cover a superset: every block evaluates the mask
                for seg in entry["segments"] + entry.get("transposed", {}).get("segments", []):
                    seg["masked"] = ALWAYS
            periods[s].append(entry)
    if kind == "decode":  # residue-class parts decode from per-row lists of needed keys
        by_index, slot = {g["index"]: g for g in groups}, 0
        for g in spec.groups:
            for part in g.permuted:
                if g.index not in by_index:
                    by_index[g.index] = {"index": g.index, "name": g.node.text,
                                         "table_slot": g.table_slot, "loops": []}
                    groups.append(by_index[g.index])
                by_index[g.index]["loops"].append({
                    "strategy": "keys", "name": part.node.text, "key_slot": slot,
                    "pred": predicate(part.node.text, part.node.predicate)})
                slot += 1
        groups.sort(key=lambda x: x["index"])
    text = " ".join(p["expr"] for p in predicates)
    helpers = {h for h in ("bitlen", "ffloor") if f"_{h}(" in text}
    plan_lines = []
    for g in spec.groups:
        heads = [h for h, x in enumerate(spec.head_group) if x == g.index]
        plan_lines.append(f"group {g.index}, heads {heads}: {g.node.text}")
        plan_lines += [f"  {p.strategy}" + (f" mod {p.period}" if p.period > 1 else "")
                       + f": {p.node.text}" for p in g.parts]
    return _ENV.get_template(TEMPLATES[kind]).render(
        pattern=str(spec.pattern), key=key, version=version, plan_lines=plan_lines,
        predicates=predicates, groups=groups, dynamic=bool(spec.dynamic), backward=backward,
        estimate=any(p.dynamic.kind == "vertical_slash" for _, p in spec.dynamic),
        column_groups=[{"index": g["index"], "name": loop["name"], "pred": loop["pred"]}
                       for g in groups for loop in g["loops"] if loop.get("gather")],
        periods=[{"period": s, "groups": periods[s]} for s in spec.periods], helpers=helpers)
