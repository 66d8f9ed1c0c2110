"""Forward + backward on the GPU: attngen's generated kernels vs FlexAttention (same block
mask) and cuDNN SDPA causal; gradient error vs an fp32 reference at a small size.
Usage: python benchmarks/backward_h100.py OUT.json"""
import json
import statistics
import sys

import torch

import attngen
from attngen.bench import kernels as bench

H, D, dtype, dev = 32, 128, torch.bfloat16, "cuda"
rows = []


def grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    fn(q, k, v).backward(do)
    return q.grad, k.grad, v.grad


# correctness: bf16 kernels vs an fp32 reference, next to Flex's bf16 error
for text in ["causal", "local(256)", "causal & (local(128) | strided(64))"]:
    p = attngen.parse(text)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, do = (torch.randn(1, 8, 1024, D, device=dev, dtype=dtype, generator=g) for _ in range(4))
    ref = grads(lambda a, b, c: attngen.attention(a, b, c, p, backend="reference"),
                q.float(), k.float(), v.float(), do.float())
    ours = grads(lambda a, b, c: attngen.attention(a, b, c, p), q, k, v, do)
    bm, _ = bench._flex(p, 1024, 8, dev)
    flex = grads(lambda a, b, c: bench._flex_fn()(a, b, c, block_mask=bm), q, k, v, do)
    err = [max((x.float() - r).abs().max().item() for x, r in zip(s, ref)) for s in (ours, flex)]
    rows.append({"pattern": text, "check": "max grad error vs fp32", "attngen": err[0],
                 "flex": err[1]})
    print(rows[-1], flush=True)

# timing: fwd+bwd at 32K
N = 32768
g = torch.Generator(device=dev).manual_seed(1)
q, k, v, do = (torch.randn(1, H, N, D, device=dev, dtype=dtype, generator=g) for _ in range(4))
q, k, v = (t.requires_grad_() for t in (q, k, v))


def step(fn):
    def run():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(do)
    return run


for text in ["causal", "local(4096)", "causal & (local(1024) | strided(128))"]:
    p = attngen.parse(text)
    bm, _ = bench._flex(p, N, H, dev)
    systems = {"attngen": lambda a, b, c: attngen.attention(a, b, c, p),
               "flex": lambda a, b, c: bench._flex_fn()(a, b, c, block_mask=bm)}
    if text == "causal":
        systems["sdpa"] = lambda a, b, c: torch.nn.functional.scaled_dot_product_attention(
            a, b, c, is_causal=True)
    for name, fn in systems.items():
        times = bench._time(step(fn), 10)
        rows.append({"pattern": text, "N": N, "system": name, "fwd_bwd_ms": statistics.median(times)})
        print(rows[-1], flush=True)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
          open(sys.argv[1], "w"), indent=2)
