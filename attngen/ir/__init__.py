"""The pattern IR: hash-consed nodes whose leaves are sympy predicates over q, k, N, M."""
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern

__all__ = ["Node", "Pattern"]
