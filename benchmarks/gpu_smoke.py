"""GPU smoke check: generated kernels in bf16/fp16 vs the fp32 oracle on small odd shapes,
using the TESTING.md rule  max|out - ref| <= 2 * max|sdpa_lowp - ref| + 1e-5."""
import sys
import time

import torch

import attngen
from attngen.codegen.torch_predicate import predicate_fn
from attngen.runtime import dynamic

CASES = ["causal", "local(100)", "causal & (sink(16) | local(200))", "causal & strided(7)",
         "causal & (local(64) | strided(32))", "heads { 0..3: causal; *: local(77) }",
         "causal & fixed(64, 8)", "power(32) & causal | sink(16)", "causal & dilated(100, 4)",
         "heads { 0..3: causal & strided(8); *: causal & (sink(4) | local(64) | strided(16)) }"]
SHAPES = [(113, 203, 8, 2, 64), (1024, 1023, 8, 8, 128), (1, 777, 8, 1, 128)]
RUNS = ((torch.bfloat16, CASES), (torch.float16, CASES[:3]))
if "--odd-head-dims" in sys.argv:  # head dims padded to a power of two inside the kernel
    SHAPES = [(113, 203, 8, 2, 80), (1024, 1023, 8, 8, 96)]
    RUNS = ((torch.bfloat16, CASES[:4]),)
if "--dynamic" in sys.argv:  # masks from the same estimate (runtime.dynamic.allowed)
    CASES = ["vertical_slash(64, 200)", "sink(64) | vertical_slash(100, 300)",
             "block_topk(4, 64)", "block_cover(0.9, 64)", "local(256) & block_topk(2, 32)",
             "heads { 0: vertical_slash(30, 100); 1: block_topk(3, 64); 2: local(77); "
             "3: sink(8) | block_cover(0.8, 32); *: causal }"]
    SHAPES = [(113, 203, 8, 2, 64), (1024, 1023, 8, 8, 128), (1, 777, 8, 1, 128),
              (2048, 2048, 8, 4, 128)]
    RUNS = ((torch.bfloat16, CASES), (torch.float16, CASES[:2]))
failed = 0
for dtype, cases in RUNS:
    for text in cases:
        for (M, N, H, HKV, D) in SHAPES:
            p = attngen.parse(text)
            q = torch.randn(1, H, M, D, device="cuda", dtype=dtype)
            k = torch.randn(1, HKV, N, D, device="cuda", dtype=dtype)
            v = torch.randn(1, HKV, N, D, device="cuda", dtype=dtype)
            t0 = time.time()
            out, lse = attngen.attention(q, k, v, p, return_lse=True)
            torch.cuda.synchronize()
            first = time.time() - t0
            if p.is_dynamic:
                mask = dynamic.allowed(p, q, k, D ** -0.5)
            else:
                masks = [predicate_fn(n, M, N)(torch.arange(M, device="cuda")[:, None] + N - M,
                                              torch.arange(N, device="cuda")[None, :])
                         for n in p.head_nodes(H, HKV)]
                mask = torch.stack(masks)[None]
            kr, vr = (t.repeat_interleave(H // HKV, 1) for t in (k, v))
            ref = torch.nn.functional.scaled_dot_product_attention(q.float(), kr.float(), vr.float(), attn_mask=mask)
            low = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, attn_mask=mask)
            err = (out.float() - ref).abs().max().item()
            low_err = (low.float() - ref).abs().max().item()
            ok = err <= 2 * low_err + 1e-5 and torch.isfinite(out).all()
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {str(dtype)[6:]:9} {text:45} M={M} N={N} H={H}/{HKV} D={D} "
                  f"err={err:.2e} sdpa={low_err:.2e} ratio={err / max(low_err, 1e-9):.2f} first={first:.1f}s", flush=True)
print("failed", failed)
sys.exit(1 if failed else 0)
