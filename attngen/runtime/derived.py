"""Modules rendered from a compiled kernel's spec besides its forward (backward, decode):
rendered the first time they are needed and cached under their own key."""
from __future__ import annotations

from attngen.codegen.render import render
from attngen.runtime import cache
from attngen.runtime.key import derived_key
from attngen.runtime.launch import Compiled, _load_module
from attngen.version import __version__

_MODULES: dict[str, object] = {}


def module(kernel: Compiled, kind: str):
    """The `kind` module ("backward" or "decode") of `kernel`, from the disk cache or
    rendered now."""
    key = derived_key(kernel.key, kind)
    if key not in _MODULES:
        def build():
            meta = {"pattern": str(kernel.pattern), "forward_key": kernel.key,
                    "head_group": kernel.spec.head_group, "pass": kind}
            spec = kernel.spec.complete(transposed=kind == "backward")
            return render(spec, key, __version__, kind=kind), meta

        entry = cache.get_or_build(key, build)
        _MODULES[key] = _load_module(entry.source, f"attngen_{kind}_{key[:16]}", entry.path)
    return _MODULES[key]
