"""Which part of a dynamic kernel costs what (H100, timing only, results NOT correct for
the altered variants): the generated vertical_slash kernel as is, without the per-element
offset test, and without any estimate test. B=1 H=32 D=128 bf16, N=32768, median of 10."""
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

import attngen

TEST = "on_slash = tl.load(DIAG + offset, mask=causal, other=0) != 0"
VARIANTS = {"as generated": None, "no offset gather": "on_slash = offset < 0",
            "no estimate test": "on_slash = offset >= 0"}
N = 32768
q, k, v = (torch.randn(1, 32, N, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
kern = attngen.compile("vertical_slash(1000, 6096)", head_dim=128, heads=32)
kern(q, k, v)
source = kern.source
for name, replacement in VARIANTS.items():
    if replacement is not None:
        tmp = Path(tempfile.mkdtemp())
        shutil.copytree(kern.path, tmp / "k")
        (tmp / "k" / "kernel.py").write_text(source.replace(TEST, replacement))
        kern.path, kern.module = tmp / "k", None
    kern(q, k, v)
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        kern(q, k, v)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    print(f"variant {name:20} {statistics.median(times):8.3f} ms  config {kern.config(q, k, v, None)}",
          flush=True)
