"""attngen: a compiler for sparse attention.

    import attngen
    p = attngen.parse("causal & (sink(128) | local(4096))")
    lay = attngen.layout(p, 8192, 8192, block=128)
"""
from attngen.dsl import load, parse
from attngen.dsl.builders import (
                              band,
                              block_cover,
                              block_topk,
                              causal,
                              columns,
                              dilated,
                              document,
                              fixed,
                              full,
                              heads,
                              kv_heads,
                              local,
                              power,
                              radial,
                              rows,
                              sink,
                              strided,
                              vertical_slash,
                              where,
)
from attngen.errors import AttnGenError, PatternError
from attngen.ir.pattern import Pattern
from attngen.lower import BlockLayout, Plan, layout, lower
from attngen.runtime import Kernel, attention, compile, decode
from attngen.version import __version__ as __version__

__all__ = [
    "AttnGenError", "BlockLayout", "Kernel", "Pattern", "PatternError", "Plan", "attention",
    "band", "block_cover", "block_topk", "causal", "columns", "compile", "decode", "dilated",
    "document", "fixed", "full", "heads", "kv_heads", "layout", "load", "local", "lower",
    "parse", "power", "radial", "rows", "sink", "strided", "vertical_slash", "where",
]
