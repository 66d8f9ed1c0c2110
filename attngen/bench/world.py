"""`attngen bench --world N`: attngen.distributed against a dense context-parallel baseline,
launched with torchrun (one process per GPU; gloo and the interpreter on a CPU).

    torchrun --nproc-per-node 2 -m attngen bench --world 2 --lengths 131072 --out w.json

Per pattern and length, every rank times (median of CUDA-event or wall timings, after
warm-up):

    attngen   distributed.attention on its shard: the plan's split, only the visited
              K/V blocks received, the single-GPU kernel on its rows
    dense     the baseline every dense engine pays at least: all K/V gathered to every
              rank (what a ring moves in total), then causal SDPA of its equal-token rows

and reports the bytes each rank received; rank 0 writes the JSON and markdown with the
slowest rank's time (the step time) and the largest per-rank traffic. Strong scaling: the
same lengths at several --world sizes; weak scaling: lengths growing with the world.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from attngen import distributed
from attngen.bench.model import Timer

PATTERNS = ["causal", "causal & local(4096)", "causal & (sink(128) | local(4096))",
            "causal & document"]


def _dense(q_rows: torch.Tensor, k_local: torch.Tensor, v_local: torch.Tensor, lo: int):
    """All keys gathered (equal shares), then causal SDPA of this rank's rows against the
    keys up to its last row: is_causal for the first rank (its rows start at 0), a
    lower-right causal bias for the others (no M × N mask is ever built)."""
    from torch.nn.attention.bias import causal_lower_right

    world = dist.get_world_size()
    parts_k = [torch.empty_like(k_local) for _ in range(world)]
    parts_v = [torch.empty_like(v_local) for _ in range(world)]
    dist.all_gather(parts_k, k_local.contiguous())
    dist.all_gather(parts_v, v_local.contiguous())
    M = q_rows.shape[2]
    k, v = torch.cat(parts_k, 2)[:, :, :lo + M], torch.cat(parts_v, 2)[:, :, :lo + M]
    if lo == 0:
        return torch.nn.functional.scaled_dot_product_attention(q_rows, k, v, is_causal=True,
                                                                enable_gqa=True)
    group = q_rows.shape[1] // k.shape[1]  # the bias path takes no enable_gqa
    k, v = (t.repeat_interleave(group, 1) for t in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(
        q_rows, k, v, attn_mask=causal_lower_right(M, lo + M))


def run(lengths: list[int], patterns: list[str] | None, heads: int, kv_heads: int,
        head_dim: int, repeats: int, log: Callable[[str], None] = print) -> dict:
    """Every rank calls this under an initialised process group; rank 0's result is whole."""
    world, rank = dist.get_world_size(), dist.get_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device)

    def time_it(fn: Callable[[], object], repeats: int) -> list[float]:
        # warm-up: compiles, plans, first exchange; ranks start each timed call together
        return timer(fn, repeats, before=dist.barrier)

    rows = []
    for N in lengths:
        g = torch.Generator(device="cpu").manual_seed(N)
        q = torch.randn(1, heads, N, head_dim, generator=g).to(device, dtype)
        k = torch.randn(1, kv_heads, N, head_dim, generator=g).to(device, dtype)
        v = torch.randn(1, kv_heads, N, head_dim, generator=g).to(device, dtype)
        docs = (torch.randint(1, 8, (N,), generator=g).cumsum(0) * 8 // N).to(device)
        for text in patterns or PATTERNS:
            doc = docs if "document" in text else None
            shards = distributed.plan_shards(text, N, world, doc_ids=doc)
            local = [distributed.shard(t, text, doc_ids=doc) for t in (q, k, v)]
            ms = time_it(lambda: distributed.attention(*local, text, doc_ids=doc), repeats)
            received = distributed.LAST_EXCHANGE.received_bytes
            even = N // world  # the dense baseline cuts equal shares
            lo, hi = rank * even, (rank + 1) * even
            dense_ms = (time_it(lambda: _dense(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi],
                                               lo), repeats) if N % world == 0 else None)
            dense_bytes = 2 * (N - even) * kv_heads * head_dim * q.element_size()
            mine = torch.tensor([statistics.median(ms), received,
                                 statistics.median(dense_ms) if dense_ms else -1.0],
                                dtype=torch.float64, device=device)
            every = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(every, mine)
            per_rank = torch.stack(every).cpu().tolist()
            row = {"pattern": text, "N": N, "world": world,
                   "bounds": list(shards.bounds), "work_blocks": list(shards.work),
                   "attngen_ms": max(r[0] for r in per_rank),
                   "attngen_ms_per_rank": [r[0] for r in per_rank],
                   "attngen_received_bytes_max": max(r[1] for r in per_rank),
                   "attngen_received_bytes_per_rank": [r[1] for r in per_rank],
                   "dense_ms": max(r[2] for r in per_rank) if dense_ms else None,
                   "dense_received_bytes_per_rank": dense_bytes}
            rows.append(row)
            if rank == 0:
                log(line(row))
    from attngen.env import interpreting

    cpu = "cpu (gloo, " + ("interpreter kernels)" if interpreting() else "reference backend)")
    meta = {"bench": "world", "world": world, "device": torch.cuda.get_device_name()
            if device.type == "cuda" else cpu,
            "backend": dist.get_backend(), "heads": heads, "kv_heads": kv_heads,
            "head_dim": head_dim, "dtype": str(dtype).replace("torch.", ""),
            "repeats": repeats, "statistic": "median per rank; the slowest rank reported",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "torch": torch.__version__}
    return {"meta": meta, "rows": rows}


def line(row: dict) -> str:
    dense = f"{row['dense_ms']:.2f} ms" if row["dense_ms"] else "n/a (N not divisible)"
    got = row["attngen_received_bytes_max"] / 2**20
    return (f"{row['pattern']:<40} N={row['N']:<8} world={row['world']}  attngen "
            f"{row['attngen_ms']:.2f} ms, received <= {got:.2f} MiB/rank   dense {dense}, "
            f"received {row['dense_received_bytes_per_rank'] / 2**20:.2f} MiB/rank")


def markdown(result: dict) -> str:
    m = result["meta"]
    out = [f"`attngen bench --world {m['world']}` on {m['device']} ({m['backend']}), "
           f"{m['heads']} q / {m['kv_heads']} kv heads × {m['head_dim']}, {m['dtype']}, "
           f"{m['date']}; {m['statistic']}.", "",
           "| pattern | N | attngen ms | dense ms | attngen MiB in / rank (max) | "
           "dense MiB in / rank | split (work blocks per rank) |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        dense = f"{r['dense_ms']:.2f}" if r["dense_ms"] else "n/a"
        out.append(f"| `{r['pattern'].replace('|', chr(92) + '|')}` | {r['N']} | "
                   f"{r['attngen_ms']:.2f} | {dense} | "
                   f"{r['attngen_received_bytes_max'] / 2**20:.2f} | "
                   f"{r['dense_received_bytes_per_rank'] / 2**20:.2f} | {r['work_blocks']} |")
    return "\n".join(out) + "\n"


def main_world(world: int, lengths: list[int] | None, patterns: list[str] | None, heads: int,
               kv_heads: int, head_dim: int, repeats: int, out: str, md: str | None) -> int:
    """The CLI's entry: checks the launch, initialises the group, runs, writes on rank 0."""
    import json

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("attngen bench --world runs under torchrun: torchrun "
                         f"--nproc-per-node {world} -m attngen bench --world {world} …")
    if int(os.environ["WORLD_SIZE"]) != world:
        raise ValueError(f"--world {world} but torchrun started {os.environ['WORLD_SIZE']} "
                         "processes")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        result = run(lengths or ([131072, 262144] if cuda else [2048]), patterns, heads,
                     kv_heads, head_dim, repeats)
        if dist.get_rank() == 0:
            with open(out, "w") as f:
                json.dump(result, f, indent=1)
            if md:
                with open(md, "w") as f:
                    f.write(markdown(result))
            print(markdown(result))
    finally:
        dist.destroy_process_group()
    return 0
