"""The kernel cache key: the only place its parts are listed, each with why it is there."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path

import torch

from attngen.codegen.render import SHARED_TEMPLATES, TEMPLATE, TEMPLATES, template_text
from attngen.version import __version__


@functools.cache
def _versions() -> tuple[str, str, str]:
    # the installed distribution's version: importing triton here would cost a cache hit
    # ~0.2 s in a new process (the kernel's first call imports it anyway)
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # a triton installed under another name
        import triton

        triton_version = triton.__version__
    return __version__, triton_version, torch.__version__


@functools.cache
def _template_hash(name: str) -> str:
    """sha256 of a template and the templates every template includes."""
    h = hashlib.sha256()
    for n in (name, *SHARED_TEMPLATES):
        h.update(template_text(n).encode())
    return h.hexdigest()


@functools.cache
def _generator_hash() -> str:
    """sha256 of the code that turns a pattern into source (ir, lower, codegen), so a change
    to the generator never serves kernels the old code rendered."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for sub in ("ir", "lower", "codegen"):
        for f in sorted((root / sub).glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def device_capability(device_type: str, index: int | None) -> str:
    from attngen.env import interpreting

    if device_type != "cuda" or interpreting():
        return "interpreter"
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def cache_key(pattern_key: str, head_group: tuple[int, ...], head_dim: int, dtype: torch.dtype,
              capability: str, options: dict) -> str:
    parts = {
        "pattern": pattern_key,          # the canonical IR decides every loop and predicate
        "head_group": head_group,        # which heads share which specialised branch
        "head_dim": head_dim,            # a compile-time constant of the kernel
        "dtype": str(dtype),             # tensor core path and output conversion
        "capability": capability,        # what the generated code may use ("interpreter")
        "options": options,              # lowering options (range atoms cap, ...)
        "template": _template_hash(TEMPLATE),  # a template edit must never reuse old code
        "generator": _generator_hash(),  # nor an edit to the code that fills the template
        "versions": _versions(),         # attngen, triton, torch
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def derived_key(forward_key: str, kind: str) -> str:
    """The key of a module rendered from the same spec as a forward kernel (kind "backward"
    or "decode"): everything the forward's key holds and that module's template."""
    blob = f"{forward_key}:{kind}:{_template_hash(TEMPLATES[kind])}"
    return hashlib.sha256(blob.encode()).hexdigest()
