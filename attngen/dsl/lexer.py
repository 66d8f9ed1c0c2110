"""Tokens of the pattern language, each with its offset in the source."""
from __future__ import annotations

import re
from dataclasses import dataclass

from attngen.errors import PatternError, Span

KEYWORDS = {"def", "heads", "kv_heads", "where", "and", "or", "not"}

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<number>\d+\.\d+|\d+)
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
    tokens: list[Token] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise PatternError(f"unexpected character {source[pos]!r}", Span.at(source, file, pos))
        kind = m.lastgroup
        if kind == "name" and m.group() in KEYWORDS:
            kind = "keyword"
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    # End of input sits right after the last token, not after trailing blanks or comments,
    # so "missing ')'" points where the ')' belongs.
    end = tokens[-1].offset + len(tokens[-1].text) if tokens else 0
    tokens.append(Token("eof", "", end))
    return tokens
