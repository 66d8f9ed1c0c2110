"""Code generation: plan → template variables → Triton source (templates/*.py.j2)."""
from attngen.codegen.render import KernelSpec, render

__all__ = ["KernelSpec", "render"]
