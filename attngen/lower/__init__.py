"""Lowering: exact block layouts and the plan a kernel runs."""
from attngen.lower.layout import BlockLayout, layout

__all__ = ["BlockLayout", "layout"]
