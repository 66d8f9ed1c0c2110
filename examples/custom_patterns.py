"""Your own pattern file: definitions with defaults, a per-head mixture, errors, a picture.

    python examples/custom_patterns.py     # writes custom_heads.png in the current directory
"""
import tempfile
from pathlib import Path

import attngen
from attngen.viz import ascii_blocks, ascii_mask, save_png

SOURCE = """\
# Sinks plus a window whose width grows with the sequence (an integer expression over N).
def elastic(s=64, frac=0.25) = causal & (sink(s) | local(max(256, frac * N)))

# Strided Sparse Transformer head, and a per-head mixture of three kinds of head.
def strided_head(l=128) = causal & (local(l) | strided(l))
def layer() = heads { 0..1: causal; 2..5: elastic(); *: strided_head(64) }
"""

path = Path(tempfile.mkdtemp()) / "mine.attn"
path.write_text(SOURCE)

layer = attngen.load(path)  # the last definition: layer()
elastic = attngen.load(path, "elastic")  # a named definition, with its defaults
print("layer:  ", layer)
print("elastic:", elastic)

# The same shape at toy size (2 sinks, window max(4, N // 4)), one character per (q, k):
print(ascii_mask(attngen.parse("causal & (sink(2) | local(max(4, N // 4)))"), 16, 16))
print("elastic density at 4K / 16K:",
      f"{elastic.density(4096, 4096):.3f} / {elastic.density(16384, 16384):.3f}")

# Eight heads: the plan groups heads that share a pattern and picks a strategy per term.
plan = attngen.lower(layer, 4096, 4096, block=128, heads=8)
print(plan.summary())
for group in plan.groups:
    print("heads", group.heads, "->", [t.strategy for t in group.terms])
print(ascii_blocks(attngen.layout(layer, 2048, 2048, block=128, heads=8)))

# Mistakes are reported with file, line, column and a caret, never a traceback.
for bad in ["causal & loacl(128)", "local(0)", "heads { 0..3: causal; 2: local(8) }"]:
    try:
        attngen.parse(bad)
    except attngen.PatternError as e:
        print(e)

png = save_png(layer, 2048, 2048, 64, "custom_heads.png", heads=8)
print("wrote", png.resolve())
