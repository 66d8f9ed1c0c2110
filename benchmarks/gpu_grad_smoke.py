"""GPU smoke check of the dynamic backward: bf16 gradients of the generated kernels vs fp32
autograd of SDPA with the mask of the same estimate (the kernel's own, read from its
flags), on odd shapes with GQA and M != N; the rule of TESTING.md applied to each gradient:
max|grad - ref| <= 2 * max|sdpa_bf16 grad - ref| + 1e-5.
Usage: python benchmarks/gpu_grad_smoke.py [patterns...]"""
import sys

import torch

import attngen
from attngen.runtime import dynamic

CASES = ["vertical_slash(64, 200)", "vertical_slash(300, 100)", "block_topk(4, 64)",
         "block_cover(0.9, 64)"]
CASES = sys.argv[1:] or CASES
SHAPES = [(1000, 1000, 8, 2, 128), (777, 1023, 8, 8, 128), (2048, 2048, 8, 4, 64)]


def mask_of(est: dynamic.Estimate, text: str, H: int, M: int, N: int) -> torch.Tensor:
    """bool [1, H, M, N]: the pairs the estimate allows (pure dynamic patterns)."""
    pos = torch.arange(M, device="cuda") + (N - M)
    key = torch.arange(N, device="cuda")
    causal = key[None, :] <= pos[:, None]
    if text.startswith("vertical_slash"):
        d = (pos[:, None] - key[None, :]).clamp(min=0)
        allowed = (est.diag[:, d] != 0) | (est.vert[:, None, :] != 0)
    else:
        g = int(text.split(",")[1].strip(" )"))
        P = est.pick_row
        pick = est.pick.view(H, P, P) != 0
        allowed = pick[:, (pos // g).clamp(max=P - 1)][:, :, key // g]
    return (allowed & causal)[None]


def grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    fn(q, k, v).backward(do)
    return q.grad, k.grad, v.grad


failed = 0
for text in CASES:
    for M, N, H, HKV, D in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(M + N)
        q, do = (torch.randn(1, H, M, D, device="cuda", dtype=torch.bfloat16, generator=g)
                 for _ in range(2))
        k, v = (torch.randn(1, HKV, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
                for _ in range(2))
        kern = attngen.compile(text, head_dim=D, dtype=torch.bfloat16, heads=H, kv_heads=HKV)
        out, lse, est = kern.forward(q, k, v)
        ours = kern.backward(q, k, v, out, lse, do, estimate=est)
        mask = mask_of(est, text, H, M, N)

        def sdpa(a, b, c):
            return torch.nn.functional.scaled_dot_product_attention(a, b, c, attn_mask=mask,
                                                                    enable_gqa=True)
        ref = grads(sdpa, q.float(), k.float(), v.float(), do.float())
        low = grads(sdpa, q, k, v, do)
        rows = mask.any(-1)  # rows with no allowed key: SDPA gives NaN, attngen zeros
        for name, a, r, s in zip(("dq", "dk", "dv"), ours, ref, low):
            r, s = r.nan_to_num(), s.nan_to_num()
            err = (a.float() - r).abs().max().item()
            bound = 2 * (s.float() - r).abs().max().item() + 1e-5
            ok = err <= bound and torch.isfinite(a).all().item()
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {text:26s} M={M} N={N} H={H}/{HKV} D={D} "
                  f"{name} err {err:.2e} bound {bound:.2e} "
                  f"(rows without keys {int((~rows).sum())})", flush=True)
print("failed", failed)
raise SystemExit(1 if failed else 0)
