"""The error family of attngen. Every error about user input carries a source span."""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A range of source text: 1-based line and column of its start, and its length."""

    source: str
    file: str
    line: int
    col: int
    length: int = 1

    @staticmethod
    def at(source: str, file: str, offset: int, length: int = 1) -> Span:
        line = source.count("\n", 0, offset) + 1
        col = offset - (source.rfind("\n", 0, offset) + 1) + 1
        return Span(source, file, line, col, max(1, length))

    def line_text(self) -> str:
        lines = self.source.split("\n")
        return lines[self.line - 1] if 0 < self.line <= len(lines) else ""


class AttnGenError(Exception):
    """Base class of every error attngen raises on purpose."""


class PatternError(AttnGenError, ValueError):
    """A pattern is malformed or cannot be evaluated; says where, with a caret under it."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        self.message, self.span, self.hint = message, span, hint
        super().__init__(self.render())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def col(self) -> int | None:
        return self.span.col if self.span else None

    def render(self) -> str:
        if self.span is None:
            text = f"error: {self.message}"
        else:
            s = self.span
            line = s.line_text()
            width = max(1, min(s.length, len(line) - s.col + 1))
            pad = "".join(c if c == "\t" else " " for c in line[:s.col - 1])  # tabs stay tabs
            caret = pad.ljust(s.col - 1) + "^" * width
            text = f"{s.file}:{s.line}:{s.col}: error: {self.message}\n  {line}\n  {caret}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


def did_you_mean(name: str, choices: list[str] | set[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None
