"""Syntax tree of the pattern language. Every node keeps the span of its source text."""
from __future__ import annotations

from dataclasses import dataclass, field

from attngen.errors import Span


@dataclass(frozen=True)
class Num:
    text: str
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple
    span: Span       # the whole call
    name_span: Span  # just the name


@dataclass(frozen=True)
class BinOp:
    """Arithmetic (+ - * // %), set (| & -) or boolean (and or) operator."""

    op: str
    left: object
    right: object
    span: Span


@dataclass(frozen=True)
class UnaryOp:
    """Arithmetic minus, set complement (~) or boolean not."""

    op: str
    operand: object
    span: Span


@dataclass(frozen=True)
class Compare:
    op: str
    left: object
    right: object
    span: Span


@dataclass(frozen=True)
class Where:
    cond: object
    span: Span


@dataclass(frozen=True)
class HeadEntry:
    selectors: tuple  # of (lo, hi, span) with hi inclusive, or ("*", span)
    body: object
    span: Span


@dataclass(frozen=True)
class Heads:
    kind: str  # "heads" or "kv_heads"
    entries: tuple
    span: Span


@dataclass(frozen=True)
class Param:
    name: str
    default: object | None
    span: Span


@dataclass(frozen=True)
class Def:
    name: str
    params: tuple
    body: object
    span: Span


@dataclass
class Program:
    defs: list = field(default_factory=list)
    expr: object | None = None
