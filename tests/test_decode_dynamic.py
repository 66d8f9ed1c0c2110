"""runtime.decode_dynamic: decode steps of dynamic heads on the device, every row in its own
frame, against the exact per-row masks (integrations.masks, DESIGN §5) and the reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attngen
from attngen.integrations.masks import MaskCache, head_mask
from attngen.reference import attention as reference
from attngen.runtime import decode_dynamic

PATTERNS = ["vertical_slash(4, 6)", "sink(2) | vertical_slash(3, 5)",
            "vertical_slash(5, 3) - local(2)", "causal & (local(3) | vertical_slash(2, 2))",
            "block_topk(2, 4)", "sink(2) | block_topk(1, 8)", "block_cover(0.7, 4)",
            "local(3) & block_cover(0.9, 8)"]


def expected(q, k, v, node, starts, ends, scale):
    """Row by row: the row's own keys, its pattern's exact mask, the reference attention."""
    out = torch.zeros_like(q)
    for b, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        qb, kb, vb = q[b], k[b, :, s:e], v[b, :, s:e]
        G = q.shape[1] // k.shape[1]
        kh, vh = kb.repeat_interleave(G, 0), vb.repeat_interleave(G, 0)
        mask = head_mask(node, qb, kh, MaskCache(), scale)  # [heads, M, N_b]
        out[b] = reference(qb[None], kh[None], vh[None], mask=mask, scale=scale)[0]
    return out


@settings(max_examples=30, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), M=st.integers(1, 4), group=st.sampled_from([1, 2]),
       lengths=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 40)), min_size=1,
                        max_size=3), seed=st.integers(0, 99))
def test_decode_heads_match_each_rows_exact_mask(pattern, M, group, lengths, seed):
    torch.manual_seed(seed)
    node = attngen.parse(pattern).node
    B, hk, D, n_max = len(lengths), 2, 16, 56
    starts = torch.tensor([s for s, _ in lengths])
    ends = torch.tensor([s + n + M for s, n in lengths])  # at least M keys per row
    q = torch.randn(B, hk * group, M, D)
    k, v = torch.randn(B, hk, n_max, D), torch.randn(B, hk, n_max, D)
    out = decode_dynamic.decode_heads(q, k, v, [node] * (hk * group), starts, ends, 0.25)
    ref = expected(q, k, v, node, starts, ends, 0.25)
    assert (out - ref).abs().max() < 1e-5, f"{pattern} M={M} lengths={lengths}"


def test_keys_outside_the_rows_range_are_never_read():
    """NaN in the padding before starts and in the spare cache after ends stays out, and
    so does NaN in a value the row's estimate did not pick (the gathered path)."""
    torch.manual_seed(0)
    node = attngen.parse("vertical_slash(4, 6)").node
    q, k, v = torch.randn(2, 2, 1, 16), torch.randn(2, 1, 120, 16), torch.randn(2, 1, 120, 16)
    starts, ends = torch.tensor([0, 5]), torch.tensor([100, 106])
    for t in (k, v):
        t[1, :, :5] = float("nan")
        t[:, :, 106:] = float("nan")
        t[0, :, 100:] = float("nan")
    out = decode_dynamic.decode_heads(q, k, v, [node] * 2, starts, ends, 0.25)
    assert torch.isfinite(out).all()
    ref = expected(q, k.nan_to_num(), v.nan_to_num(), node, starts, ends, 0.25)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("pattern, ok", [("vertical_slash(4, 6)", True),
                                         ("sink(2) | vertical_slash(3, 5)", True),
                                         ("block_topk(2, 8)", True),
                                         ("block_cover(0.5, 16) | sink(4)", True),
                                         ("block_topk(N // 8, 8)", False),
                                         ("vertical_slash(N // 4, 6)", False)])
def test_supported(pattern, ok):
    assert decode_dynamic.supported(attngen.parse(pattern).node) is ok


def test_heads_of_different_kinds_in_one_step():
    """vertical_slash, block_topk, block_cover and a static head side by side (GQA group 2):
    each head gets its own exact mask."""
    torch.manual_seed(3)
    texts = ["block_topk(2, 4)", "vertical_slash(3, 5)", "block_cover(0.8, 8)", "local(5)"]
    nodes = [attngen.parse(t).node for t in texts]
    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 50, 16), torch.randn(2, 2, 50, 16)
    starts, ends = torch.tensor([0, 7]), torch.tensor([44, 50])
    out = decode_dynamic.decode_heads(q, k, v, nodes, starts, ends, 0.25)
    for h, node in enumerate(nodes):
        kv = h // 2
        ref = expected(q[:, h:h + 1], k[:, kv:kv + 1], v[:, kv:kv + 1], node, starts, ends, 0.25)
        assert (out[:, h:h + 1] - ref).abs().max() < 1e-5, texts[h]


def test_a_group_past_every_position_is_one_group(monkeypatch):
    """block_topk / block_cover with g far above N (the language accepts up to 2^30) pool
    one group, as g = N does, without padding the estimate to g rows (2^22 rows × 16 fp32
    would be 256 MiB per head here)."""
    from attngen.runtime import dynamic

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    groups = []  # every group size the estimates pool over

    def spy(fn):
        def wrapped(*args):
            groups.append(args[2])
            return fn(*args)
        return wrapped

    monkeypatch.setattr(dynamic, "_pooled", spy(dynamic._pooled))
    monkeypatch.setattr(decode_dynamic, "_block_picks", spy(decode_dynamic._block_picks))
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 50, 16), torch.randn(1, 1, 50, 16), torch.randn(1, 1, 50, 16)
    for kind in ("block_topk(2, {})", "block_cover(0.8, {})"):
        huge, whole = kind.format(1 << 22), kind.format(50)
        for backend in ("reference", "triton"):
            a = attngen.attention(q, k, v, huge, backend=backend)
            b = attngen.attention(q, k, v, whole, backend=backend)
            assert torch.equal(a, b), (kind, backend)
        node_huge, node_whole = attngen.parse(huge).node, attngen.parse(whole).node
        starts, ends = torch.tensor([0]), torch.tensor([50])
        a = decode_dynamic.decode_heads(q[:, :, -2:], k, v, [node_huge] * 2, starts, ends, 0.25)
        b = decode_dynamic.decode_heads(q[:, :, -2:], k, v, [node_whole] * 2, starts, ends,
                                        0.25)
        assert torch.equal(a, b), kind
    assert groups and max(groups) <= 50, groups
