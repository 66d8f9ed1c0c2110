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
from attngen.ir.build import primitive
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern
from attngen.ir.primitives import PRIMITIVES

_INT_FUNCS = {"min": sympy.Min, "max": sympy.Max, "abs": sympy.Abs}


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

    def set_expr(self, tree, env: dict) -> Node:
        if isinstance(tree, ast.BinOp):
            left = self.plain(self.set_expr(tree.left, env), tree.left)
            right = self.plain(self.set_expr(tree.right, env), tree.right)
            op = {"|": S.union, "&": S.inter, "-": S.diff}[tree.op]
            return op(left, right)
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
        env: dict[str, sympy.Expr] = {}
        for i, p in enumerate(d.params):
            env[p.name] = args[i] if i < len(args) else self.arith(p.default, env)
        self.stack.append(d.name)
        try:
            node = self.pattern(d.body, env)
        finally:
            self.stack.pop()
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
        if isinstance(tree, ast.BinOp) and tree.op in "+-*//%":
            a = self.arith(tree.left, env, allow_qk)
            b = self.arith(tree.right, env, allow_qk)
            if tree.op in ("//", "%") and b == 0:
                raise PatternError("division by zero", tree.right.span)
            return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                    "//": lambda: floordiv(a, b), "%": lambda: sympy.Mod(a, b)}[tree.op]()
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

    def cond(self, tree, env: dict) -> sympy.Basic:
        if isinstance(tree, ast.BinOp) and tree.op in ("and", "or"):
            fn = sympy.And if tree.op == "and" else sympy.Or
            return fn(self.cond(tree.left, env), self.cond(tree.right, env))
        if isinstance(tree, ast.UnaryOp) and tree.op == "not":
            return sympy.Not(self.cond(tree.operand, env))
        if isinstance(tree, ast.Compare):
            a = self.arith(tree.left, env, allow_qk=True)
            b = self.arith(tree.right, env, allow_qk=True)
            rel = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge,
                   "==": sympy.Eq, "!=": sympy.Ne}[tree.op]
            return rel(a, b)
        raise PatternError("expected a condition", getattr(tree, "span", None))


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
    return load_text(p.read_text(), name, str(p))


def parse_int_expr(text: str) -> sympy.Expr:
    parser = Parser(text, "<parameter>")
    tree = parser.arith()
    if parser.tok.kind != "eof":
        parser.fail("expected the end of the integer expression")
    return Elaborator([]).arith(tree, {})
