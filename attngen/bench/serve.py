"""`attngen bench --backward` and `attngen bench --decode`: training and serving kernels on a
GPU, side by side with FlexAttention and PyTorch SDPA in one process on the same inputs.

--backward: forward + backward (and forward alone) of each pattern at each length, B=1;
attngen through `attngen.attention` (its torch.library op, both passes generated), Flex
with a block mask from the same pattern, SDPA (cuDNN, FlashAttention-2) for causal. The
backward's tuning (per pass) happens in the warm-up; the configurations tried, their times
and the ones that failed to build are in the JSON. Gradient errors vs an fp32 reference are
checked at a small size.

--decode: M queries per row against a cache of N keys per row (B rows, GQA). Each system is
timed eagerly (as called from Python, launch overhead included) and as a replayed CUDA graph
(as serving loops run it). Effective bandwidth: the K and V bytes the pattern needs (per
kv head, the union of its query heads' allowed keys) ÷ time, and the whole cache's bytes
÷ time. attngen also runs on a paged copy of the cache (shuffled pages, block table).

Each time is the median of `repeats` CUDA-event timings after warm-up. No test asserts a
time (TESTING.md); the JSON and markdown go to docs/benchmarks/.
"""
from __future__ import annotations

import statistics
import time

import torch

import attngen
from attngen.bench import dynamic as bench_dynamic
from attngen.bench import kernels as bench
from attngen.bench.kernels import _flex, _flex_fn, _time
from attngen.codegen.torch_predicate import mask_mod, predicate_fn

BACKWARD_PATTERNS = ["causal", "local(4096)", "causal & (sink(128) | local(4096))",
                     "causal & (local(1024) | strided(128))"]
DECODE_PATTERNS = ["causal", "local(4096)", "causal & (sink(128) | local(4096))",
                   "kv_heads { 0, 1, 2, 3: causal; *: causal & (sink(128) | local(4096)) }"]


# -- backward ---------------------------------------------------------------------------------
def backward(patterns: list[str] | None = None, lengths: list[int] | None = None,
             heads: int = 32, head_dim: int = 128, dtype: torch.dtype = torch.bfloat16,
             repeats: int = 10, check_n: int = 1024, check: list[str] | None = None,
             inputs: str = "random", log=print) -> dict:
    """check: the patterns whose gradients are compared with an fp32 reference (default:
    every static pattern timed; a dynamic one's fp32 reference would estimate anew).
    inputs: "random" or "structured" q, k (bench_dynamic.structured). Flex gets a dynamic
    pattern's estimate on these inputs as its block mask (bench_dynamic.flex_block_mask);
    attngen estimates inside each timed forward, as training would."""
    import importlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        raise RuntimeError("attngen bench --backward needs a CUDA GPU")
    bwd = importlib.import_module("attngen.runtime.backward")
    device = torch.device("cuda")
    patterns = patterns or BACKWARD_PATTERNS
    rows: list[dict] = []
    if check is None:
        check = [t for t in patterns if not _dynamic(attngen.parse(t), heads)]
    for text in check:  # accuracy first, at a size where the fp32 reference fits
        rows.append({"pattern": text, "N": check_n, "check": "max |grad - fp32 grad| over "
                     "dq, dk, dv", **_grad_errors(attngen.parse(text), check_n, head_dim,
                                                   dtype)})
        log(rows[-1])
    for N in lengths or [32768]:
        g = torch.Generator(device=device).manual_seed(N)
        q, k, v, do = (torch.randn(1, heads, N, head_dim, device=device, dtype=dtype,
                                   generator=g) for _ in range(4))
        if inputs == "structured":
            q, k = bench_dynamic.structured(q, k, g)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        for text in patterns:
            p = attngen.parse(text)
            bm, build_s = _flex_mask(p, q.detach(), k.detach(), heads, N)
            systems = {"attngen": lambda a, b, c: attngen.attention(a, b, c, p),
                       "flex": lambda a, b, c: _flex_fn()(a, b, c, block_mask=bm)}
            if text == "causal":
                for name, be in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                                 ("sdpa-fa2", SDPBackend.FLASH_ATTENTION)):
                    def sdpa(a, b, c, be=be):
                        with sdpa_kernel(be):
                            return torch.nn.functional.scaled_dot_product_attention(
                                a, b, c, is_causal=True)
                    systems[name] = sdpa
            flex_ms = None
            for name, fn in systems.items():
                row = {"pattern": str(p), "N": N, "system": name}
                try:
                    t0 = time.perf_counter()
                    _step(fn, q, k, v, do)()  # builds and tunes (forward and backward)
                    torch.cuda.synchronize()
                    row["setup_s"] = time.perf_counter() - t0
                    times = _time(_step(fn, q, k, v, do), repeats)
                    with torch.no_grad():
                        fwd = _time(lambda: fn(q, k, v), repeats)
                    row.update(fwd_bwd_ms=statistics.median(times),
                               fwd_ms=statistics.median(fwd), times_ms=times)
                    row["bwd_ms"] = row["fwd_bwd_ms"] - row["fwd_ms"]
                except Exception as e:  # e.g. a back-end this device lacks
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                if name == "flex":
                    flex_ms = row.get("fwd_bwd_ms")
                    row["note"] = f"block mask built in {build_s:.3f} s"
                if flex_ms and row.get("fwd_bwd_ms"):
                    row["vs_flex"] = row["fwd_bwd_ms"] / flex_ms
                if name == "attngen":
                    row["tuning"] = {f"{ph} {list(c)}": ms for (pt, ph, _, n), t
                                     in bwd.TIMINGS.items() if pt == str(p) and n == N
                                     for c, ms in t.items()}
                    cfg = bwd.CHOSEN.get((str(p), N, N))
                    row["config"] = {"dkdv": list(cfg[0].__dict__.values()),
                                     "dq": list(cfg[1].__dict__.values())} if cfg else None
                rows.append(row)
                log(row)
        q = k = v = do = None
        torch.cuda.empty_cache()
    meta = bench.run_meta("backward", B=1, H=heads, D=head_dim, dtype=str(dtype))
    meta.update(repeats=repeats, failed_configs={f"{ph} {list(c)}": msg for (ph, c), msg
                                                 in bwd.FAILURES.items()})
    return {"meta": meta, "rows": rows}


def _dynamic(p, heads: int) -> tuple:
    from attngen.runtime.op import _dynamic_parts

    return _dynamic_parts(str(p), heads, heads)


def _flex_mask(p, q, k, heads: int, N: int):
    """(Flex block mask, seconds to build): from the pattern, or for a dynamic one from
    attngen's estimate on these inputs."""
    if not _dynamic(p, heads):
        return _flex(p, N, heads, q.device)
    kern = attngen.compile(p, head_dim=q.shape[-1], dtype=q.dtype, heads=heads)
    bm, _, build_s = bench_dynamic.flex_mask_of_kernel(kern, q, k)
    return bm, build_s


def _step(fn, q, k, v, do):
    def run():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(do)
    return run


def _grad_errors(p, N, head_dim, dtype, heads=8) -> dict:
    def grads(fn, *t):
        t = [x.detach().requires_grad_() for x in t[:3]] + [t[3]]
        fn(*t[:3]).backward(t[3])
        return [x.grad for x in t[:3]]

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, N, head_dim, device="cuda", dtype=dtype, generator=g)
                   for _ in range(4))
    ref = grads(lambda a, b, c: attngen.attention(a, b, c, p, backend="reference"),
                q.float(), k.float(), v.float(), do.float())
    bm, _ = _flex(p, N, heads, "cuda")
    out = {}
    for name, fn in (("attngen", lambda a, b, c: attngen.attention(a, b, c, p)),
                     ("flex", lambda a, b, c: _flex_fn()(a, b, c, block_mask=bm))):
        got = grads(fn, q, k, v, do)
        out[name] = max((x.float() - r).abs().max().item() for x, r in zip(got, ref))
    out["ratio"] = out["attngen"] / out["flex"] if out["flex"] else None
    return out


# -- decode -----------------------------------------------------------------------------------
def needed_keys(p, heads: int, kv_heads: int, M: int, N: int, device="cpu") -> list[int]:
    """Per kv head: how many of the N cache keys the M newest queries of its query heads
    need (the union over the group): the keys a decode kernel has to read."""
    nodes = p.head_nodes(heads, kv_heads)
    G = heads // kv_heads
    qpos = torch.arange(N - M, N, device=device)[:, None]
    kpos = torch.arange(N, device=device)[None, :]
    fns = {n: predicate_fn(n, M, N) for n in set(nodes)}
    counts = []
    for h in range(kv_heads):
        need = torch.zeros(N, dtype=torch.bool, device=device)
        for n in set(nodes[h * G:(h + 1) * G]):
            need |= fns[n](qpos, kpos).any(0)
        counts.append(int(need.sum()))
    return counts


def decode(patterns: list[str] | None = None, lengths: list[int] | None = None, batch: int = 8,
           heads: int = 32, kv_heads: int = 8, head_dim: int = 128, queries: int = 1,
           page: int = 64, dtype: torch.dtype = torch.bfloat16, repeats: int = 50,
           log=print) -> dict:
    import importlib

    from torch.nn.attention.flex_attention import create_block_mask

    if not torch.cuda.is_available():
        raise RuntimeError("attngen bench --decode needs a CUDA GPU")
    dec = importlib.import_module("attngen.runtime.decode")  # the module, not the function
    device = torch.device("cuda")
    patterns = patterns or DECODE_PATTERNS
    rows: list[dict] = []
    esize = torch.tensor([], dtype=dtype).element_size()
    B, H, HKV, D, M = batch, heads, kv_heads, head_dim, queries
    for N in lengths or [131072]:
        g = torch.Generator(device=device).manual_seed(N)
        q = torch.randn(B, H, M, D, device=device, dtype=dtype, generator=g)
        kc, vc = (torch.randn(B, HKV, N, D, device=device, dtype=dtype, generator=g)
                  for _ in range(2))
        lens = torch.full((B,), N, dtype=torch.int32, device=device)
        # the same cache as shuffled pages of `page` keys and a block table
        per_row = N // page
        table = torch.randperm(B * per_row, device=device, generator=g).reshape(B, per_row)
        kp, vp = (torch.empty(B * per_row, HKV, page, D, device=device, dtype=dtype)
                  for _ in range(2))
        for src, dst in ((kc, kp), (vc, vp)):
            dst[table.reshape(-1)] = src.reshape(B, HKV, per_row, page, D).permute(
                0, 2, 1, 3, 4).reshape(B * per_row, HKV, page, D)
        table = table.to(torch.int32)
        cache_bytes = 2 * B * HKV * N * D * esize
        flush = torch.ones(2 ** 28, dtype=torch.int8, device=device)  # 256 MB > L2
        for text in patterns:
            p = attngen.parse(text)
            need = needed_keys(p, H, HKV, M, N, device)
            need_bytes = 2 * B * sum(need) * D * esize
            kern = attngen.compile(p, head_dim=D, dtype=dtype, heads=H, kv_heads=HKV,
                                   device=device)
            nodes = p.head_nodes(H, HKV)
            distinct = list(dict.fromkeys(nodes))
            t0 = time.perf_counter()
            bm = create_block_mask(mask_mod(distinct, [distinct.index(n) for n in nodes], M, N,
                                            device=device), None, H if len(distinct) > 1
                                   else None, M, N, device=device)
            build_s = time.perf_counter() - t0
            flex = _flex_fn()
            systems = {
                "attngen": lambda: dec.run(kern, q, kc, vc, lens),
                "attngen-paged": lambda: dec.run(kern, q, kp, vp, lens, block_table=table),
                "flex": lambda: flex(q, kc, vc, block_mask=bm, enable_gqa=True)}
            if len(distinct) == 1 and M == 1 and need == [N] * HKV:  # dense: SDPA, no mask
                systems["sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, kc, vc, enable_gqa=True)
            ref = _decode_reference(q, kc, vc, p, M, N)
            for name, fn in systems.items():
                row = {"pattern": str(p), "N": N, "system": name, "needed_keys": need,
                       "needed_bytes": need_bytes, "cache_bytes": cache_bytes}
                try:
                    t0 = time.perf_counter()
                    out = fn()  # compiles and tunes
                    torch.cuda.synchronize()
                    row["setup_s"] = time.perf_counter() - t0
                    row["max_err"] = (out.float() - ref).abs().max().item()
                    row["eager_ms"] = statistics.median(_time(fn, repeats))
                    try:
                        replay = bench.cuda_graph(fn)
                        row["graph_ms"] = statistics.median(_time(replay, repeats))
                        row["graph_queued_ms"] = statistics.median(
                            _time_queued(replay, repeats, flush))
                    except Exception as e:  # not capturable: eager only
                        row["graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    ms = row.get("graph_queued_ms") or row["eager_ms"]
                    row["needed_TBps"] = need_bytes / ms / 1e9
                    row["cache_TBps"] = cache_bytes / ms / 1e9
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                if name.startswith("attngen"):
                    cfg = next((c for key, c in dec._TUNED.items() if key[0] == kern.key
                                and key[-1] == (True if name == "attngen" else page)), None)
                    if cfg:
                        row["config"] = dict(cfg.__dict__, splits=dec._splits(
                            q, B * HKV, -(-N // cfg.block_n), cfg.waves))
                    row["tuning"] = next((t for key, t in dec.TIMINGS.items()
                                          if key[0] == kern.key and key[-1] ==
                                          (True if name == "attngen" else page)), None)
                if name == "flex":
                    row["note"] = f"block mask built in {build_s:.3f} s"
                rows.append(row)
                log(row)
        q = kc = vc = kp = vp = flush = None
        torch.cuda.empty_cache()
    import triton.testing

    meta = bench.run_meta("decode", B=B, Hq=H, Hkv=HKV, D=D, M=M, page=page, dtype=str(dtype))
    meta.update(repeats=repeats, rate="bytes ÷ graph_queued time (device time of one "
                "replay after a 256 MB read: cold L2, the host's launch hidden behind it); "
                "graph_ms: one replay timed from an idle, synchronised stream "
                "(includes the launch latency)",
                note="SDPA only where the pattern is dense (no mask)")
    try:  # a plain copy of 2 GiB: what this device's memory delivers
        x = torch.empty(2 ** 30, device=device, dtype=torch.int16)
        y = torch.empty_like(x)
        ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=5, rep=50)
        meta["copy_TBps"] = 2 * x.numel() * 2 / ms / 1e9
        x = y = None
    except Exception:
        pass
    return {"meta": meta, "rows": rows}


def _decode_reference(q, k, v, p, M, N):
    """fp32 decode with the exact mask, one kv head at a time (the whole cache in fp32 at
    once would not fit beside the bf16 copies)."""
    B, H, _, D = q.shape
    HKV = k.shape[1]
    G = H // HKV
    nodes = p.head_nodes(H, HKV)
    qpos = torch.arange(N - M, N, device=q.device)[:, None]
    kpos = torch.arange(N, device=q.device)[None, :]
    out = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    for h in range(HKV):
        mask = torch.stack([predicate_fn(n, M, N)(qpos, kpos) for n in nodes[h * G:(h + 1) * G]])
        kh, vh = k[:, h].float(), v[:, h].float()
        s = torch.einsum("bgmd,bnd->bgmn", q[:, h * G:(h + 1) * G].float(), kh) / D ** 0.5
        s = s.masked_fill(~mask[None], float("-inf"))
        w = torch.softmax(s, -1).nan_to_num(0.0)
        out[:, h * G:(h + 1) * G] = torch.einsum("bgmn,bnd->bgmd", w, vh)
    return out


def _time_queued(fn, repeats: int, flush: torch.Tensor, warmup: int = 3) -> list[float]:
    """Device time of fn (a graph replay): before each timed call the stream reads
    `flush` (256 MB: a cold L2 holding clean lines; zeroing it, as do_bench does, would
    leave ~50 MB of dirty lines for the timed call to write back), which also keeps the GPU
    busy while the host enqueues the call, so the time is the call's device time, not the
    host's launch latency. Events are read after the last call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(repeats):
        flush.sum()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


# -- output -----------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    m = result["meta"]
    fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
    head = (f"{m['device']}, torch {m['torch']}, triton {m['triton']}, attngen {m['attngen']}, "
            f"{m['date']}; {m['shape']}; {m['statistic']}, {m['repeats']} runs.")
    if m["bench"] == "backward":
        lines = [head, "", "| pattern | N | system | fwd+bwd ms | fwd ms | bwd ms | × Flex "
                 "(fwd+bwd) | note |", "|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            if "check" in r:
                lines.append(f"| `{r['pattern']}` | {r['N']} | grad error | attngen "
                             f"{r['attngen']:.2e} | Flex {r['flex']:.2e} | | "
                             f"{fmt(r['ratio'], '.2f')} | {r['check']} |")
                continue
            note = r.get("error") or (f"dkdv {r['config']['dkdv']}, dq {r['config']['dq']}"
                                      if r.get("config") else r.get("note", ""))
            lines.append(f"| `{r['pattern']}` | {r['N']} | {r['system']} | "
                         f"{fmt(r.get('fwd_bwd_ms'), '.2f')} | {fmt(r.get('fwd_ms'), '.2f')} | "
                         f"{fmt(r.get('bwd_ms'), '.2f')} | {fmt(r.get('vs_flex'), '.2f')} | "
                         f"{note} |")
        return "\n".join(lines) + "\n"
    lines = [head + f" Device copy bandwidth: {fmt(m.get('copy_TBps'), '.2f')} TB/s.", "",
             "| pattern | N | system | eager ms | CUDA graph ms (synced) | CUDA graph ms "
             "(queued, cold L2) | needed GB | TB/s on needed bytes | % of copy | TB/s on "
             "cache bytes | max err | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    copy = m.get("copy_TBps")

    def pct(r):  # the needed bytes' rate as a share of the device copy's
        return r["needed_TBps"] / copy * 100 if copy and r.get("needed_TBps") else None
    for r in result["rows"]:
        note = r.get("error") or (str(r["config"]) if r.get("config") else r.get("note", ""))
        lines.append(f"| `{r['pattern']}` | {r['N']} | {r['system']} | "
                     f"{fmt(r.get('eager_ms'), '.4f')} | {fmt(r.get('graph_ms'), '.4f')} | "
                     f"{fmt(r.get('graph_queued_ms'), '.4f')} | "
                     f"{r['needed_bytes'] / 1e9:.3f} | {fmt(r.get('needed_TBps'), '.2f')} | "
                     f"{fmt(pct(r), '.0f')} | "
                     f"{fmt(r.get('cache_TBps'), '.2f')} | {fmt(r.get('max_err'), '.1e')} | "
                     f"{note} |")
    return "\n".join(lines) + "\n"


def save(result: dict, json_path: str, md_path: str | None = None) -> None:
    bench.save(result, json_path, md_path, markdown)
