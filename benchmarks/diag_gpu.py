"""Where the reference plan's prefill time goes on the GPU: the mixture kernel against each of
its groups alone (8 heads each) and dense causal, at one length, with a torch.profiler
kernel table of the mixture call; then the shapes the HF path hands over (a transposed q,
per-row key views of odd length) with the error's traceback if one fails.

    python benchmarks/diag_gpu.py --n 32768
"""
import argparse
import json
import os
import traceback

import torch
import triton.testing

import attngen

PLAN = ("heads { 0..7: causal; 8..15: causal & (sink(128) | local(4096)); "
        "16..23: vertical_slash(1000, 6000); *: causal & (local(1024) | strided(128)) }")
# where the vertical_slash group's time goes: few slashes, few columns, and a band of the
# same element count for comparison
EXTRA = ["vertical_slash(1000, 100)", "vertical_slash(30, 6000)", "causal & local(7000)",
         "heads { 0..7: causal; *: causal & (local(1024) | strided(128)) }"]
GROUPS = ["causal", "causal & (sink(128) | local(4096))", "vertical_slash(1000, 6000)",
          "causal & (local(1024) | strided(128))"]


def ms(fn):
    return triton.testing.do_bench(fn, warmup=3, rep=15)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--quick", action="store_true",
                    help="the plan, its groups, causal and SDPA only")
    args = ap.parse_args()
    N, out = args.n, {"device": torch.cuda.get_device_name()}
    torch.manual_seed(0)
    q = torch.randn(1, N, 32, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(1, 8, N, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    rows = {}
    for name, text, qq, kk, vv in [("plan", PLAN, q, k, v)] + [
            (g, g, q[:, 8 * i:8 * i + 8], k[:, 2 * i:2 * i + 2], v[:, 2 * i:2 * i + 2])
            for i, g in enumerate(GROUPS)] + [("causal32", "causal", q, k, v)] + [
            (t, t, q[:, 16:24], k[:, 4:6], v[:, 4:6]) for t in ([] if args.quick else EXTRA)]:
        try:
            attngen.attention(qq, kk, vv, text)
            rows[name] = ms(lambda: attngen.attention(qq, kk, vv, text))
        except Exception as e:
            rows[name] = f"{type(e).__name__}: {e}"[:300]
        print(name, rows[name], flush=True)
    qc = q.contiguous()
    rows["plan_contiguous_q"] = ms(lambda: attngen.attention(qc, k, v, PLAN))
    rows["sdpa_causal_gqa"] = ms(lambda: torch.nn.functional.scaled_dot_product_attention(
        qc, k, v, is_causal=True, enable_gqa=True))
    # dense causal: which configuration the untuned first call settled on, with and
    # without tensor descriptors, and the 64-wide tiles
    from attngen.runtime.kernel import Config
    causal = attngen.compile("causal", head_dim=128, dtype=torch.bfloat16, heads=32, kv_heads=8)
    out["causal_tuned"] = {b: [c.block_m, c.block_n, c.warps, c.stages]
                           for b, c in causal.tuned.items()}
    out["causal_tma"] = causal.tma
    for tma, c in [(True, (128, 128, 8, 3)), (False, (128, 128, 8, 3)), (True, (128, 64, 8, 3)),
                   (False, (128, 64, 8, 3))]:
        saved, causal.tma = causal.tma, tma
        try:
            rows[f"causal32@{c},tma={tma}"] = ms(lambda: causal.launch(qc, k, v, Config(*c), None, None))
        except Exception as e:
            rows[f"causal32@{c},tma={tma}"] = f"{type(e).__name__}: {e}"[:200]
        causal.tma = saved
    # the vertical_slash group: its estimate alone, and its kernel alone on that estimate
    from attngen.runtime import dynamic
    vs = attngen.compile(GROUPS[2], head_dim=128, dtype=torch.bfloat16, heads=8, kv_heads=2)
    qv, kv_, vv_ = q[:, 16:24], k[:, 4:6], v[:, 4:6]
    rows["vs_pick"] = ms(lambda: dynamic.pick(vs.spec.dynamic, qv, kv_, 128 ** -0.5, vs.module))
    est = dynamic.pick(vs.spec.dynamic, qv, kv_, 128 ** -0.5, vs.module)
    rows["vs_kernel"] = ms(lambda: vs.launch(qv, kv_, vv_, Config(128, 128, 8, 3), None, None, est))
    print(rows, out["causal_tuned"], out["causal_tma"], flush=True)
    out["rows_ms"] = rows
    if args.quick:
        with open(os.path.join(os.environ.get("OUT", "."), f"diag_{N}_quick.json"), "w") as f:
            json.dump(out, f, indent=1)
        return
    for name, text in [("no_vs", PLAN.replace("vertical_slash(1000, 6000)", "causal & local(7000)")),
                       ("no_strided", PLAN.replace("(local(1024) | strided(128))", "local(1024)"))]:
        rows[name] = ms(lambda: attngen.attention(q, k, v, text))
        print(name, rows[name], flush=True)
    # the plan and its vertical_slash group under each block configuration (the e2e bench
    # runs untuned: the first), and the vertical_slash estimate and its indices alone
    from attngen.lower.grid import Grid
    from attngen.runtime.kernel import GPU_CONFIGS
    for name, text, qq, kk, vv in [("plan", PLAN, q, k, v),
                                   ("vs", GROUPS[2], q[:, 16:24], k[:, 4:6], v[:, 4:6])]:
        kern = attngen.compile(text, head_dim=128, dtype=torch.bfloat16, heads=qq.shape[1],
                               kv_heads=kk.shape[1])
        for c in GPU_CONFIGS:
            try:
                rows[f"{name}@{c}"] = ms(lambda: kern.launch(qq, kk, vv, Config(*c), None, None))
            except Exception as e:
                rows[f"{name}@{c}"] = f"{type(e).__name__}: {e}"[:200]
            print(name, c, rows[f"{name}@{c}"], flush=True)
        if name == "vs":
            parts = kern.spec.dynamic
            est = dynamic.pick(parts, qq, kk, 128 ** -0.5, kern.module)
            rows["vs_pick"] = ms(lambda: dynamic.pick(parts, qq, kk, 128 ** -0.5, kern.module))
            for c in GPU_CONFIGS[:2]:
                grid = Grid(N, N, c[0], c[1])
                rows[f"vs_indices@{c[:2]}"] = ms(lambda: dynamic.indices(parts, est, 1, 8, N, grid))
                part, full, _, counts = dynamic._blocks(parts, est, 1, 8, N, grid)
                rows[f"vs_blocks@{c[:2]}"] = {
                    "partial": part.float().mean().item(), "full": full.float().mean().item(),
                    "causal": (grid.QB + 1) / (2 * grid.KB), "columns": counts.float().mean().item()}
            print({k2: v2 for k2, v2 in rows.items() if k2.startswith("vs_")}, flush=True)
    kern = attngen.compile(PLAN, head_dim=128, dtype=torch.bfloat16, heads=32, kv_heads=8)
    out["groups"] = [[p.strategy for p in g.parts] for g in kern.spec.groups]
    out["tma"], out["periods"] = kern.tma, list(kern.spec.periods)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        attngen.attention(q, k, v, PLAN)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    print(table, flush=True)
    out["profile"] = table
    # the HF path's per-row views: odd lengths, a row starting past 0
    errors = {}
    for text in ("causal", PLAN):
        try:
            s, e = 1001, 8192 + 517
            kv = torch.randn(1, 8, 9000, 128, device="cuda", dtype=torch.bfloat16)
            attngen.attention(q[:, :, :e - s], kv[:, :, s:e], kv[:, :, s:e], text)
            torch.cuda.synchronize()
            errors[text] = "ok"
        except Exception:
            errors[text] = traceback.format_exc()[-3000:]
        print(text, errors[text][-1500:], flush=True)
    out["views"] = errors
    with open(os.path.join(os.environ.get("OUT", "."), f"diag_{N}.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
