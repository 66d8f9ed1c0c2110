"""Kernel-cache latency: first call in a new process (cold and warm caches), and a warm
in-process `attngen.compile` hit; `import attngen` against `import torch` (new processes,
median of 7 each).

    python benchmarks/cache_latency.py --out cache_latency.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPORT = r"""
import time
t0 = time.perf_counter()
import {module}
print(time.perf_counter() - t0)
"""
CHILD = r"""
import time
t0 = time.perf_counter()
import torch, attngen
t1 = time.perf_counter()
attngen.compile  # the stages attngen loads on first use (import attngen is lazy)
tl = time.perf_counter()
dev = "cuda" if torch.cuda.is_available() else "cpu"
dt = torch.bfloat16 if dev == "cuda" else torch.float32
D = 128 if dev == "cuda" else 16
q = torch.randn(1, 8, 1024, D, device=dev, dtype=dt)  # the CUDA context: not attngen's
k, v = torch.randn_like(q), torch.randn_like(q)
if dev == "cuda":
    torch.cuda.synchronize()
tc = time.perf_counter()
kern = attngen.compile("causal & (sink(128) | local(512))", head_dim=D, dtype=dt, heads=8,
                       device=dev)
t2 = time.perf_counter()
kern(q, k, v)
if dev == "cuda":
    torch.cuda.synchronize()
t3 = time.perf_counter()
print(t1 - t0, tl - t1, t2 - tc, t3 - t2, kern.rendered)
"""


def child(env):
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    imp, load, comp, first = (float(x) for x in out[:4])
    return {"import_s": imp, "load_stages_s": load, "compile_s": comp, "first_call_s": first,
            "rendered": out[4] == "True"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="cache_latency.json")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="attngen-latency-")
    env = dict(os.environ, ATTNGEN_CACHE_DIR=f"{root}/attngen", TRITON_CACHE_DIR=f"{root}/triton")
    result = {"cold_caches": child(env), "warm_caches": child(env)}
    for module in ("torch", "attngen"):
        result[f"import_{module}_s"] = statistics.median(
            float(subprocess.run([sys.executable, "-c", IMPORT.format(module=module)], env=env,
                                 capture_output=True, text=True, check=True).stdout)
            for _ in range(7))
    result["import_ratio"] = result["import_attngen_s"] / result["import_torch_s"]
    import torch

    import attngen

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ["ATTNGEN_CACHE_DIR"] = f"{root}/attngen"
    attngen.compile("causal & (sink(128) | local(512))", head_dim=128, heads=8, device=dev)
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        attngen.compile("causal & (sink(128) | local(512))", head_dim=128, heads=8, device=dev)
        times.append(time.perf_counter() - t)
    result["warm_in_process_compile_us"] = {"median": statistics.median(times) * 1e6,
                                            "p99": sorted(times)[int(0.99 * len(times))] * 1e6}
    result["device"] = torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)"
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
