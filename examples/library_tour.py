"""The bundled pattern library: every published pattern family, its density at 8K keys.

    python examples/library_tour.py
"""
import re

import torch

import attngen
from attngen import library

N = 8192
print(f"{'file':<20} {'definition':<20} {'density':>8} {'blocks':>8}  pattern")
for stem, path in sorted(library.files().items()):
    p = attngen.load(stem)  # a file's last definition (attngen.load(path, name) for others)
    name = re.findall(r"^def (\w+)", path.read_text(), re.MULTILINE)[-1]
    heads = 8 if p.is_mixture else 1  # the bundled mixtures are 8-head layouts
    if p.is_dynamic:  # vertical_slash / block_topk pick their blocks at run time
        density, blocks = "dynamic", "dynamic"
    else:
        uses_docs = "document" in str(p)  # document ids are a run-time input: 4 documents
        doc_ids = torch.arange(N) * 4 // N if uses_docs else None
        lay = attngen.layout(p, N, N, block=128, heads=heads, doc_ids=doc_ids)
        causal_blocks = sum(attngen.layout(attngen.causal, N, N, block=128).block_counts())
        density = f"{lay.density():.4f}"
        blocks = f"{sum(lay.block_counts()) / (causal_blocks * heads):.2%}"
    text = str(p) if len(str(p)) < 60 else str(p)[:57] + "..."
    print(f"{stem:<20} {name:<20} {density:>8} {blocks:>8}  {text}")

# A named definition with its own parameters: MInference's Tri-shape from streaming.attn.
tri = attngen.load("streaming", "tri_shape")
print("\ntri_shape:", tri, f"density at {N}: {tri.density(N, N):.4f}")
