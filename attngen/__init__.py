"""attngen: a compiler for sparse attention.

    import attngen
    p = attngen.parse("causal & (sink(128) | local(4096))")
    lay = attngen.layout(p, 8192, 8192, block=128)

The names below are imported on first use (PEP 562), so `import attngen` costs a few
milliseconds and pulls neither torch nor sympy; the first `attngen.parse` or
`attngen.attention` imports what it needs (docs/design.md, "Import time").
"""
from __future__ import annotations

import importlib
import sys
import types

from attngen.version import __version__ as __version__

_BUILDERS = ("band", "block_cover", "block_topk", "causal", "chunked", "columns", "dilated",
             "document", "fixed", "full", "heads", "kv_heads", "local", "power", "radial",
             "rows", "sink", "strided", "vertical_slash", "where")
_EXPORTS: dict[str, str] = {
    "load": "attngen.dsl", "parse": "attngen.dsl",
    **{name: "attngen.dsl.builders" for name in _BUILDERS},
    "AttnGenError": "attngen.errors", "PatternError": "attngen.errors",
    "Pattern": "attngen.ir.pattern",
    "BlockLayout": "attngen.lower", "Plan": "attngen.lower", "layout": "attngen.lower",
    "lower": "attngen.lower",
    "Kernel": "attngen.runtime", "attention": "attngen.runtime", "compile": "attngen.runtime",
    "decode": "attngen.runtime",
}
__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'attngen' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # importing the subpackage attngen.lower sets attngen.lower to it; the function
        # lower keeps that name (the subpackage stays in sys.modules)
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
