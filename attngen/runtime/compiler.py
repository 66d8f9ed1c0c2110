"""`compile`: a pattern's kernel from the in-process table, the disk cache, or freshly
rendered. Apart from api.py so that the custom op (runtime.op), which api uses, can reach it
without a circle."""
from __future__ import annotations

import functools
import pickle

import torch

from attngen.codegen.render import render
from attngen.dsl import parse
from attngen.env import interpreting
from attngen.ir.pattern import Pattern
from attngen.lower.kernel_plan import KernelSpec, head_groups
from attngen.runtime import cache
from attngen.runtime.kernel import Kernel
from attngen.runtime.key import cache_key, device_capability
from attngen.version import __version__

# Both measured faster on the H100 (docs/benchmarks.md); tma only applies on CUDA.
DEFAULT_OPTIONS = {"fused_loops": True, "tma": True}
_KERNELS: dict[tuple, Kernel] = {}


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Pattern:
    return parse(text)


def _pattern(pattern: Pattern | str) -> Pattern:
    return _parsed(pattern) if isinstance(pattern, str) else pattern


def _cached_plan(entry: cache.Entry, pattern: Pattern, heads: int, kv_heads: int | None,
                 options: dict) -> KernelSpec:
    """The kernel plan a cache hit holds (signed and checked like its source: lowering the
    pattern again takes 0.1–0.3 s of sympy), else lowered now (an entry without one)."""
    if entry.plan is not None:
        spec = pickle.loads(entry.plan)
        if isinstance(spec, KernelSpec) and spec.pattern.node == pattern.node:
            return spec
    return KernelSpec.build(pattern, heads, kv_heads, fused_loops=options["fused_loops"])


def compile(pattern: Pattern | str, head_dim: int = 128, dtype: torch.dtype = torch.bfloat16,
            heads: int = 32, kv_heads: int | None = None,
            device: str | torch.device | None = None, options: dict | None = None) -> Kernel:
    """The Triton kernel for `pattern`, from the in-process table, the disk cache, or freshly
    rendered. `kernel.source` is the generated code; `kernel(q, k, v)` runs it.
    options: {"fused_loops": bool} (ranges terms: one loop per block run, see lower.plan),
    {"tma": bool} (on CUDA, load K and V through tensor descriptors)."""
    options = {**DEFAULT_OPTIONS, **(options or {})}
    pattern = _pattern(pattern)
    if device is None:
        device = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
    device = torch.device(device)
    memo = (pattern.node, heads, kv_heads, head_dim, dtype, device.type, device.index,
            tuple(sorted(options.items())))
    kernel = _KERNELS.get(memo)
    if kernel is not None:
        return kernel
    _, head_group = head_groups(pattern, heads, kv_heads)
    key = cache_key(pattern.key, head_group, head_dim, dtype,
                    device_capability(device.type, device.index), options)
    built: list[KernelSpec] = []

    def build():
        spec = KernelSpec.build(pattern, heads, kv_heads, fused_loops=options["fused_loops"])
        built.append(spec)
        meta = {"pattern": str(pattern), "head_group": spec.head_group, "head_dim": head_dim,
                "dtype": str(dtype), "attngen": __version__,
                "groups": [{"pattern": g.node.text,
                            "parts": [{"pattern": p.node.text, "strategy": p.strategy,
                                       "period": p.period} for p in g.parts]}
                           for g in spec.groups]}
        return render(spec, key, __version__), meta, pickle.dumps(spec.without_loops())

    entry = cache.get_or_build(key, build)
    spec = built[0] if built else _cached_plan(entry, pattern, heads, kv_heads, options)
    fallback = None
    if options["fused_loops"]:
        def fallback():
            return compile(pattern, head_dim, dtype, heads, kv_heads, device,
                           {**options, "fused_loops": False})
    kernel = Kernel(spec, key, entry.path, head_dim, dtype, entry.rendered, entry.source,
                    tma=bool(options["tma"]), fallback=fallback)
    _KERNELS[memo] = kernel
    return kernel
