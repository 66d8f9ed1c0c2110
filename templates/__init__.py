"""Jinja templates of the generated kernels."""
