"""Lowering: exact block layouts and the plan a kernel runs."""
from attngen.lower.layout import BlockLayout, layout
from attngen.lower.plan import Plan, lower

__all__ = ["BlockLayout", "Plan", "layout", "lower"]
