"""The pattern language: text → AST (with source spans) → IR."""
from attngen.dsl.elaborate import load, load_text, parse

__all__ = ["parse", "load", "load_text"]
