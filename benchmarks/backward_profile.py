"""Where a training step's time goes: torch.profiler over forward + backward steps of attngen
and of FlexAttention (same block mask) on the GPU; per system, the GPU time of each kernel
per step and the step's wall time. Writes JSON (and prints the tables).
Usage: python benchmarks/backward_profile.py OUT.json [N] [patterns...]"""
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import attngen
from attngen.bench import kernels as bench
from attngen.bench.kernels import _flex, _flex_fn

STEPS = 5


def main(path: str, N: int = 32768, patterns=("local(4096)", "causal")) -> None:
    H, D, dtype, dev = 32, 128, torch.bfloat16, "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, do = (torch.randn(1, H, N, D, device=dev, dtype=dtype, generator=g)
                   for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    rows = []
    for text in patterns:
        p = attngen.parse(text)
        bm, _ = _flex(p, N, H, dev)
        for name, fn in (("attngen", lambda a, b, c: attngen.attention(a, b, c, p)),
                         ("flex", lambda a, b, c: _flex_fn()(a, b, c, block_mask=bm))):
            def step():
                q.grad = k.grad = v.grad = None
                fn(q, k, v).backward(do)
            for _ in range(3):  # compile, tune, warm up
                step()
            torch.cuda.synchronize()
            wall = bench._time(step, 10)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(STEPS):
                    step()
                torch.cuda.synchronize()
            kernels = {}
            for e in prof.key_averages():
                gpu = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
                if gpu and e.key and not e.key.startswith(("aten::", "autograd", "Torch",
                                                           "attngen::", "cuda")):
                    kernels[e.key[:120]] = {"ms_per_step": gpu / 1000 / STEPS,
                                            "calls_per_step": e.count / STEPS}
            row = {"pattern": text, "N": N, "system": name,
                   "step_ms_median": sorted(wall)[len(wall) // 2],
                   "gpu_ms_per_step": sum(x["ms_per_step"] for x in kernels.values()),
                   "kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["ms_per_step"]))}
            rows.append(row)
            print(f"\n{text} {name}: step {row['step_ms_median']:.2f} ms, kernels "
                  f"{row['gpu_ms_per_step']:.2f} ms", flush=True)
            for key, x in row["kernels"].items():
                print(f"  {x['ms_per_step']:8.3f} ms  x{x['calls_per_step']:.0f}  {key}")
    meta = bench.run_meta("backward-profile", B=1, H=H, D=D, dtype=str(dtype))
    json.dump({"meta": meta, "rows": rows}, open(path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], *([int(sys.argv[2])] if len(sys.argv) > 2 else []),
         *([tuple(sys.argv[3:])] if len(sys.argv) > 3 else []))
