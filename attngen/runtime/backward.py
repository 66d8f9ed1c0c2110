"""The launch of a compiled kernel's generated backward: dQ, dK, dV from the forward's O
and LSE (the module comes from runtime.derived)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from attngen.runtime.derived import module
from attngen.runtime.env import interpreting
from attngen.runtime.tables import transpose_csr

if TYPE_CHECKING:
    from attngen.runtime.kernel import Config, Kernel

# (BLOCK_M, BLOCK_N, warps, stages): the interpreter's small blocks; on the GPU a size that
# keeps dK, dV, K, V and a Q/dO tile in registers at head_dim 128 (not tuned yet).
INTERPRETER_CONFIG = (32, 32, 1, 1)
GPU_CONFIG = (64, 64, 4, 2)


def config(q: torch.Tensor) -> Config:
    from attngen.runtime.kernel import Config

    return Config(*(INTERPRETER_CONFIG if interpreting() or not q.is_cuda else GPU_CONFIG))


def launch(kernel: Kernel, q, k, v, out, lse, dout, dlse, scale, doc_ids):
    """(dq, dk, dv) in the inputs' dtypes. dlse: the gradient of the returned LSE or None;
    since d LSE_i / d S_ij = P_ij it only shifts Delta."""
    mod = module(kernel, "backward")
    q, k, v, out, dout = (t if t.stride(-1) == 1 else t.contiguous()
                          for t in (q, k, v, out, dout))
    B, H, M, D = q.shape
    HKV, N = k.shape[1], k.shape[2]
    cfg = config(q)
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()
    # fp32 buffers: every pass adds its terms, the result is rounded once
    dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
    dv = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
    head_group = torch.tensor(kernel.spec.head_group, dtype=torch.int32, device=q.device)
    doc = (doc_ids.to(device=q.device, dtype=torch.int32) if doc_ids is not None
           else torch.zeros(1, dtype=torch.int32, device=q.device))
    sm_scale = float(scale if scale is not None else 1.0 / math.sqrt(D))
    QB, KB = -(-M // cfg.block_m), -(-N // cfg.block_n)
    tile_d = 1 << (D - 1).bit_length()
    shape = dict(HEAD_DIM=tile_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                 num_warps=cfg.warps, num_stages=cfg.stages)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1),
               dout.stride(2))
    kv_strides = strides + (dk.stride(0), dk.stride(1), dk.stride(2))
    q_strides = strides + (dq.stride(0), dq.stride(1), dq.stride(2))
    common = (q, k, v, dout, lse, delta)
    if any(g.identity for g in kernel.spec.groups):
        tab_off, tab_idx = kernel._tables(M, N, cfg, q.device, doc_ids)
        tabt_off, tabt_idx = transpose_csr(tab_off, tab_idx, KB)
        mod.attn_bwd_dkdv[(KB, B * HKV)](*common, dk, dv, head_group, tabt_off, tabt_idx, doc,
                                         *kv_strides, H, HKV, M, N, KB, sm_scale, D, **shape)
        mod.attn_bwd_dq[(QB, B * H)](*common, dq, head_group, tab_off, tab_idx, doc,
                                     *q_strides, H, HKV, M, N, QB, sm_scale, D,
                                     EVEN_N=N % cfg.block_n == 0, **shape)
    for s in kernel.spec.periods:  # residue classes mod s: about M/s queries, N/s keys
        even_n = N % s == 0 and (N // s) % cfg.block_n == 0
        getattr(mod, f"attn_bwd_dkdv_mod{s}")[(s * _cdiv(_cdiv(N, s), cfg.block_n), B * HKV)](
            *common, dk, dv, head_group, doc, *kv_strides, H, HKV, M, N, sm_scale, D, **shape)
        getattr(mod, f"attn_bwd_dq_mod{s}")[(s * _cdiv(_cdiv(M, s), cfg.block_m), B * H)](
            *common, dq, head_group, doc, *q_strides, H, HKV, M, N, sm_scale, D,
            EVEN_N=even_n, **shape)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
