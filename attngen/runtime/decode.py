"""Decoding: a few queries per batch row against a KV cache with its own length per row,
split over the keys (flash-decoding) and merged exactly by log-sum-exp."""
from __future__ import annotations

import math

import torch

from attngen.ir.pattern import Pattern
from attngen.runtime.derived import module
from attngen.runtime.env import interpreting

INTERPRETER_BLOCK_N = 32
GPU_BLOCK_N = 64


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           lengths: torch.Tensor, pattern: Pattern | str, scale: float | None = None,
           return_lse: bool = False, splits: int | None = None):
    """Attention of q [B, Hq, M, D] (M small: the newest M positions of each row) against
    caches k, v [B, Hkv, N_max, D] whose row b holds `lengths[b]` keys; the queries of row
    b sit at positions lengths[b] − M … lengths[b] − 1. Equals the last M rows of a full
    prefill with the same pattern. Reads only the kv blocks the pattern needs, each once
    per kv head (the group's query heads share it), in `splits` parallel chunks."""
    from attngen.runtime.api import compile

    B, H, M, D = q.shape
    HKV = k_cache.shape[1]
    kernel = compile(pattern, head_dim=D, dtype=q.dtype, heads=H, kv_heads=HKV,
                     device=q.device)
    lengths = lengths.to(device=q.device, dtype=torch.int32)
    if not supported(kernel.spec, H, HKV):
        return _per_row(kernel, q, k_cache, v_cache, lengths, scale, return_lse)
    q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous()
                           for t in (q, k_cache, v_cache))
    G = H // HKV
    block_r = max(16, 1 << (G * M - 1).bit_length())
    block_n = INTERPRETER_BLOCK_N if interpreting() or not q.is_cuda else GPU_BLOCK_N
    if splits is None:
        splits = _splits(q, B * HKV, -(-k_cache.shape[2] // block_n))
    tile_d = 1 << (D - 1).bit_length()
    acc = torch.empty((splits, B, HKV, block_r, tile_d), device=q.device, dtype=torch.float32)
    l_i = torch.empty((splits, B, HKV, block_r), device=q.device, dtype=torch.float32)
    m_i = torch.empty_like(l_i)
    head_group = torch.tensor(kernel.spec.head_group, dtype=torch.int32, device=q.device)
    doc = torch.zeros(1, dtype=torch.int32, device=q.device)
    sm_scale = float(scale if scale is not None else 1.0 / math.sqrt(D))
    module(kernel, "decode").attn_decode[(splits, B * HKV)](
        q, k_cache, v_cache, acc, l_i, m_i, lengths, head_group, doc,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        H, HKV, M, splits, sm_scale, D, HEAD_DIM=tile_d, BLOCK_R=block_r, BLOCK_N=block_n,
        EVEN_D=D == tile_d)
    out, lse = _merge(acc, l_i, m_i)
    # rows r = head · M + query of each kv head → [B, H, M, D]
    out = out[:, :, :G * M, :D].reshape(B, H, M, D).to(q.dtype)
    lse = lse[:, :, :G * M].reshape(B, H, M)
    return (out, lse) if return_lse else out


def supported(spec, heads: int, kv_heads: int) -> bool:
    """Whether the split-KV kernel runs this spec: every part a ranges part, and the query
    heads of each kv head in one group (they share the loops)."""
    G = heads // kv_heads
    same = all(len(set(spec.head_group[g * G:(g + 1) * G])) == 1 for g in range(kv_heads))
    return same and all(p.strategy == "ranges" for g in spec.groups for p in g.parts)


def _merge(acc, l_i, m_i):
    """Exact log-sum-exp merge of the splits' unnormalised states (m_i in log2 units);
    rows with no allowed key in any split give 0 and -inf."""
    m_all = m_i.amax(0)
    m_safe = torch.where(torch.isinf(m_all), 0.0, m_all)
    w = torch.exp2(m_i - m_safe)  # a split that saw nothing has m = -inf: weight 0
    total = (l_i * w).sum(0)
    out = (acc * w[..., None]).sum(0) / torch.where(total == 0, 1.0, total)[..., None]
    lse = torch.where(total == 0, -math.inf, (m_safe + torch.log2(total)) * math.log(2))
    return out, lse


def _splits(q: torch.Tensor, programs: int, kv_blocks: int) -> int:
    """Enough splits to give every SM about two programs, never more than the blocks."""
    if interpreting() or not q.is_cuda:
        return min(3, kv_blocks)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(kv_blocks, -(-2 * sms // programs)))


def _per_row(kernel, q, k_cache, v_cache, lengths, scale, return_lse):
    """Tables and residue classes depend on the length: the prefill kernel, row by row."""
    outs, lses = [], []
    for b, n in enumerate(lengths.tolist()):
        o, lse = kernel(q[b:b + 1], k_cache[b:b + 1, :, :n], v_cache[b:b + 1, :, :n],
                        scale=scale, return_lse=True)
        outs.append(o)
        lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out
