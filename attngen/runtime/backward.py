"""The launch of a compiled kernel's generated backward: dQ, dK, dV from the forward's O
and LSE (the module comes from runtime.derived). The dK/dV pass and the dQ pass are tuned
apart: they hold different tiles (dK, dV per kv block; dQ per query block)."""
from __future__ import annotations

import math

import torch

from attngen.env import autotune, interpreting
from attngen.lower.grid import Grid
from attngen.runtime import dynamic
from attngen.runtime.derived import module
from attngen.runtime.launch import Compiled, Config, doc_tensor, signed, table_key, upcast
from attngen.runtime.tables import transpose_csr

# (BLOCK_M, BLOCK_N, warps, stages). The interpreter's small blocks; on the GPU a search
# space per pass, the first entry used without $ATTNGEN_AUTOTUNE: the configurations that
# won somewhere in the H100 sweep at head_dim 128 (docs/backward.md lists all it timed).
# dK/dV keeps a BLOCK_N tile of K, V, dK, dV (fp32) and streams query blocks; dQ keeps
# BLOCK_M rows of Q, dO, dQ and streams kv blocks. A BLOCK_N of 128 with 4 warps spills
# (measured 3-6x slower): 8 warps there.
INTERPRETER_CONFIG = (32, 32, 1, 1)
DKDV_CONFIGS = [(64, 128, 8, 3), (64, 64, 4, 2), (32, 64, 4, 3)]
DQ_CONFIGS = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (64, 64, 4, 2)]
_TUNED: dict = {}
# (pass, config) → first and last lines of the error of a configuration that did not build or run
FAILURES: dict = {}
# (pattern text, pass, M, N) → {config: median ms}, and (pattern text, M, N) → the chosen
# (dK/dV, dQ) configs: what the tuning saw, for the benchmark's report
TIMINGS: dict = {}
CHOSEN: dict = {}


def configs(kernel: Compiled, q, k, v, out, lse, dout, doc_ids, estimate=None
            ) -> tuple[Config, Config]:
    """(dK/dV config, dQ config) for this shape: timed once per shape bucket and process."""
    if interpreting() or not q.is_cuda:
        return Config(*INTERPRETER_CONFIG), Config(*INTERPRETER_CONFIG)
    if not autotune():
        return Config(*DKDV_CONFIGS[0]), Config(*DQ_CONFIGS[0])
    bucket = (kernel.key, q.shape[0], q.shape[2], k.shape[2])
    if bucket not in _TUNED:
        _TUNED[bucket] = tuple(_tune(kernel, phase, cands, q, k, v, out, lse, dout, doc_ids,
                                     estimate)
                               for phase, cands in (("dkdv", DKDV_CONFIGS),
                                                    ("dq", DQ_CONFIGS)))
        CHOSEN[str(kernel.pattern), q.shape[2], k.shape[2]] = _TUNED[bucket]
    return _TUNED[bucket]


def _tune(kernel, phase, candidates, q, k, v, out, lse, dout, doc_ids, estimate):
    import triton.testing

    D = q.shape[3]
    best, best_ms = None, float("inf")
    for c in candidates:
        cfg = Config(*c)
        if max(cfg.block_m, cfg.block_n) * (1 << (D - 1).bit_length()) > 128 * 256:
            continue
        try:
            bufs = _buffers(kernel, q, k, v, out, dout, None)
            ms = triton.testing.do_bench(lambda: _phase(
                kernel, phase, cfg, q, k, v, lse, dout, None, doc_ids, *bufs, estimate),
                warmup=3, rep=20)
        except Exception as e:  # a configuration this device or compiler cannot build
            lines = str(e).strip().splitlines() or [""]
            FAILURES[phase, c] = (f"{type(e).__name__}: {lines[0][:300]}"
                                  + (f" … {' / '.join(lines[-3:])[-400:]}" if len(lines) > 1
                                     else ""))
            continue
        TIMINGS.setdefault((str(kernel.pattern), phase, q.shape[2], k.shape[2]), {})[c] = ms
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise RuntimeError(f"no backward {phase} configuration compiled for "
                           f"`{kernel.pattern}`: {FAILURES}")
    return best


def launch(kernel: Compiled, q, k, v, out, lse, dout, dlse, scale, doc_ids,
           config: tuple[Config, Config] | None = None, estimate=None):
    """(dq, dk, dv) in the inputs' dtypes. dlse: the gradient of the returned LSE or None;
    since d LSE_i / d S_ij = P_ij it only shifts Delta. estimate: the forward's
    (runtime.dynamic.Estimate) for dynamic patterns; each pass builds its block lists from
    it for its own block sizes (runtime.dynamic.indices / transposed), never re-estimating."""
    if upcast(q):
        grads = launch(kernel, q.float(), k.float(), v.float(), out.float(), lse, dout.float(),
                       dlse, scale, doc_ids, config, estimate)
        return tuple(g.to(q.dtype) for g in grads)
    q, scale, sign = signed(q, scale)  # as the forward ran; dq' is sign · dq
    q, k, v, out, dout = (t if t.stride(-1) == 1 else t.contiguous()
                          for t in (q, k, v, out, dout))
    cfg_kv, cfg_q = config or configs(kernel, q, k, v, out, lse, dout, doc_ids, estimate)
    dq, dk, dv, delta = _buffers(kernel, q, k, v, out, dout, dlse)
    _phase(kernel, "dkdv", cfg_kv, q, k, v, lse, dout, scale, doc_ids, dq, dk, dv, delta,
           estimate)
    _phase(kernel, "dq", cfg_q, q, k, v, lse, dout, scale, doc_ids, dq, dk, dv, delta,
           estimate)
    if sign != 1.0:
        dq = dq * sign
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _buffers(kernel, q, k, v, out, dout, dlse):
    """Gradient buffers and Delta = rowsum(dO·O) (− dLSE). The first pass stores every row;
    with later passes adding terms the buffers are fp32 (the result is rounded once), with
    one pass they are the inputs' dtype. Under the interpreter they start as NaN, so a row
    no pass wrote shows."""
    B, H, M, D = q.shape
    delta = torch.empty((B, H, M), device=q.device, dtype=torch.float32)
    dlse = delta if dlse is None else dlse.float().contiguous()
    block = 32 if interpreting() else 64
    module(kernel, "backward").attn_bwd_delta[(-(-M // block), B * H)](
        out, dout, dlse, delta, out.stride(0), out.stride(1), out.stride(2), dout.stride(0),
        dout.stride(1), dout.stride(2), H, M, D, HEAD_DIM=1 << (D - 1).bit_length(),
        BLOCK_M=block, HAS_DLSE=dlse is not delta)
    several = _passes(kernel) > 1

    def buffer(t):
        dtype = torch.float32 if several else t.dtype
        if interpreting():
            return torch.full(t.shape, float("nan"), device=t.device, dtype=dtype)
        return torch.empty(t.shape, device=t.device, dtype=dtype)

    return buffer(q), buffer(k), buffer(v), delta


def _passes(kernel) -> int:
    """Launches per gradient that write it: the identity-order pass, one per residue class
    period, and (dK, dV) the gathered columns' pass of vertical_slash heads."""
    columns = any(p.dynamic.kind == "vertical_slash" for _, p in kernel.spec.dynamic)
    return (int(any(g.identity for g in kernel.spec.groups)) + len(kernel.spec.periods)
            + columns)


def _phase(kernel, phase, cfg, q, k, v, lse, dout, scale, doc_ids, dq, dk, dv, delta,
           estimate=None):
    """Every launch of one pass ("dkdv" or "dq"): the identity-order part, then each class."""
    mod = module(kernel, "backward")
    B, H, M, D = q.shape
    HKV, N = k.shape[1], k.shape[2]
    if str(q.device) not in kernel.tables:  # the head → group map, once per device
        kernel.tables[str(q.device)] = torch.tensor(kernel.spec.head_group, dtype=torch.int32,
                                                    device=q.device)
    head_group = kernel.tables[str(q.device)]
    doc = doc_tensor(doc_ids, q.device)
    sm_scale = float(scale if scale is not None else 1.0 / math.sqrt(D))
    QB, KB = -(-M // cfg.block_m), -(-N // cfg.block_n)
    tile_d = 1 << (D - 1).bit_length()
    shape = dict(HEAD_DIM=tile_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                 num_warps=cfg.warps, num_stages=cfg.stages)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1),
               dout.stride(2))
    common = (q, k, v, dout, lse, delta)
    parts = kernel.spec.dynamic
    grid = Grid(M, N, cfg.block_m, cfg.block_n)
    first = True  # the first launch stores, later ones add (ACCUMULATE)
    if phase == "dkdv":
        kv_strides = strides + (dk.stride(0), dk.stride(1), dk.stride(2))
        if any(g.identity for g in kernel.spec.groups):
            tabt_off, tabt_idx = _transposed_tables(kernel, M, N, cfg, q.device, doc_ids)
            dyn = ()
            columns = None
            if parts:  # per (bh, kv block): tested query blocks, full query blocks
                tested, full, columns = dynamic.transposed(parts, estimate, B, H, HKV, M, grid)
                dyn = (*tested, *full, *estimate.flag_args())
            mod.attn_bwd_dkdv[(KB, B * HKV)](*common, dk, dv, head_group, tabt_off, tabt_idx,
                                             *dyn, doc, *kv_strides, H, HKV, M, N, KB, sm_scale, D,
                                             ACCUMULATE=False, **shape)
            first = False
            if columns is not None:  # vertical_slash: the gathered columns' terms
                keys, counts, crossed = columns
                mod.attn_bwd_dkdv_cols[(_cdiv(keys.shape[1], cfg.block_n), B * HKV)](
                    *common, dk, dv, head_group, keys, counts, crossed, estimate.vert, doc,
                    *kv_strides, keys.shape[1], H, HKV, M, N, QB, KB, sm_scale, D, **shape)
        for s in kernel.spec.periods:  # residue classes mod s: about M/s queries, N/s keys
            getattr(mod, f"attn_bwd_dkdv_mod{s}")[
                (s * _cdiv(_cdiv(N, s), cfg.block_n), B * HKV)](
                *common, dk, dv, head_group, doc, *kv_strides, H, HKV, M, N, sm_scale, D,
                ACCUMULATE=not first, **shape)
            first = False
        return
    q_strides = strides + (dq.stride(0), dq.stride(1), dq.stride(2))
    if any(g.identity for g in kernel.spec.groups):
        tab_off, tab_idx = kernel._tables(M, N, cfg, q.device, doc_ids)
        dyn = (dynamic.indices(parts, estimate, B, H, M, grid).kernel_args() if parts
               else ())
        mod.attn_bwd_dq[(QB, B * H)](*common, dq, head_group, tab_off, tab_idx, doc, *dyn,
                                     *q_strides, H, HKV, M, N, QB, sm_scale, D,
                                     EVEN_N=N % cfg.block_n == 0, ACCUMULATE=False, **shape)
        first = False
    for s in kernel.spec.periods:
        even_n = N % s == 0 and (N // s) % cfg.block_n == 0
        getattr(mod, f"attn_bwd_dq_mod{s}")[(s * _cdiv(_cdiv(M, s), cfg.block_m), B * H)](
            *common, dq, head_group, doc, *q_strides, H, HKV, M, N, sm_scale, D,
            EVEN_N=even_n, ACCUMULATE=not first, **shape)
        first = False


def _transposed_tables(kernel, M, N, cfg, device, doc_ids):
    """The dK/dV pass's CSR (per kv block, the query blocks of each table group), made once
    per shape like the forward's tables; plans without table groups pass the forward's
    placeholder."""
    tab_off, tab_idx = kernel._tables(M, N, cfg, device, doc_ids)
    if not any(g.table_slot >= 0 for g in kernel.spec.groups):
        return tab_off, tab_idx
    key = ("transposed", *table_key(M, N, cfg, device, doc_ids))
    if key not in kernel.tables:
        kernel.tables[key] = transpose_csr(tab_off, tab_idx, _cdiv(N, cfg.block_n))
    return kernel.tables[key]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
