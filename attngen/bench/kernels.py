"""`attngen bench`: time generated kernels against FlexAttention and PyTorch SDPA on a GPU.

Every system runs in the same process on the same inputs: the attngen kernel (tuned once,
tuning time reported apart), FlexAttention compiled once with a block mask built from the
same pattern (built on the GPU, its build time reported apart), and SDPA causal with the
cuDNN and FlashAttention-2 back-ends. "÷ causal rate" in the table: the system's TFLOP/s on
allowed elements over its own rate on dense causal at the same length. Each time is the
median of `repeats` runs, each timed with CUDA events after warm-up. Effective TFLOP/s
counts 4·D flops per allowed (q, k) pair and head.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

import attngen
from attngen.bench import dynamic as bench_dynamic
from attngen.codegen.torch_predicate import count_allowed, mask_mod, predicate_fn
from attngen.runtime.tables import device_layout

DEFAULT_PATTERNS = ["causal", "local(4096)", "causal & (sink(128) | local(4096))",
                    "causal & (local(1024) | strided(128))", "causal & dilated(1024, 4)",
                    "causal & strided(64)", "causal & fixed(128, 8)",
                    "causal & (sink(64) | local(512) | power(64))", "radial(N // 64)"]


@dataclass
class Row:
    pattern: str
    N: int
    system: str
    ms: float | None
    tflops: float | None = None
    vs_flex: float | None = None  # this system's time ÷ Flex's time
    setup_s: float | None = None  # compile / tune / block-mask build, outside the timing
    max_err: float | None = None  # vs an fp32 reference, where checked
    note: str = ""
    times_ms: list = field(default_factory=list)


def _time(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _sdpa(q, k, v, backend):
    from torch.nn.attention import sdpa_kernel

    def run():
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return run


def _flex(pattern, N, heads, device):
    """A block mask per head (one shared by every head unless `pattern` is a mixture)."""
    from torch.nn.attention.flex_attention import BlockMask

    t0 = time.perf_counter()
    heads = heads if pattern.is_mixture else 1
    lay = device_layout(pattern, N, N, block=128, heads=heads, device=device)  # dense, exact
    t = {name: x.to(device) for name, x in lay.to_flex(width=lay.grid.KB).items()}
    bm = BlockMask.from_kv_blocks(t["kv_num_blocks"], t["kv_indices"], t["full_kv_num_blocks"],
                                  t["full_kv_indices"], BLOCK_SIZE=128,
                                  mask_mod=mask_mod(list(lay.nodes), lay.head_index.tolist(),
                                                    N, N, device=device),
                                  seq_lengths=(N, N))
    return bm, time.perf_counter() - t0


_FLEX = None


def _flex_fn():
    global _FLEX
    if _FLEX is None:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        # one compile per (shape, mask_mod): more than dynamo's default limit of 8
        torch._dynamo.config.cache_size_limit = 256
        torch._dynamo.config.recompile_limit = 256
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def _reference(q, k, v, pattern, N):
    """fp32 attention with the exact mask (sizes where the dense mask fits)."""
    pos = torch.arange(N, device=q.device)
    per_node = {n: predicate_fn(n, N, N)(pos[:, None], pos[None, :])
                for n in set(pattern.head_nodes(q.shape[1]))}
    mask = torch.stack([per_node[n] for n in pattern.head_nodes(q.shape[1])])[None]
    return torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask), mask


def bench(patterns: list[str] | None = None, lengths: list[int] | None = None, heads: int = 32,
          head_dim: int = 128, dtype: torch.dtype = torch.bfloat16, repeats: int = 20,
          check_max_n: int = 8192, variants: dict | None = None, log=print,
          inputs: str = "random") -> dict:
    """variants: system name → compile options, e.g. {"attngen-fused": {"fused_loops": True}}
    (default: {"attngen": {}}). inputs: "random" (standard normal q, k, v) or "structured"
    (q and k rotary-embedded around a shared direction, plus sink keys: attention mass near
    the diagonal and on a few columns, as in LLM heads; only dynamic patterns care)."""
    from torch.nn.attention import SDPBackend

    if not torch.cuda.is_available():
        raise RuntimeError("attngen bench needs a CUDA GPU")
    device = torch.device("cuda")
    patterns = patterns or DEFAULT_PATTERNS
    lengths = lengths or [8192, 32768, 131072]
    rows: list[Row] = []
    for N in lengths:
        g = torch.Generator(device=device).manual_seed(N)
        q, k, v = (torch.randn(1, heads, N, head_dim, device=device, dtype=dtype, generator=g)
                   for _ in range(3))
        if inputs == "structured":
            q, k = bench_dynamic.structured(q, k, g)
        causal_pairs = N * (N + 1) // 2
        for name, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa-fa2", SDPBackend.FLASH_ATTENTION)):
            try:
                times = _time(_sdpa(q, k, v, backend), repeats)
                ms = statistics.median(times)
                rows.append(Row("causal", N, name, ms, 4 * causal_pairs * head_dim * heads
                                / ms / 1e9, times_ms=times))
            except RuntimeError as e:
                rows.append(Row("causal", N, name, None, note=str(e).splitlines()[0][:120]))
            log(rows[-1])
        for text in patterns:
            p = attngen.parse(text)
            if p.is_dynamic:
                rows += bench_dynamic.rows(p, q, k, v, N, repeats, _time, _row, _flex_fn, log)
                continue
            nodes = p.head_nodes(heads)
            counts = {n: count_allowed(n, N, N, device) for n in set(nodes)}
            allowed = sum(counts[n] for n in nodes)
            flops = 4 * allowed * head_dim
            # FlexAttention with a block mask from the same layout
            bm, build_s = _flex(p, N, heads, device)
            flex = _flex_fn()
            t0 = time.perf_counter()
            flex(q, k, v, block_mask=bm)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            times = _time(lambda: flex(q, k, v, block_mask=bm), repeats)
            flex_ms = statistics.median(times)
            rows.append(Row(str(p), N, "flex", flex_ms, flops / flex_ms / 1e9, 1.0,
                            setup_s=build_s, times_ms=times,
                            note=f"block mask built in {build_s:.3f} s; first call {first:.1f} s"))
            log(rows[-1])
            for system, options in (variants or {"attngen": {}}).items():
                rows.append(_attngen_row(system, options, p, q, k, v, N, flops, flex_ms,
                                         repeats, check_max_n, bm))
                log(rows[-1])
        q = k = v = None  # free this length's inputs before the next
        torch.cuda.empty_cache()
    meta = {**run_meta("forward", B=1, H=heads, D=head_dim, dtype=str(dtype)),
            "repeats": repeats, "statistic": "median of CUDA-event timings after 3 warm-ups",
            "inputs": inputs, "variants": variants or {"attngen": {}}}
    return {"meta": meta, "rows": [asdict(r) for r in rows]}


def run_meta(kind: str, **shape) -> dict:
    """Where and how a benchmark ran: device, versions, date, its shape."""
    import triton

    return {"bench": kind, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "attngen": attngen.__version__,
            "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "shape": shape, "statistic": "median of CUDA-event timings after warm-up"}


def _row(pattern: str, N: int, system: str, ms: float, flops: int | None, vs_flex: float,
         setup_s: float | None, times: list[float], note: str) -> Row:
    return Row(pattern, N, system, ms, None if flops is None else flops / ms / 1e9, vs_flex,
               setup_s=setup_s, times_ms=times, note=note)


def _attngen_row(system, options, p, q, k, v, N, flops, flex_ms, repeats, check_max_n, bm):
    heads, head_dim = q.shape[1], q.shape[3]
    t0 = time.perf_counter()
    kern = attngen.compile(p, head_dim=head_dim, dtype=q.dtype, heads=heads, options=options)
    out = kern(q, k, v)
    torch.cuda.synchronize()
    setup = time.perf_counter() - t0
    times = _time(lambda: kern(q, k, v), repeats)
    ms = statistics.median(times)
    cfg = kern.config(q, k, v, None)
    row = Row(str(p), N, system, ms, flops / ms / 1e9, ms / flex_ms, setup_s=setup,
              times_ms=times, note=f"BLOCK {cfg.block_m}x{cfg.block_n}, {cfg.warps} warps, "
                                   f"{cfg.stages} stages")
    if N <= check_max_n:
        ref, mask = _reference(q, k, v, p, N)
        row.max_err = (out.float() - ref).abs().max().item()
        sdpa_bf16 = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        sdpa_err = (sdpa_bf16.float() - ref).abs().max().item()
        flex_err = (_flex_fn()(q, k, v, block_mask=bm).float() - ref).abs().max().item()
        row.note += (f"; max err attngen {row.max_err:.2e}, sdpa-bf16 {sdpa_err:.2e}, "
                     f"flex {flex_err:.2e} (ratio to sdpa {row.max_err / sdpa_err:.2f})")
    return row


def line(r: Row) -> str:
    fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
    return (f"{r.system:10} N={r.N:<7} {fmt(r.ms, '9.3f')} ms {fmt(r.tflops, '5.0f')} TF "
            f"x{fmt(r.vs_flex, '.2f')} Flex  {r.pattern}  {r.note}")


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"{m['device']}, torch {m['torch']}, triton {m['triton']}, attngen {m['attngen']}, "
             f"{m['date']}; B=1 H={m['shape']['H']} D={m['shape']['D']} {m['shape']['dtype']}; "
             f"{m['statistic']}, {m['repeats']} runs.", "",
             "| pattern | N | system | ms | TFLOP/s (allowed) | × Flex time | ÷ causal rate | "
             "note |", "|---|---|---|---|---|---|---|---|"]
    causal = {(r["N"], r["system"]): r["tflops"] for r in result["rows"]
              if r["pattern"] == "causal" and r["tflops"]}
    for r in result["rows"]:
        fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
        base = causal.get((r["N"], r["system"]))
        rate = r["tflops"] / base if base and r["tflops"] else None
        lines.append(f"| `{r['pattern']}` | {r['N']} | {r['system']} | {fmt(r['ms'], '.3f')} | "
                     f"{fmt(r['tflops'], '.0f')} | {fmt(r['vs_flex'], '.2f')} | "
                     f"{fmt(rate, '.2f')} | {r['note']} |")
    return "\n".join(lines) + "\n"


def save(result: dict, json_path: str, md_path: str | None = None, table=None) -> None:
    """The result as JSON, and as the markdown `table(result)` (default: markdown)."""
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    if md_path:
        with open(md_path, "w") as f:
            f.write((table or markdown)(result))


def cuda_graph(fn, warmups: int = 2):
    """fn captured in a CUDA graph (warmed up `warmups` times on a side stream first), as a
    replay call; the graph lives as long as the returned call."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
