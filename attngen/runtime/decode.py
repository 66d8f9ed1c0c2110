"""Decoding: a few queries per batch row against a KV cache (contiguous or paged) with its own
length per row, split over the kv blocks the pattern needs (flash-decoding) and merged
exactly by log-sum-exp (by the last split to finish, or a second kernel; one split writes
its rows itself). Configurations are tuned per shape under a CUDA graph."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from attngen.env import autotune, interpreting
from attngen.ir.pattern import Pattern
from attngen.runtime.checks import DTYPES, check_row_span
from attngen.runtime.derived import module

INTERPRETER_BLOCK_N = 32
MAX_BLOCK_R = 64  # rows (query heads of a kv head × queries) per program


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int
    warps: int
    stages: int
    waves: float  # splits are chosen to give about waves · SMs programs
    fused: bool = True  # the last split merges (one launch), else a merge kernel


INTERPRETER_CONFIG = DecodeConfig(INTERPRETER_BLOCK_N, 1, 1, 0)
# GPU search space (first one without $ATTNGEN_AUTOTUNE): a bandwidth-bound loop, so few
# warps and deep pipelines; each compiled variant is tried with every WAVES (the number of
# splits: no recompile), so the grid can be one wave of resident programs or several.
GPU_CONFIGS = [DecodeConfig(64, 4, 3, 4), DecodeConfig(64, 4, 4, 8), DecodeConfig(32, 4, 4, 8),
               DecodeConfig(128, 4, 3, 4), DecodeConfig(64, 4, 3, 4, False),
               DecodeConfig(32, 4, 4, 8, False), DecodeConfig(64, 4, 2, 2),
               DecodeConfig(128, 8, 2, 2)]
WAVES = (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8)
TUNE_REPLAYS = 20  # launches per captured graph when timing a configuration
NO_DECODE_KERNEL = "decode-failed"  # kernel.tables flag: its decode module did not compile
LIST_CHUNK = 1 << 24  # positions per predicate evaluation when building a table's block lists

_TUNED: dict = {}
TIMINGS: dict = {}  # shape bucket → {config: ms} of its tuning (for the benchmark's report)


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           lengths: torch.Tensor, pattern: Pattern | str, scale: float | None = None,
           return_lse: bool = False, splits: int | None = None,
           block_table: torch.Tensor | None = None, starts: torch.Tensor | None = None):
    """Attention of q [B, Hq, M, D] (M small: the newest M positions of each row) against a
    KV cache whose row b holds `lengths[b]` keys; the queries of row b sit at positions
    lengths[b] − M … lengths[b] − 1. Equals the last M rows of a full prefill with the same
    pattern. Reads only the kv blocks the pattern needs, each once per kv head (the group's
    query heads share it), in `splits` parallel chunks.

    Caches: contiguous k, v [B, Hkv, N_max, D], or paged k, v [pages, Hkv, page, D] with
    `block_table` [B, max_pages] (int; the page of keys p·page … of row b is
    block_table[b, p], as in vLLM and FlashInfer).

    starts (contiguous caches only): row b's keys are cache positions starts[b] …
    lengths[b] − 1 (left padding before them), and the pattern sees them as positions
    0 … lengths[b] − starts[b] − 1, as if the row were alone.

    lengths must lie in 0 … the cache's capacity (N_max, or max_pages · page), and the
    block_table entries a row uses (its first ceil(lengths[b] / page)) must name existing
    pages. CPU tensors and Python ints are checked before the launch (ValueError); CUDA
    tensors by a device-side assertion (`torch._assert_async`: no host synchronisation, so
    a decode step stays capturable in a CUDA graph; a violation fails the stream, as an
    out-of-range index does). Either way the kernel clamps lengths and page numbers to the
    cache, so no value can make it read outside the cache."""
    from attngen.runtime.compiler import compile

    kernel = compile(pattern, head_dim=q.shape[3], dtype=q.dtype, heads=q.shape[1],
                     kv_heads=k_cache.shape[1], device=q.device)
    return run(kernel, q, k_cache, v_cache, lengths, scale, return_lse, splits, block_table,
               starts=starts)


def run(kernel, q, k_cache, v_cache, lengths, scale=None, return_lse=False, splits=None,
        block_table=None, config: DecodeConfig | None = None, starts=None):
    """`decode` with a compiled kernel (no compile lookup: the serving loop's call)."""
    from attngen.runtime.kernel import _warn_once, compile_failure
    from attngen.runtime.launch import signed, upcast

    lengths = _as_lengths(lengths, q)
    if block_table is not None and not isinstance(block_table, torch.Tensor):
        block_table = torch.as_tensor(block_table, dtype=torch.int64)
    _check(q, k_cache, v_cache, lengths, block_table, starts)
    _check_bounds(kernel, q, k_cache, lengths, block_table, scale)
    check_row_span(k_cache=k_cache, v_cache=v_cache)
    if upcast(q):  # bfloat16 under the interpreter: fp32 inside
        res = run(kernel, q.float(), k_cache.float(), v_cache.float(), lengths, scale,
                  return_lse, splits, block_table, config, starts)
        return (res[0].to(q.dtype), res[1]) if return_lse else res.to(q.dtype)
    q, scale, _ = signed(q, scale)
    B, H, M, D = q.shape
    HKV = k_cache.shape[1]
    n_max = _cache_keys(k_cache, block_table)
    # clamped on the device (no sync): the lists built from lengths stay inside the cache
    lengths = lengths.to(device=q.device, dtype=torch.int32).clamp(0, n_max)
    if starts is not None:  # the kernel shifts each row's cache; lengths count from there
        starts = starts.to(device=q.device, dtype=torch.int32).clamp(0, n_max)
        lengths = (lengths - starts).clamp(min=0)
    if not supported(kernel.spec, H, HKV) or kernel.tables.get(NO_DECODE_KERNEL):
        return _per_row(kernel, q, k_cache, v_cache, lengths, scale, return_lse, starts,
                        block_table)
    q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous()
                           for t in (q, k_cache, v_cache))
    cfg = config or _config(kernel, q, k_cache, v_cache, lengths, scale, block_table, n_max)
    if splits is None:
        splits = _splits(q, B * HKV, -(-n_max // cfg.block_n), cfg.waves)
    try:
        return _launch(kernel, q, k_cache, v_cache, lengths, scale, return_lse, splits,
                       block_table, cfg, starts)
    except Exception as e:
        # a specialisation Triton cannot build: this kernel decodes through the prefill
        # kernel row by row from now on (a host sync per step) rather than fail
        if not compile_failure(e):
            raise
        _warn_once(kernel, e)
        kernel.tables[NO_DECODE_KERNEL] = True
        return _per_row(kernel, q, k_cache, v_cache, lengths, scale, return_lse, starts,
                        block_table)


def _launch(kernel, q, k_cache, v_cache, lengths, scale, return_lse, splits, block_table, cfg,
            starts=None):
    B, H, M, D = q.shape
    HKV = k_cache.shape[1]
    G = H // HKV
    block_r = min(MAX_BLOCK_R, max(16, 1 << (G * M - 1).bit_length()))
    row_blocks = -(-G * M // block_r)
    tile_d = 1 << (D - 1).bit_length()
    acc = torch.empty((splits, B * HKV, row_blocks * block_r, tile_d), device=q.device,
                      dtype=torch.float32)
    l_i = torch.empty((splits, B * HKV, row_blocks * block_r), device=q.device,
                      dtype=torch.float32)
    m_i = torch.empty_like(l_i)
    tabs = kernel.tables
    if ("decode", str(q.device)) not in tabs:  # constant inputs, made once per device
        tabs["decode", str(q.device)] = (
            torch.tensor(kernel.spec.head_group, dtype=torch.int32, device=q.device),
            torch.zeros(1, dtype=torch.int32, device=q.device))
    head_group, zero = tabs["decode", str(q.device)]
    n_max = _cache_keys(k_cache, block_table)
    if any(g.table_slot >= 0 for g in kernel.spec.groups):  # per call: lengths move
        tab_ids, tab_count = block_lists(kernel.spec, lengths, M, cfg.block_n,
                                         -(-n_max // cfg.block_n))
    else:  # no table: nothing built, nothing launched
        tab_ids, tab_count = zero.view(1, 1, 1), zero.view(1, 1)
    if any(g.permuted for g in kernel.spec.groups):
        key_ids, key_count = key_lists(kernel.spec, lengths, M, n_max)
    else:
        key_ids, key_count = zero.view(1, 1, 1), zero.view(1, 1)
    if block_table is None:
        pages, page, stride_pb = zero, 0, 0
    else:
        pages, page = block_table.to(device=q.device, dtype=torch.int32), k_cache.shape[2]
        stride_pb = pages.stride(0)
    sm_scale = float(scale if scale is not None else 1.0 / math.sqrt(D))
    mod = module(kernel, "decode")
    out = torch.empty_like(q)
    lse = torch.empty((B, H, M), device=q.device, dtype=torch.float32)
    count = _counters(kernel, q.device, B * HKV * row_blocks) if cfg.fused else zero
    mod.attn_decode[(splits, B * HKV, row_blocks)](
        q, k_cache, v_cache, acc, l_i, m_i, lengths, zero if starts is None else starts,
        head_group, zero, pages, out, lse, count,
        tab_ids, tab_count, tab_ids.shape[1], tab_ids.shape[2], key_ids, key_count,
        key_ids.shape[1], key_ids.shape[2], q.stride(0), q.stride(1),
        q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0),
        v_cache.stride(1), v_cache.stride(2), stride_pb,
        out.stride(0), out.stride(1), out.stride(2), H, HKV, M, splits, sm_scale, D, n_max,
        k_cache.shape[0] if block_table is not None else 1,
        HEAD_DIM=tile_d, BLOCK_R=block_r, BLOCK_N=cfg.block_n, PAGE=page, EVEN_D=D == tile_d,
        FUSED_MERGE=cfg.fused, HAS_STARTS=starts is not None, num_warps=cfg.warps,
        num_stages=cfg.stages)
    if not cfg.fused and splits > 1:
        mod.attn_decode_merge[(B * HKV, row_blocks)](
            acc, l_i, m_i, out, lse, out.stride(0), out.stride(1), out.stride(2), H, HKV, M,
            splits, D, HEAD_DIM=tile_d, BLOCK_R=block_r, num_warps=4)
    return (out, lse) if return_lse else out


def _counters(kernel, device, n: int) -> torch.Tensor:
    """The fused merge's ticket counters (int32, zero between calls: the merging program
    re-arms its own), kept per kernel and device. One decode at a time per kernel and
    device: two concurrent ones (two streams) would share the counters."""
    key = ("decode-count", str(device))
    if key not in kernel.tables or kernel.tables[key].numel() < n:
        kernel.tables[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return kernel.tables[key]


def supported(spec, heads: int, kv_heads: int) -> bool:
    """Whether the split-KV kernel runs this spec: every part ranges, a table or residue
    classes (nothing dynamic), and the query heads of each kv head in one group (they share
    the loops)."""
    G = heads // kv_heads
    same = all(len(set(spec.head_group[g * G:(g + 1) * G])) == 1 for g in range(kv_heads))
    return same and all(p.strategy in ("ranges", "table", "permutation") for g in spec.groups
                        for p in g.parts)


def key_lists(spec, lengths: torch.Tensor, M: int, n_max: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys each batch row's newest M queries need in each residue-class part (the
    union of their classes' allowed keys), on the lengths' device without a host sync:
    positions int32 [B, slots, n_max] (ascending; padding after the count) and counts int32
    [B, slots]. Slots: the permuted parts in group order. From the part's predicate in the
    original coordinates (`_allowed_rows`)."""

    nodes = [part.node for g in spec.groups for part in g.permuted]
    B, device = lengths.shape[0], lengths.device
    k_pos = torch.arange(n_max, device=device)
    positions, counts = [], []
    for node in nodes:
        need = torch.zeros((B, n_max), dtype=torch.bool, device=device)
        for allowed, _ in _allowed_rows(node, lengths, M, n_max):
            need |= allowed.any(1)
        positions.append(_packed(need, k_pos.view(1, -1)))
        counts.append(need.sum(1))
    return (torch.stack(positions, 1).to(torch.int32).contiguous(),
            torch.stack(counts, 1).to(torch.int32).contiguous())


def block_lists(spec, lengths: torch.Tensor, M: int, block_n: int, n_blocks: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The kv blocks each batch row's newest M queries need in each table part, on the
    lengths' device without a host sync (so a CUDA graph can hold it): entries int32
    [B, slots, n_blocks] (ascending block·2 + 1 if the block is full, i.e. every key of it
    below the row's length allowed to every query row; padding after the count) and counts
    int32 [B, slots]. From the part's predicate evaluated for the M query positions
    (q = N_b − M + i) over n_blocks · block_n keys: O(B · M · N_max) element tests per call
    (the prefill's table is per length, and a decode's length moves every step)."""

    tables = [g.table.node for g in spec.groups if g.table_slot >= 0]
    B, device = lengths.shape[0], lengths.device
    ids = torch.arange(n_blocks, device=device) * 2
    entries, counts = [], []
    for node in tables:
        some = torch.zeros((B, n_blocks), dtype=torch.bool, device=device)
        every = torch.ones((B, n_blocks), dtype=torch.bool, device=device)
        for allowed, in_range in _allowed_rows(node, lengths, M, n_blocks * block_n):
            m = allowed.shape[1]
            some |= allowed.view(B, m, n_blocks, block_n).any(3).any(1)
            every &= (allowed | ~in_range).view(B, m, n_blocks, block_n).all(3).all(1)
        every &= some
        entries.append(_packed(some, ids + every))
        counts.append(some.sum(1))
    return (torch.stack(entries, 1).to(torch.int32).contiguous(),
            torch.stack(counts, 1).to(torch.int32).contiguous())


def _allowed_rows(node, lengths: torch.Tensor, M: int, keys: int):
    """node's predicate for each batch row's newest M queries (q = N_b − M + i) over key
    positions 0 … keys − 1, a chunk of query rows at a time (about LIST_CHUNK elements):
    yields allowed bool [B, m, keys] (False at and beyond the row's length) and in_range
    bool [B, 1, keys]."""
    from attngen.codegen.torch_predicate import predicate_fn

    B, device = lengths.shape[0], lengths.device
    n = lengths.to(torch.int64).view(B, 1, 1)
    k_pos = torch.arange(keys, device=device).view(1, 1, -1)
    in_range = k_pos < n
    fn = predicate_fn(node, M, n)
    rows = max(1, LIST_CHUNK // (B * keys))
    for i0 in range(0, M, rows):
        q_pos = n - M + torch.arange(i0, min(M, i0 + rows), device=device).view(1, -1, 1)
        yield fn(q_pos, k_pos) & in_range, in_range


def _packed(flags: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per row of flags [B, K], the values [B or 1, K] where the flag is set, moved to the
    front in order (zeros after them), without a host sync: ranks by cumsum, a scatter
    (unflagged entries go to a spare column)."""
    B, K = flags.shape
    rank = torch.where(flags, flags.cumsum(1) - 1, K)
    out = torch.zeros((B, K + 1), dtype=torch.int64, device=flags.device)
    out.scatter_(1, rank, values.to(torch.int64).expand(B, -1))
    return out[:, :K]


def _cache_keys(k_cache: torch.Tensor, block_table: torch.Tensor | None) -> int:
    """Key positions a row's cache can hold: N_max, or pages per row × page size."""
    return k_cache.shape[2] if block_table is None else k_cache.shape[2] * block_table.shape[1]


def _as_lengths(lengths, q) -> torch.Tensor:
    """lengths as a tensor: a Python int (every row) or a sequence of ints becomes a CPU
    tensor (checked eagerly); a tensor is kept (integer dtype required)."""
    if isinstance(lengths, torch.Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        return lengths
    if isinstance(lengths, int) and not isinstance(lengths, bool):
        return torch.full((q.shape[0],), lengths, dtype=torch.int64)
    try:
        return torch.as_tensor(lengths, dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"lengths must be an int, a sequence of ints or an integer tensor, "
                        f"got {type(lengths).__name__}") from None


def _check_bounds(kernel, q, k_cache, lengths, block_table, scale) -> None:
    """lengths within the cache, the used block_table entries naming existing pages, and the
    pattern's parameters at each length. Eager (ValueError, PatternError) for CPU tensors;
    a device-side assertion for CUDA tensors (no host synchronisation; the pattern's
    parameters are then not checked per row)."""
    from attngen.runtime.checks import check_scale

    check_scale(scale)
    cap = _cache_keys(k_cache, block_table)
    page = k_cache.shape[2]
    on_device = lengths.device.type != "cpu" or (block_table is not None
                                                 and block_table.device.type != "cpu")
    if not on_device:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 0 or high > cap:
            raise ValueError(f"lengths must lie in 0..{cap} (the cache holds {cap} keys per "
                             f"row), got {lengths.tolist()}")
        if block_table is not None:
            used = (torch.arange(block_table.shape[1])
                    < (lengths.view(-1, 1).to(torch.int64) + page - 1) // page)
            entries = block_table.to(torch.int64)[used]
            pages = k_cache.shape[0]
            if entries.numel() and (int(entries.min()) < 0 or int(entries.max()) >= pages):
                raise ValueError(f"block_table names pages outside 0..{pages - 1} (the "
                                 f"paged cache holds {pages} pages)")
        for n in sorted(set(lengths.tolist())):
            kernel.check_lengths(q.shape[2], n)
        return
    device = lengths.device if lengths.device.type != "cpu" else block_table.device
    n = lengths.to(device=device, dtype=torch.int64)
    ok = ((n >= 0) & (n <= cap)).all()
    torch._assert_async(ok, "attngen.decode: lengths outside 0..cache capacity")
    if block_table is not None:
        bt = block_table.to(device=device, dtype=torch.int64)
        used = (torch.arange(bt.shape[1], device=device).view(1, -1)
                < (n.view(-1, 1) + page - 1) // page)
        good = ((bt >= 0) & (bt < k_cache.shape[0])) | ~used
        torch._assert_async(good.all(), "attngen.decode: block_table names a missing page")


def _check(q, k_cache, v_cache, lengths, block_table, starts=None) -> None:
    if k_cache.shape != v_cache.shape or k_cache.dim() != 4 or q.dim() != 4:
        raise ValueError("q must be [B, Hq, M, D] and the caches equal-shaped 4-D tensors")
    if len({q.dtype, k_cache.dtype, v_cache.dtype}) > 1 or q.dtype not in DTYPES:
        raise TypeError(f"q and the caches must share one dtype of float16, bfloat16 or "
                        f"float32, got q {q.dtype}, k_cache {k_cache.dtype}, "
                        f"v_cache {v_cache.dtype}")
    if not q.device == k_cache.device == v_cache.device:
        raise ValueError(f"q and the caches must be on one device, got q {q.device}, "
                         f"k_cache {k_cache.device}, v_cache {v_cache.device}")
    if q.shape[1] % k_cache.shape[1] or q.shape[3] != k_cache.shape[3]:
        raise ValueError(f"q {list(q.shape)} does not fit the cache {list(k_cache.shape)}")
    if lengths.shape != (q.shape[0],):
        raise ValueError(f"lengths must hold one length per batch row ({q.shape[0]})")
    if block_table is None:
        if k_cache.shape[0] != q.shape[0]:
            raise ValueError("a contiguous cache is [B, Hkv, N_max, D]; pass block_table "
                             "with a paged cache [pages, Hkv, page, D]")
    elif block_table.dim() != 2 or block_table.shape[0] != q.shape[0]:
        raise ValueError("block_table must be [B, max_pages]")
    if starts is not None:
        if block_table is not None:
            raise ValueError("starts applies to contiguous caches only, not paged ones")
        if starts.shape != (q.shape[0],):
            raise ValueError(f"starts must hold one start per batch row ({q.shape[0]})")


def _config(kernel, q, k_cache, v_cache, lengths, scale, block_table, n_max) -> DecodeConfig:
    """The interpreter's small blocks; on the GPU the fastest of GPU_CONFIGS for this shape
    (timed once per shape bucket and process), or the first without $ATTNGEN_AUTOTUNE."""
    if interpreting() or not q.is_cuda:
        return INTERPRETER_CONFIG
    if not autotune():
        return GPU_CONFIGS[0]
    B, H, M, D = q.shape
    bucket = (kernel.key, B, k_cache.shape[1], M, 1 << (n_max - 1).bit_length(),
              block_table is None or k_cache.shape[2])
    if bucket not in _TUNED:
        if torch.cuda.is_current_stream_capturing():  # no timing inside a capture
            return GPU_CONFIGS[0]
        best, best_ms = GPU_CONFIGS[0], float("inf")
        for base in GPU_CONFIGS:  # any page size works with any kv block
            for waves in WAVES:
                cfg = dataclasses.replace(base, waves=waves)
                splits = _splits(q, B * k_cache.shape[1], -(-n_max // cfg.block_n), waves)
                try:
                    ms = _graph_ms(lambda cfg=cfg, splits=splits: _launch(
                        kernel, q, k_cache, v_cache, lengths, scale, False, splits,
                        block_table, cfg))
                except Exception as e:  # a configuration this device or compiler cannot build
                    torch.cuda.synchronize()
                    TIMINGS.setdefault(bucket, {})[str(cfg)] = f"{type(e).__name__}: {e}"[:300]
                    break
                TIMINGS.setdefault(bucket, {})[str(cfg)] = ms
                if ms < best_ms:
                    best, best_ms = cfg, ms
        _TUNED[bucket] = best
    return _TUNED[bucket]


def _graph_ms(launch) -> float:
    """Device time of one launch as a serving loop replays it: TUNE_REPLAYS launches
    captured in one CUDA graph, the graph replayed (after a warm-up replay), time ÷ count.
    Eager timing would add ~100 µs of Python per call, more than a window decode takes."""
    launch()  # compiles; makes the per-kernel constants and counters outside the capture
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        launch()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(TUNE_REPLAYS):
                launch()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / TUNE_REPLAYS)
    del graph
    return min(times)


def _splits(q: torch.Tensor, programs: int, kv_blocks: int, waves: float) -> int:
    """About `waves` programs per SM, never more splits than cache blocks."""
    if interpreting() or not q.is_cuda:
        return min(3, kv_blocks)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(kv_blocks, math.ceil(waves * sms / programs)))


def _gather(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """A paged cache [pages, Hkv, page, D] as contiguous rows [B, Hkv, max_pages·page, D]."""
    pages = cache[block_table.long()]  # [B, max_pages, Hkv, page, D]
    B, P, HKV, S, D = pages.shape
    return pages.permute(0, 2, 1, 3, 4).reshape(B, HKV, P * S, D)


def _per_row(kernel, q, k_cache, v_cache, lengths, scale, return_lse, starts=None,
             block_table=None):
    """Plans the split kernel does not run (dynamic parts, or the query heads of one kv
    head in different groups, or a decode module Triton could not build): the prefill
    kernel, row by row (a host synchronisation). `lengths` count from `starts`."""
    if block_table is not None:
        k_cache, v_cache = _gather(k_cache, block_table), _gather(v_cache, block_table)
    outs, lses = [], []
    first = [0] * len(lengths) if starts is None else starts.tolist()
    for b, (n, s) in enumerate(zip(lengths.tolist(), first)):
        o, lse = kernel(q[b:b + 1], k_cache[b:b + 1, :, s:s + n], v_cache[b:b + 1, :, s:s + n],
                        scale=scale, return_lse=True)
        outs.append(o)
        lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out
