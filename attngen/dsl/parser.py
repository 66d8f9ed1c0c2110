"""Recursive-descent parser: tokens → AST.

Grammar (precedence `~` > `&` > `-` > `|`; `#` starts a comment):

    program  := def* [pattern]
    def      := "def" NAME "(" [param ("," param)*] ")" "=" pattern
    param    := NAME ["=" arith]
    pattern  := heads | set
    heads    := ("heads" | "kv_heads") "{" entry (";" entry)* [";"] "}"
    entry    := selector ("," selector)* ":" set
    selector := INT [".." INT] | "*"
    set      := diff ("|" diff)*
    diff     := inter ("-" inter)*
    inter    := unary ("&" unary)*
    unary    := "~" unary | "(" set ")" | "where" "(" cond ")" | NAME ["(" [arith ("," arith)*] ")"]
    cond     := conj ("or" conj)*
    conj     := neg ("and" neg)*
    neg      := "not" neg | arith CMP arith | "(" cond ")"
    arith    := term (("+" | "-") term)*
    term     := factor (("*" | "//" | "%") factor)*
    factor   := "-" factor | NUMBER | NAME ["(" arith ("," arith)* ")"] | "(" arith ")"
"""
from __future__ import annotations

from bisect import bisect_right

from attngen.dsl import ast
from attngen.dsl.lexer import Token, tokenize
from attngen.errors import PatternError, Span

_CMP = {"<", "<=", ">", ">=", "==", "!="}
MAX_DEPTH = 100  # nested parentheses, `~`, `not` and unary minus; keeps every later pass shallow


class _TooDeep(PatternError):
    """Nesting beyond MAX_DEPTH: final, never a reason to backtrack."""


class Parser:
    def __init__(self, source: str, file: str = "<pattern>"):
        self.source, self.file = source, file
        self.tokens = tokenize(source, file)
        self.pos = 0
        self.depth = 0
        self.line_starts = [0] + [i + 1 for i, c in enumerate(source) if c == "\n"]

    # -- token helpers -------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def span(self, start: int, end: int | None = None) -> Span:
        if end is None:
            last = self.tokens[self.pos - 1]
            end = last.offset + len(last.text)
        return self.span_at(start, end - start)

    def tok_span(self, tok: Token) -> Span:
        return self.span_at(tok.offset, len(tok.text))

    def span_at(self, offset: int, length: int) -> Span:
        """Span.at in O(log lines): a long file has many spans."""
        line = bisect_right(self.line_starts, offset)
        return Span(self.source, self.file, line, offset - self.line_starts[line - 1] + 1,
                    max(1, length))

    def nest(self, parse):
        """Parse one nesting level with `parse`, refusing more than MAX_DEPTH levels."""
        if self.depth >= MAX_DEPTH:
            raise _TooDeep(f"the pattern nests deeper than {MAX_DEPTH} levels",
                               self.tok_span(self.tok), "split it into `def`s")
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1

    def at(self, text: str) -> bool:
        return self.tok.kind in ("op", "keyword") and self.tok.text == text

    def accept(self, text: str) -> Token | None:
        if self.at(text):
            tok = self.tok
            self.pos += 1
            return tok
        return None

    def expect(self, text: str, what: str | None = None) -> Token:
        tok = self.accept(text)
        if tok is None:
            self.fail(f"expected {what or repr(text)}")
        return tok

    def fail(self, expected: str, hint: str | None = None):
        found = "end of input" if self.tok.kind == "eof" else repr(self.tok.text)
        if self.tok.text == "/":
            hint = hint or "integer division is written `//`"
        raise PatternError(f"{expected}, found {found}", self.tok_span(self.tok), hint)

    # -- program -------------------------------------------------------------------
    def program(self) -> ast.Program:
        prog = ast.Program()
        while self.at("def"):
            prog.defs.append(self.definition())
        if self.tok.kind != "eof":
            prog.expr = self.pattern()
        if self.tok.kind != "eof":
            if self.at("def"):
                raise PatternError("a definition cannot follow the pattern expression",
                                   self.tok_span(self.tok), "put every `def` before the pattern")
            if self.at(")"):
                raise PatternError("unmatched ')'", self.tok_span(self.tok))
            self.fail("expected an operator (| & -) or the end of the pattern")
        return prog

    def definition(self) -> ast.Def:
        start = self.expect("def").offset
        name = self.name("a definition name")
        self.expect("(", "'(' after the definition name")
        params = []
        if not self.at(")"):
            while True:
                ptok = self.tok
                pname = self.name("a parameter name")
                default = self.arith() if self.accept("=") else None
                params.append(ast.Param(pname, default, self.tok_span(ptok)))
                if not self.accept(","):
                    break
        self.expect(")", "',' or ')' in the parameter list")
        self.expect("=", "'=' before the definition body")
        body = self.pattern()
        return ast.Def(name, tuple(params), body, self.span(start))

    def name(self, what: str) -> str:
        if self.tok.kind != "name":
            self.fail(f"expected {what}")
        tok = self.tok
        self.pos += 1
        return tok.text

    # -- set level -----------------------------------------------------------------
    def pattern(self):
        if self.at("heads") or self.at("kv_heads"):
            return self.heads()
        return self.set_expr()

    def heads(self) -> ast.Heads:
        kw = self.tok
        self.pos += 1
        self.expect("{", "'{' after " + kw.text)
        entries = []
        while not self.at("}"):
            estart = self.tok.offset
            selectors = [self.selector()]
            while self.accept(","):
                selectors.append(self.selector())
            self.expect(":", "':' after the head selectors")
            body = self.set_expr()
            entries.append(ast.HeadEntry(tuple(selectors), body, self.span(estart)))
            if not self.accept(";"):
                break
        self.expect("}", "';' or '}' in the heads block")
        if not entries:
            raise PatternError(f"empty {kw.text} block", self.tok_span(kw))
        return ast.Heads(kw.text, tuple(entries), self.span(kw.offset))

    def selector(self):
        if (star := self.accept("*")) is not None:
            return ("*", self.tok_span(star))
        start = self.tok
        lo = self.integer("a head index or '*'")
        hi = self.integer("a head index after '..'") if self.accept("..") else lo
        span = self.span(start.offset)
        if hi < lo:
            raise PatternError(f"empty head range {lo}..{hi}", span)
        return (lo, hi, span)

    def integer(self, what: str) -> int:
        if self.tok.kind != "number" or not self.tok.text.isdigit():
            self.fail(f"expected {what}")
        value = int(self.tok.text)
        self.pos += 1
        return value

    def set_expr(self):
        return self._left_assoc(self.diff_expr, ("|",))

    def diff_expr(self):
        return self._left_assoc(self.inter_expr, ("-",))

    def inter_expr(self):
        return self._left_assoc(self.unary_set, ("&",))

    def _left_assoc(self, operand, ops):
        start = self.tok.offset
        left = operand()
        while self.tok.kind == "op" and self.tok.text in ops:
            op = self.tok.text
            self.pos += 1
            right = operand()
            left = ast.BinOp(op, left, right, self.span(start))
        return left

    def unary_set(self):
        start = self.tok.offset
        if self.accept("~"):
            return ast.UnaryOp("~", self.nest(self.unary_set), self.span(start))
        if self.accept("("):
            inner = self.nest(self.set_expr)
            self.expect(")", "')' to close '('")
            return inner
        if self.at("heads") or self.at("kv_heads"):
            raise PatternError(f"`{self.tok.text}` may only appear at the top of a pattern",
                               self.tok_span(self.tok))
        if self.accept("where"):
            self.expect("(", "'(' after where")
            cond = self.nest(self.cond)
            self.expect(")", "')' to close where(")
            return ast.Where(cond, self.span(start))
        if self.tok.kind != "name":
            self.fail("expected a pattern (a primitive such as causal or local(128), '(' or '~')")
        return self.name_or_call(lambda: self.nest(self.arith))

    def name_or_call(self, argument):
        tok = self.tok
        self.pos += 1
        if not self.accept("("):
            return ast.Name(tok.text, self.tok_span(tok))
        args = []
        if not self.at(")"):
            args.append(argument())
            while self.accept(","):
                args.append(argument())
        self.expect(")", "',' or ')' in the argument list")
        return ast.Call(tok.text, tuple(args), self.span(tok.offset), self.tok_span(tok))

    # -- conditions (inside where) ---------------------------------------------------
    def cond(self):
        start = self.tok.offset
        left = self.conj()
        while self.accept("or"):
            left = ast.BinOp("or", left, self.conj(), self.span(start))
        return left

    def conj(self):
        start = self.tok.offset
        left = self.neg()
        while self.accept("and"):
            left = ast.BinOp("and", left, self.neg(), self.span(start))
        return left

    def neg(self):
        start = self.tok.offset
        if self.accept("not"):
            return ast.UnaryOp("not", self.nest(self.neg), self.span(start))
        if self.at("("):
            # Either a parenthesised condition or an arithmetic operand of a comparison.
            saved = self.pos
            try:
                return self.comparison()
            except _TooDeep:
                raise
            except PatternError:
                self.pos = saved
            self.expect("(")
            inner = self.nest(self.cond)
            self.expect(")", "')' to close '('")
            return inner
        return self.comparison()

    def comparison(self):
        start = self.tok.offset
        left = self.arith()
        if not (self.tok.kind == "op" and self.tok.text in _CMP):
            hint = "compare with `==`" if self.at("=") else None
            self.fail("expected a comparison (< <= > >= == !=)", hint)
        op = self.tok.text
        self.pos += 1
        right = self.arith()
        return ast.Compare(op, left, right, self.span(start))

    # -- arithmetic ------------------------------------------------------------------
    def arith(self):
        start = self.tok.offset
        left = self.term()
        while self.at("+") or self.at("-"):
            op = self.tok.text
            self.pos += 1
            left = ast.BinOp(op, left, self.term(), self.span(start))
        return left

    def term(self):
        start = self.tok.offset
        left = self.factor()
        while self.at("*") or self.at("//") or self.at("%"):
            op = self.tok.text
            self.pos += 1
            left = ast.BinOp(op, left, self.factor(), self.span(start))
        return left

    def factor(self):
        start = self.tok.offset
        if self.accept("-"):
            return ast.UnaryOp("-", self.nest(self.factor), self.span(start))
        if self.tok.kind == "number":
            tok = self.tok
            self.pos += 1
            return ast.Num(tok.text, self.tok_span(tok))
        if self.accept("("):
            inner = self.nest(self.arith)
            self.expect(")", "')' to close '('")
            return inner
        if self.tok.kind == "name":
            return self.name_or_call(lambda: self.nest(self.arith))
        self.fail("expected a number, a name or '('")
