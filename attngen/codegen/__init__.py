"""Code generation: kernel plan (lower/kernel_plan.py) → template variables → Triton source
(templates/*.py.j2)."""
from attngen.codegen.render import render

__all__ = ["render"]
