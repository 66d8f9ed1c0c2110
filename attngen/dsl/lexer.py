"""Tokens of the pattern language, each with its offset in the source."""
from __future__ import annotations

import re
from dataclasses import dataclass

from attngen.errors import PatternError, Span
from attngen.ir.build import MAX_CONSTANT

KEYWORDS = {"def", "heads", "kv_heads", "where", "and", "or", "not"}

# Positions and parameters are int32 in kernels: a larger literal is a mistake, and refusing
# it here keeps 5000-digit numbers away from int() and numpy.
MAX_LITERAL = MAX_CONSTANT
_MAX_DECIMALS = 18

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<number>[0-9]+\.[0-9]+|[0-9]+)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op>\.\.|//|<=|>=|==|!=|[-+*%|&~(){},:;=<>/!])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "keyword", "op", "eof"
    text: str
    offset: int


def tokenize(source: str, file: str) -> list[Token]:
    from attngen.env import max_pattern_chars  # every limit is read in one place

    limit = max_pattern_chars()
    if len(source) > limit:
        raise PatternError(f"{file} has {len(source)} characters, more than the limit of {limit}"
                           " (raise it with $ATTNGEN_MAX_PATTERN_CHARS)")
    tokens: list[Token] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise PatternError(f"unexpected character {source[pos]!r}", Span.at(source, file, pos))
        kind = m.lastgroup
        if kind == "name" and m.group() in KEYWORDS:
            kind = "keyword"
        if kind == "number" and (problem := _number_problem(m.group())):
            raise PatternError(problem, Span.at(source, file, pos, len(m.group())))
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    # End of input sits right after the last token, not after trailing blanks or comments,
    # so "missing ')'" points where the ')' belongs.
    end = tokens[-1].offset + len(tokens[-1].text) if tokens else 0
    tokens.append(Token("eof", "", end))
    return tokens


def _number_problem(text: str) -> str | None:
    whole, _, decimals = text.partition(".")
    digits = whole.lstrip("0")
    if len(digits) > len(str(MAX_LITERAL)) or int(digits or "0") > MAX_LITERAL:
        shown = text if len(text) <= 24 else f"{text[:12]}… ({len(text)} digits)"
        return (f"the number {shown} is too large: constants must be at most {MAX_LITERAL} "
                "(2^30: kernels use int32)")
    if len(decimals) > _MAX_DECIMALS:
        return f"the number has {len(decimals)} decimals; at most {_MAX_DECIMALS} are allowed"
    return None
