"""The dense oracle `attngen.reference.attention` against PyTorch's own SDPA and logsumexp.

The independent side of every comparison is `torch.nn.functional.scaled_dot_product_attention`
with the boolean mask from `pattern.mask` (the whole M×N predicate), K/V repeated for GQA.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attngen
from attngen.reference import attention

SHAPES = [(1, 1), (113, 203), (128, 128), (129, 129), (37, 300)]
GQA = [(4, 4), (4, 2), (4, 1)]
PATTERNS = [
    "causal & (sink(4) | local(16) | strided(7))",
    "band(3, 5) | columns(0, 9)",
    "heads { 0: causal; 1: local(5); *: full }",
    "fixed(8, 2) & causal",
]
TOL = {torch.float32: {"atol": 2e-5, "rtol": 2e-5}, torch.float64: {"atol": 1e-12, "rtol": 1e-12}}


def _qkv(B, Hq, Hkv, M, N, D, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g, dtype=dtype)
               for h, n in ((Hq, M), (Hkv, N), (Hkv, N)))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _sdpa(q, k, v, mask, scale=None):
    """SDPA with an explicit boolean mask [H or 1, M, N]; K/V repeated for GQA."""
    rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1),
                                          v.repeat_interleave(rep, 1),
                                          attn_mask=mask[None], scale=scale)


def _lse(q, k, mask, scale=None):
    rep = q.shape[1] // k.shape[1]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.double() @ k.double().repeat_interleave(rep, 1).transpose(-1, -2)) * scale
    return torch.logsumexp(s.masked_fill(~mask[None], -math.inf), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [16, 64])
@pytest.mark.parametrize("Hq,Hkv", GQA)
@pytest.mark.parametrize("M,N", SHAPES)
def test_matches_sdpa(M, N, Hq, Hkv, D, dtype):
    text = PATTERNS[(SHAPES.index((M, N)) + GQA.index((Hq, Hkv)) + D) % len(PATTERNS)]
    p = attngen.parse(text)
    q, k, v = _qkv(2, Hq, Hkv, M, N, D, dtype)
    out, lse = attention(q, k, v, p, return_lse=True)
    mask = p.mask(M, N, heads=Hq, kv_heads=Hkv)
    assert out.dtype == dtype and out.shape == (2, Hq, M, D)
    assert lse.dtype == torch.float32 and lse.shape == (2, Hq, M)
    torch.testing.assert_close(out, _sdpa(q, k, v, mask), **TOL[dtype],
                               msg=lambda m: f"{text} M={M} N={N}: {m}")
    torch.testing.assert_close(lse, _lse(q, k, mask).float(), atol=1e-5, rtol=1e-5)


def test_differs_from_top_left_alignment():
    """The test above can fail: a top-left aligned causal mask gives another answer."""
    q, k, v = _qkv(1, 2, 2, 37, 300, 16, torch.float64)
    top_left = torch.ones(37, 300, dtype=torch.bool).tril()[None]
    assert not torch.allclose(attention(q, k, v, "causal"), _sdpa(q, k, v, top_left))
    torch.testing.assert_close(attention(q, k, v, mask=top_left), _sdpa(q, k, v, top_left))


@pytest.mark.parametrize("text", ["where(q < 95)", "rows(90, 100, 202)", "sink(3) & where(k > 5)"])
def test_rows_without_keys(text):
    p = attngen.parse(text)
    M, N = 113, 203
    q, k, v = _qkv(2, 4, 2, M, N, 16, torch.float64, requires_grad=True)
    out, lse = attention(q, k, v, p, return_lse=True)
    mask = p.mask(M, N, heads=4)
    empty = ~mask.any(-1)[None].expand(2, 4, M)  # [B, H, M]
    assert empty.any()
    assert (out[empty] == 0).all() and torch.isneginf(lse[empty]).all()
    assert not out.isnan().any() and not lse.isnan().any()
    keep = ~empty
    torch.testing.assert_close(out[keep], _sdpa(q, k, v, mask)[keep])
    torch.testing.assert_close(lse[keep], _lse(q, k, mask)[keep].float())

    loss = out.square().sum() + torch.where(torch.isfinite(lse), lse, 0).sum()
    loss.backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[empty] == 0).all()


def test_gradcheck_with_empty_rows():
    q, k, v = _qkv(1, 2, 1, 6, 9, 4, torch.float64, requires_grad=True)
    text = "causal & where(q != 5) | sink(1) & where(q == 3)"  # row 2 (q = 5) has no key
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, text), (q, k, v))


@pytest.mark.parametrize("text", [PATTERNS[0], PATTERNS[2]])
def test_gradients_match_sdpa(text):
    p = attngen.parse(text)
    M, N = 37, 70
    q, k, v = _qkv(2, 4, 2, M, N, 16, torch.float64, requires_grad=True)
    attention(q, k, v, p).square().sum().backward()
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    _sdpa(q, k, v, p.mask(M, N, heads=4)).square().sum().backward()
    for a, t in zip(ours, (q, k, v)):
        torch.testing.assert_close(a, t.grad)


@pytest.mark.parametrize("M,N", [(113, 203), (129, 129), (300, 300), (1, 50)])
@pytest.mark.parametrize("text", [PATTERNS[0], PATTERNS[2]])
def test_chunking_is_bitwise(M, N, text):
    q, k, v = _qkv(2, 4, 2, M, N, 16, torch.float32)
    out, lse = attention(q, k, v, text, return_lse=True)
    for chunk_rows in (1, 7, 64, 65):
        o, l = attention(q, k, v, text, return_lse=True, chunk_rows=chunk_rows)
        assert torch.equal(o, out) and torch.equal(l, lse), chunk_rows


def test_deterministic():
    q, k, v = _qkv(2, 4, 1, 129, 129, 64, torch.float32)
    a = attention(q, k, v, PATTERNS[0], return_lse=True)
    b = attention(q, k, v, PATTERNS[0], return_lse=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mixture_applies_per_head():
    text = "heads { 0: causal; 1: local(5); *: full }"
    M, N = 40, 60
    q, k, v = _qkv(1, 4, 2, M, N, 16, torch.float64)
    out = attention(q, k, v, text)
    for h, single in enumerate(["causal", "local(5)", "full", "full"]):
        mask = attngen.parse(single).mask(M, N)
        ref = _sdpa(q[:, h:h + 1], k[:, h // 2:h // 2 + 1], v[:, h // 2:h // 2 + 1], mask)
        torch.testing.assert_close(out[:, h:h + 1], ref)
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_kv_heads_mixture_and_repeated_kv():
    text = "kv_heads { 0: causal; *: local(3) }"
    p = attngen.parse(text)
    M, N = 30, 30
    q, k, v = _qkv(1, 4, 2, M, N, 16, torch.float64)
    out = attention(q, k, v, p)
    torch.testing.assert_close(out, _sdpa(q, k, v, p.mask(M, N, heads=4, kv_heads=2)))
    # K/V already repeated for GQA (as Hugging Face does): the pattern still names 2 kv heads.
    k4, v4 = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    torch.testing.assert_close(attention(q, k4, v4, p, kv_heads_pattern=2), out)
    assert not torch.allclose(attention(q, k4, v4, p), out)


@pytest.mark.parametrize("text", ["causal", PATTERNS[0], "causal & local(7) | columns(3)"])
def test_decode_and_chunked_prefill_are_bottom_right(text):
    N = 203
    q, k, v = _qkv(2, 4, 2, N, N, 16, torch.float64)
    full, full_lse = attention(q, k, v, text, return_lse=True)
    dec, dec_lse = attention(q[:, :, -1:], k, v, text, return_lse=True)
    torch.testing.assert_close(dec, full[:, :, -1:])
    torch.testing.assert_close(dec_lse, full_lse[:, :, -1:])
    part = attention(q[:, :, -37:], k, v, text)
    torch.testing.assert_close(part, full[:, :, -37:])


def test_precomputed_mask_equals_pattern():
    p = attngen.parse(PATTERNS[2])
    M, N = 113, 203
    q, k, v = _qkv(2, 4, 2, M, N, 16, torch.float32)
    assert torch.equal(attention(q, k, v, p), attention(q, k, v, mask=p.mask(M, N, heads=4)))
    c = attngen.parse("causal")
    assert torch.equal(attention(q, k, v, c), attention(q, k, v, mask=c.mask(M, N)))


def test_no_pattern_is_full_attention_and_scale():
    q, k, v = _qkv(1, 2, 2, 20, 30, 16, torch.float64)
    full = torch.ones(1, 20, 30, dtype=torch.bool)
    torch.testing.assert_close(attention(q, k, v), _sdpa(q, k, v, full))
    torch.testing.assert_close(attention(q, k, v, scale=0.3), _sdpa(q, k, v, full, scale=0.3))
    assert torch.equal(attention(q, k, v, "full"), attention(q, k, v, scale=1 / math.sqrt(16)))


def test_low_precision_inputs_compute_in_fp32():
    q, k, v = _qkv(1, 2, 1, 50, 50, 16, torch.float32)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    out, lse = attention(qb, kb, vb, "causal", return_lse=True)
    ref, ref_lse = attention(qb.float(), kb.float(), vb.float(), "causal", return_lse=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert torch.equal(out, ref.bfloat16()) and torch.equal(lse, ref_lse)


def test_document_ids():
    p = attngen.parse("document & causal")
    N = 50
    ids = torch.tensor([0] * 13 + [1] * 20 + [2] * 17)
    q, k, v = _qkv(1, 2, 2, N, N, 16, torch.float64)
    out = attention(q, k, v, p, doc_ids=ids)
    torch.testing.assert_close(out, _sdpa(q, k, v, p.mask(N, N, doc_ids=ids)))
    with pytest.raises(ValueError, match="doc_ids"):
        attention(q, k, v, p, doc_ids=ids[:-1])


def test_no_keys():
    q, k, v = _qkv(1, 2, 2, 3, 0, 8, torch.float32)
    out, lse = attention(q, k, v, "causal", return_lse=True)
    assert out.shape == (1, 2, 3, 8) and (out == 0).all() and torch.isneginf(lse).all()


def test_dynamic_pattern_not_implemented():
    q, k, v = _qkv(1, 2, 2, 16, 16, 8, torch.float32)
    with pytest.raises(NotImplementedError, match="vertical_slash"):
        attention(q, k, v, "causal & vertical_slash(4, 4)")


@pytest.mark.parametrize("shapes,kw,match", [
    (((4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)), {}, "rank 4"),
    (((1, 3, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {}, "multiple of kv heads"),
    (((1, 4, 8, 16), (1, 2, 8, 32), (1, 2, 8, 32)), {}, "head dim"),
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 9, 16)), {}, r"\[Hkv, N\]"),
    (((2, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {}, "batch"),
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {"mask": torch.ones(2, 8, 8, dtype=torch.bool)},
     "mask must have shape"),
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {"mask": torch.ones(1, 8, 8)}, "bool"),
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)),
     {"mask": torch.ones(1, 8, 8, dtype=torch.bool), "pattern": "causal"}, "not both"),
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {"chunk_rows": 0}, "chunk_rows"),
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)),
     {"pattern": "causal", "kv_heads_pattern": 3}, "kv_heads_pattern"),
])
def test_bad_shapes(shapes, kw, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, **kw)


def test_autograd_path_is_bitwise_the_same():
    q, k, v = _qkv(2, 4, 2, 129, 150, 16, torch.float32)
    with torch.no_grad():
        a, la = attention(q, k, v, PATTERNS[2], return_lse=True)
    b, lb = attention(q.requires_grad_(), k, v, PATTERNS[2], return_lse=True)
    assert b.requires_grad and torch.equal(a, b.detach()) and torch.equal(la, lb.detach())
