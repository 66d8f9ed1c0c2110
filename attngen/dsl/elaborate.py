"""AST → IR: resolve names and definitions, evaluate integer expressions symbolically,
check arities and parameters, and build canonical nodes with their source spans."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import sympy

from attngen.dsl import ast
from attngen.dsl.parser import Parser
from attngen.errors import PatternError, Span, did_you_mean
from attngen.ir import simplify as S
from attngen.ir.arith import SYMBOLS, floordiv
from attngen.ir.build import MAX_CONSTANT, primitive
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.ir.primitives import PRIMITIVES

_INT_FUNCS = {"min": sympy.Min, "max": sympy.Max, "abs": sympy.Abs}
_SET_OPS = {"|", "&", "-"}
MAX_DEF_DEPTH = 100  # definitions calling definitions
MAX_EXPANSION = 20_000  # pattern terms elaborated in all: bounds defs that double each level
MAX_ARGUMENT_SIZE = 500  # sympy terms of one def argument (written out as a tree)


def _chain(tree, ops) -> list:
    """[(None, leftmost), (op, operand), …] of a left-deep chain of binary `ops`, without
    recursion (a flat `a | b | … ` of thousands of terms is one chain)."""
    out = []
    while isinstance(tree, ast.BinOp) and tree.op in ops:
        out.append((tree.op, tree.right))
        tree = tree.left
    out.append((None, tree))
    return out[::-1]


def _tree_size(e: sympy.Basic) -> int:
    """Terms of e written out as a tree (shared subterms counted each time), computed on the
    DAG so an exponentially large tree costs nothing to measure."""
    sizes: dict[int, int] = {}
    stack = [(e, False)]
    while stack:
        x, done = stack.pop()
        if id(x) in sizes:
            continue
        if done:
            sizes[id(x)] = 1 + sum(sizes[id(a)] for a in x.args)
        else:
            stack.append((x, True))
            stack.extend((a, False) for a in x.args if id(a) not in sizes)
    return sizes[id(e)]


def _check_constants(expr: sympy.Basic, span) -> None:
    """Integer constants (also computed ones, such as 65536 * 65536) must fit in int32."""
    for atom in expr.atoms(sympy.Rational):
        if abs(atom.p) > MAX_CONSTANT or atom.q > MAX_CONSTANT:
            raise PatternError(f"the constant {sympy.sstr(atom)} is too large: constants must "
                               f"be at most {MAX_CONSTANT} in size (2^30: kernels use int32)",
                               span)


class Elaborator:
    def __init__(self, defs: list[ast.Def]):
        self.defs: dict[str, ast.Def] = {}
        for d in defs:
            if d.name in PRIMITIVES or d.name == "where":
                raise PatternError(f"`{d.name}` is a primitive and cannot be redefined", d.span)
            if d.name in self.defs:
                raise PatternError(f"`{d.name}` is defined twice", d.span)
            self.defs[d.name] = d
        self.spans: dict = {}
        self.stack: list[str] = []
        self.calls: dict[tuple, Node] = {}  # (def, arguments) → node: a def expands once
        self.work = 0

    # -- patterns ------------------------------------------------------------------------
    def pattern(self, tree, env: dict) -> Node:
        if isinstance(tree, ast.Heads):
            return self.heads(tree, env)
        return self.set_expr(tree, env)

    def heads(self, tree: ast.Heads, env: dict) -> Node:
        ranges, default = [], None
        star_span = None
        for entry in tree.entries:
            body = self.plain(self.set_expr(entry.body, env), entry.body)
            for sel in entry.selectors:
                if sel[0] == "*":
                    if star_span is not None:
                        raise PatternError("`*` appears twice in the heads block", sel[1])
                    star_span, default = sel[1], body
                    continue
                lo, hi, span = sel
                clash = min((max(lo, a) for a, b, _ in ranges if a <= hi and lo <= b),
                            default=None)
                if clash is not None:
                    raise PatternError(f"head {clash} is assigned twice (head ranges overlap)",
                                       span)
                ranges.append((lo, hi, body))
                self.spans[("head", hi)] = span
        node = S.heads("heads" if tree.kind == "heads" else "kv_heads", ranges, default)
        self.spans.setdefault(node, tree.span)
        return node

    def count(self, span) -> None:
        self.work += 1
        if self.work > MAX_EXPANSION:
            where = f"`{self.stack[-1]}`" if self.stack else "the pattern"
            raise PatternError(f"{where} expands to more than {MAX_EXPANSION} terms "
                               "(a definition that uses another one several times per level "
                               "grows exponentially)", span)

    def set_expr(self, tree, env: dict) -> Node:
        self.count(getattr(tree, "span", None))
        if isinstance(tree, ast.BinOp) and tree.op in _SET_OPS:
            chain = _chain(tree, {tree.op})  # one operator: | & - bind differently
            nodes = [self.plain(self.set_expr(t, env), t) for _, t in chain]
            if tree.op == "|":
                return S.union(*nodes)
            if tree.op == "&":
                return S.inter(*nodes)
            return S.inter(nodes[0], *[S.neg(n) for n in nodes[1:]])
        if isinstance(tree, ast.UnaryOp):
            return S.neg(self.plain(self.set_expr(tree.operand, env), tree.operand))
        if isinstance(tree, ast.Where):
            return S.where(self.cond(tree.cond, env))
        if isinstance(tree, ast.Name):
            return self.reference(tree.id, [], tree.span, tree.span, [])
        if isinstance(tree, ast.Call):
            args = [self.arith(a, env) for a in tree.args]
            return self.reference(tree.name, args, tree.span, tree.name_span,
                                  [a.span for a in tree.args])
        raise PatternError("expected a pattern here", getattr(tree, "span", None))

    def plain(self, node: Node, tree) -> Node:
        """`node` (elaborated from `tree`) if it is not a heads mixture, which may only be
        the whole pattern: a def whose body is `heads { … }` cannot be an operand."""
        if node.op == "heads":
            name = getattr(tree, "name", getattr(tree, "id", None))
            raise PatternError("`heads { … }` may only appear at the top of a pattern",
                               tree.span, f"`{name}` is a {node.name} block" if name else None)
        return node

    def reference(self, name: str, args: list, span, name_span, arg_spans) -> Node:
        if name in self.defs:
            return self.call_def(self.defs[name], args, span)
        if name in PRIMITIVES:
            node = primitive(name, args, span, arg_spans)
            self.spans.setdefault(node, span)
            return node
        if name in SYMBOLS or name in _INT_FUNCS:
            raise PatternError(f"`{name}` is an integer, not a pattern", name_span)
        raise PatternError(f"unknown pattern `{name}`", name_span,
                           did_you_mean(name, set(PRIMITIVES) | set(self.defs) | {"where"}))

    def call_def(self, d: ast.Def, args: list, span) -> Node:
        if d.name in self.stack:
            cycle = " → ".join(self.stack[self.stack.index(d.name):] + [d.name])
            raise PatternError(f"`{d.name}` refers to itself ({cycle})", span)
        required = sum(1 for p in d.params if p.default is None)
        if not required <= len(args) <= len(d.params):
            want = str(len(d.params)) if required == len(d.params) else \
                f"{required} to {len(d.params)}"
            raise PatternError(f"{d.name} takes {want} argument{'s' * (want != '1')}, "
                               f"got {len(args)}", span)
        if len(self.stack) >= MAX_DEF_DEPTH:
            raise PatternError(f"definitions nest deeper than {MAX_DEF_DEPTH} levels "
                               f"({' → '.join(self.stack[:3])} → … → {d.name})", span)
        env: dict[str, sympy.Expr] = {}
        for i, p in enumerate(d.params):
            env[p.name] = args[i] if i < len(args) else self.arith(p.default, env)
            if _tree_size(env[p.name]) > MAX_ARGUMENT_SIZE:  # a parameter used twice per level
                raise PatternError(f"{d.name}: argument {p.name} grew beyond "
                                   f"{MAX_ARGUMENT_SIZE} terms (a parameter used several times "
                                   "in the argument of a nested call doubles each level)", span)
        key = (d.name, tuple(env[p.name] for p in d.params))
        if key in self.calls:
            return self.calls[key]
        self.stack.append(d.name)
        try:
            node = self.pattern(d.body, env)
        finally:
            self.stack.pop()
        self.calls[key] = node
        return node

    # -- integer expressions and conditions ----------------------------------------------
    def arith(self, tree, env: dict, allow_qk: bool = False) -> sympy.Expr:
        if isinstance(tree, ast.Num):
            text = tree.text
            return sympy.Integer(int(text)) if text.isdigit() else sympy.Rational(
                str(Decimal(text)))
        if isinstance(tree, ast.Name):
            if tree.id in env:
                return env[tree.id]
            if tree.id in ("N", "M") or (allow_qk and tree.id in ("q", "k")):
                return SYMBOLS[tree.id]
            known = set(env) | {"N", "M"} | ({"q", "k"} if allow_qk else set())
            if tree.id in ("q", "k"):
                raise PatternError(f"`{tree.id}` is only defined inside where(…)", tree.span)
            raise PatternError(f"unknown name `{tree.id}` in an integer expression", tree.span,
                               did_you_mean(tree.id, known) or
                               f"the names here are {', '.join(sorted(known))}")
        if isinstance(tree, ast.UnaryOp) and tree.op == "-":
            return -self.arith(tree.operand, env, allow_qk)
        if isinstance(tree, ast.BinOp) and tree.op in ("+", "-"):
            chain = _chain(tree, {"+", "-"})
            terms = [self.arith(t, env, allow_qk) for _, t in chain]
            return sympy.Add(*[-t if op == "-" else t for (op, _), t in zip(chain, terms)])
        if isinstance(tree, ast.BinOp) and tree.op in ("*", "//", "%"):
            chain = _chain(tree, {"*", "//", "%"})
            acc = self.arith(chain[0][1], env, allow_qk)
            for op, t in chain[1:]:
                acc = self.product(op, acc, self.arith(t, env, allow_qk), t, tree)
            return acc
        if isinstance(tree, ast.Call):
            if tree.name not in _INT_FUNCS:
                raise PatternError(f"unknown function `{tree.name}` in an integer expression",
                                   tree.name_span, did_you_mean(tree.name, set(_INT_FUNCS)))
            want = (1, 1) if tree.name == "abs" else (2, 99)
            if not want[0] <= len(tree.args) <= want[1]:
                wanted = "1 argument" if want[0] == 1 else "at least 2 arguments"
                raise PatternError(f"{tree.name} takes {wanted}, got {len(tree.args)}",
                                   tree.span)
            return _INT_FUNCS[tree.name](*[self.arith(a, env, allow_qk) for a in tree.args])
        raise PatternError("expected an integer expression", getattr(tree, "span", None))

    def product(self, op: str, a: sympy.Expr, b: sympy.Expr, right, whole) -> sympy.Expr:
        if op in ("//", "%") and b == 0:
            raise PatternError("division by zero", right.span)
        if op == "*" and a.free_symbols and b.free_symbols:
            raise PatternError(f"products of two variables are not supported: "
                               f"({sympy.sstr(a)}) * ({sympy.sstr(b)})", whole.span,
                               "a factor must be a constant (a number or a def parameter)")
        return a * b if op == "*" else floordiv(a, b) if op == "//" else sympy.Mod(a, b)

    def cond(self, tree, env: dict) -> sympy.Basic:
        if isinstance(tree, ast.BinOp) and tree.op in ("and", "or"):
            fn = sympy.And if tree.op == "and" else sympy.Or
            return fn(*[self.cond(t, env) for _, t in _chain(tree, {tree.op})])
        if isinstance(tree, ast.UnaryOp) and tree.op == "not":
            return sympy.Not(self.cond(tree.operand, env))
        if isinstance(tree, ast.Compare):
            a = self.arith(tree.left, env, allow_qk=True)
            b = self.arith(tree.right, env, allow_qk=True)
            rel = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge,
                   "==": sympy.Eq, "!=": sympy.Ne}[tree.op]
            scale = _denominators(a - b)
            out = rel(sympy.expand(a * scale), sympy.expand(b * scale)) if scale != 1 else rel(a, b)
            _check_constants(out, tree.span)
            return out
        raise PatternError("expected a condition", getattr(tree, "span", None))


def _denominators(e: sympy.Expr) -> int:
    """The lcm of the denominators of e's top-level rational coefficients: a comparison
    multiplied through by it has integer coefficients (kernels do integer arithmetic)."""
    scale = 1
    for term in sympy.Add.make_args(sympy.expand(e)):
        coeff = term.as_coeff_Mul()[0]
        if coeff.is_Rational:
            scale = sympy.ilcm(scale, coeff.q)
    return int(scale)


def _pattern_of(prog: ast.Program, elab: Elaborator, name: str | None, file: str,
                end: Span | None = None) -> Node:
    if name is not None:
        if name not in elab.defs:
            raise PatternError(f"{file} has no definition `{name}`", None,
                               did_you_mean(name, set(elab.defs)))
        d = elab.defs[name]
        return elab.call_def(d, [], d.span)
    if prog.expr is not None:
        return elab.pattern(prog.expr, {})
    if not prog.defs:
        raise PatternError(f"{file} holds no pattern", end)
    d = prog.defs[-1]
    return elab.call_def(d, [], d.span)


def load_text(source: str, name: str | None = None, file: str = "<pattern>") -> Pattern:
    """Parse pattern-language text: its expression, else its last (or named) definition."""
    parser = Parser(source, file)
    prog = parser.program()
    elab = Elaborator(prog.defs)
    node = _pattern_of(prog, elab, name, file, parser.tok_span(parser.tokens[-1]))
    return Pattern(node, elab.spans)


def parse(text: str) -> Pattern:
    """`attngen.parse("causal & (sink(128) | local(4096))")`."""
    return load_text(text)


def load(path: str | Path, name: str | None = None) -> Pattern:
    """A pattern file's last definition, or the one called `name` (with its defaults).
    A bare name such as "a_shape" not found as a file is looked up in the bundled library."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        from attngen.library import find  # bundled patterns

        p = find(str(path))
    if not p.is_file():
        raise PatternError(f"no pattern file {p}" if not p.exists() else f"{p} is not a file")
    from attngen.env import max_pattern_chars  # every limit is read in one place

    try:
        if p.stat().st_size > 4 * max_pattern_chars():  # don't read a huge file to refuse it
            raise PatternError(f"{p} has {p.stat().st_size} bytes, more than the limit of "
                               f"{max_pattern_chars()} characters (raise it with "
                               "$ATTNGEN_MAX_PATTERN_CHARS)")
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PatternError(f"cannot read {p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PatternError(f"{p} is not UTF-8 text (byte {e.start})") from None
    return load_text(text, name, str(p))


def parse_int_expr(text: str) -> sympy.Expr:
    parser = Parser(text, "<parameter>")
    tree = parser.arith()
    if parser.tok.kind != "eof":
        parser.fail("expected the end of the integer expression")
    return Elaborator([]).arith(tree, {})
