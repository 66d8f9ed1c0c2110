"""attngen in one page: write a pattern, look at it, lower it, hand it to FlexAttention.

    python examples/quickstart.py
"""
import warnings

import torch
from torch.nn.attention.flex_attention import flex_attention

import attngen
from attngen import causal, local, sink
from attngen.reference import attention

# 1. A pattern from text and the same pattern from the Python builder: equal objects.
text = "causal & (sink(128) | local(4096))"
p = attngen.parse(text)
assert p == causal & (sink(128) | local(4096))
assert attngen.parse(str(p)) == p  # str() is canonical text that parses back
print("pattern:", p)

# 2. The exact mask at a small size ([heads, M, N] bools; pictures and tests only).
small = attngen.parse("causal & (sink(2) | local(4))")
mask = small.mask(8, 8)[0]
for row in mask.tolist():
    print("".join("#" if allowed else "." for allowed in row))

# 3. The exact block layout at 32K keys: 0 empty, 1 partial, 2 full blocks.
lay = attngen.layout(p, 32768, 32768, block=128)
partial, full = lay.block_counts()
print(f"layout: {lay.grid.QB}x{lay.grid.KB} blocks, {partial} partial + {full} full, "
      f"density {lay.density():.4f} of causal")

# 4. The plan a kernel will run: the strategy of every term and its cost.
plan = attngen.lower(p, 32768, 32768, block=128)
print(plan.summary())
assert plan.groups[0].terms[0].strategy == "ranges"  # sink | local: closed-form kv ranges

# 5. Export to FlexAttention and check it against attngen's dense reference. (Eager
#    flex_attention on CPU is the unfused reference path; it warns that it is not compiled.)
warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
N, H = 256, 2
p_small = attngen.parse("causal & (sink(16) | local(64))")
block_mask = attngen.layout(p_small, N, N, block=128, heads=H).to_block_mask()
torch.manual_seed(0)
q, k, v = (torch.randn(1, H, N, 32) for _ in range(3))
out_flex = flex_attention(q, k, v, block_mask=block_mask)
out_ref = attention(q, k, v, p_small)
err = (out_flex - out_ref).abs().max().item()
print(f"flex_attention with the attngen block mask vs reference: max |diff| = {err:.2e}")
assert err < 1e-4
