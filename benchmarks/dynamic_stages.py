"""Where the time of a dynamic estimate goes (H100): each stage of runtime.dynamic timed
with CUDA events, median of 10, B=1 H=32 D=128 bf16. Usage: python dynamic_stages.py N…"""
import json
import statistics
import sys

import torch

import attngen
from attngen.bench.kernels import _time
from attngen.lower.grid import Grid
from attngen.lower.kernel_plan import KernelSpec
from attngen.runtime import dynamic


def timed(fn, repeats=10):
    return statistics.median(_time(fn, repeats, warmup=1))


result = {}
for N in map(int, sys.argv[1:]):
    q, k = (torch.randn(1, 32, N, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    qh, kh = q[0], k[0]
    grid = Grid(N, N, 128, 64)
    sets = dynamic.vertical_slash_sets(qh, kh, 1000, 6096, 128 ** -0.5)
    crossed = dynamic.slash_blocks(sets[1], grid)
    either = crossed[0] | crossed[1]
    part = KernelSpec.build(attngen.parse("vertical_slash(1000, 6096)"), 32).dynamic[0]
    module = attngen.compile("vertical_slash(1000, 6096)", heads=32).load().module
    stages = {
        "vertical_slash_sets (PyTorch)": lambda: dynamic.vertical_slash_sets(
            qh, kh, 1000, 6096, 128 ** -0.5),
        "vertical_slash_sets (estimation kernels)": lambda: dynamic.vertical_slash_sets(
            qh, kh, 1000, 6096, 128 ** -0.5, module),
        "slash_blocks": lambda: dynamic.slash_blocks(sets[1], grid),
        "vertical_columns": lambda: dynamic.vertical_columns(sets[0], either, grid),
        "estimate (all, kernels)": lambda: dynamic.estimate([part], q, k, 128 ** -0.5, grid,
                                                            module),
        "block_picks topk(64, 64)": lambda: dynamic.block_picks(qh, kh, "block_topk",
                                                                [64, 64], 128 ** -0.5),
    }
    result[N] = {name: timed(fn) for name, fn in stages.items()}
    print(N, json.dumps(result[N]), flush=True)
