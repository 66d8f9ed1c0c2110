"""Shared helpers: run a generated kernel under the interpreter and compare with the oracle."""
from __future__ import annotations

import torch

import attngen
from attngen.reference import attention as reference

TOL = 1e-4  # fp32 outputs under the interpreter vs the fp32 oracle (max abs error)


def inputs(B, Hq, Hkv, M, N, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, M, D, generator=g), torch.randn(B, Hkv, N, D, generator=g),
            torch.randn(B, Hkv, N, D, generator=g))


def check(pattern, B=1, Hq=2, Hkv=1, M=37, N=53, D=16, doc_ids=None, seed=0):
    p = attngen.parse(pattern) if isinstance(pattern, str) else pattern
    q, k, v = inputs(B, Hq, Hkv, M, N, D, seed)
    out, lse = attngen.attention(q, k, v, p, return_lse=True, doc_ids=doc_ids,
                                 backend="triton")
    ref_out, ref_lse = reference(q, k, v, p, return_lse=True, doc_ids=doc_ids,
                                 kv_heads_pattern=Hkv)
    where = f"pattern {p} at B={B} Hq={Hq} Hkv={Hkv} M={M} N={N} D={D}"
    assert torch.isfinite(out).all(), f"non-finite output for {where}"
    err = (out - ref_out).abs().max().item()
    assert err <= TOL, f"output error {err:.2e} > {TOL} for {where}"
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), f"empty rows differ: {where}"
    finite = torch.isfinite(ref_lse)
    lse_err = (lse[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
    assert lse_err <= TOL, f"LSE error {lse_err:.2e} > {TOL} for {where}"
    empty = ~finite
    assert torch.equal(out.transpose(1, 2)[empty.transpose(1, 2)],
                       torch.zeros_like(out.transpose(1, 2)[empty.transpose(1, 2)]))
    return out, lse


def nan_padded(t: torch.Tensor, extra: int = 40) -> torch.Tensor:
    """A leaf buffer holding t [B, H, L, D] followed by `extra` rows of NaN along L: a view
    of its first L rows tests that kernels never read past the length."""
    big = torch.full(t.shape[:2] + (t.shape[2] + extra, t.shape[3]), float("nan"))
    big[:, :, :t.shape[2]] = t
    return big.requires_grad_()
