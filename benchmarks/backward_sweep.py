"""Per-pass sweep of the generated backward on a GPU: each (BLOCK_M, BLOCK_N, warps, stages)
of the dK/dV pass and of the dQ pass, with the ranges loops fused (one loop per block run,
masking decided per block, the default) or split (three loops per run), on the same inputs.
Writes JSON; docs/backward.md reads it.
Usage: python benchmarks/backward_sweep.py OUT.json [N] [patterns...]"""
import json
import statistics
import sys

import torch

import attngen
from attngen.bench import kernels as bench
from attngen.runtime import backward
from attngen.runtime.kernel import Config

DKDV = [(64, 64, 4, 2), (32, 64, 4, 3), (64, 128, 8, 2), (64, 128, 8, 3), (64, 64, 4, 4),
        (32, 64, 4, 2), (32, 128, 8, 3)]
DQ = [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 2), (128, 64, 8, 4), (64, 128, 4, 2),
      (128, 32, 4, 3)]


def main(path: str, N: int = 32768, patterns=("local(4096)", "causal")) -> None:
    H, D, dtype, dev = 32, 128, torch.bfloat16, "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, do = (torch.randn(1, H, N, D, device=dev, dtype=dtype, generator=g)
                   for _ in range(4))
    rows = []
    for text in patterns:
        for fused in (True, False):
            kern = attngen.compile(text, head_dim=D, dtype=dtype, heads=H, device=dev,
                                   options={"fused_loops": fused})
            out, lse, _ = kern.forward(q, k, v)
            for phase, cands in (("dkdv", DKDV), ("dq", DQ)):
                for c in cands:
                    row = {"pattern": text, "N": N, "fused_loops": fused, "pass": phase,
                           "config": list(c)}
                    try:
                        bufs = backward._buffers(kern, q, k, v, out, do, None)

                        def run(c=c, bufs=bufs):
                            backward._phase(kern, phase, Config(*c), q, k, v, lse, do, None,
                                            None, *bufs)
                        times = bench._time(run, 10)
                        row.update(ms=statistics.median(times), times_ms=times)
                    except Exception as e:  # a configuration this compiler cannot build
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    rows.append(row)
                    print(row.get("pattern"), fused, phase, c, row.get("ms", row.get("error")),
                          flush=True)
    meta = bench.run_meta("backward-sweep", B=1, H=H, D=D, dtype=str(dtype))
    json.dump({"meta": meta, "rows": rows}, open(path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], *([int(sys.argv[2])] if len(sys.argv) > 2 else []),
         *([tuple(sys.argv[3:])] if len(sys.argv) > 3 else []))
