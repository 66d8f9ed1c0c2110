"""Decode (split KV over a cache with per-row lengths) under the interpreter vs the last
rows of a full prefill with the same pattern."""
import pytest
import torch

import attngen
from attngen.reference import attention as reference
from attngen.runtime.decode import INTERPRETER_BLOCK_N, supported

D = 16


def _case(B_lengths, Hq, Hkv, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_max = max(B_lengths) + 7
    B = len(B_lengths)
    q = torch.randn(B, Hq, M, D, generator=g)
    k = torch.randn(B, Hkv, n_max, D, generator=g)
    v = torch.randn(B, Hkv, n_max, D, generator=g)
    return q, k, v, torch.tensor(B_lengths)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern, Hq, Hkv, M", [
    ("causal & (sink(4) | local(20))", 4, 1, 1),          # A-shape, one query, GQA 4 → 1
    ("local(7)", 4, 2, 5),
    ("band(3, 10)", 2, 2, 3),                             # keys after the query
    ("kv_heads { 0: causal & (sink(2) | local(8)); *: causal }", 4, 2, 5),
    ("causal & power(4)", 2, 1, 2),                       # table: the prefill kernel per row
    ("causal & (local(9) | strided(5))", 2, 1, 3),        # permuted: likewise
])
def test_decode_equals_the_last_rows_of_a_full_prefill(pattern, Hq, Hkv, M):
    lengths = [70, 9, 33]
    q, k, v, lens = _case(lengths, Hq, Hkv, M)
    out, lse = attngen.decode(q, k, v, lens, pattern, return_lse=True)
    g = torch.Generator().manual_seed(1)
    for b, n in enumerate(lengths):
        prefix = torch.randn(1, Hq, n - M, D, generator=g) if n > M else q[b:b + 1, :, :0]
        full_q = torch.cat([prefix, q[b:b + 1, :, max(0, M - n):]], dim=2)
        want, want_lse = reference(full_q, k[b:b + 1, :, :n], v[b:b + 1, :, :n], pattern,
                                   return_lse=True)
        rows = min(M, n)
        got, got_lse = out[b:b + 1, :, M - rows:], lse[b:b + 1, :, M - rows:]
        assert (got - want[:, :, -rows:]).abs().max() <= 1e-4, (pattern, b)
        finite = torch.isfinite(want_lse[:, :, -rows:])
        assert torch.equal(torch.isfinite(got_lse), finite)
        assert (got_lse[finite] - want_lse[:, :, -rows:][finite]).abs().max() <= 1e-4


@pytest.mark.usefixtures("interpreter")
def test_decode_reads_only_the_needed_blocks():
    """Cache blocks a window never needs, and positions past each row's length, are NaN:
    the output stays finite and exact, so they were never read."""
    q, k, v, lens = _case([150, 110], 4, 1, 1)
    pattern = "causal & (sink(4) | local(20))"
    want = attngen.decode(q, k, v, lens, pattern)
    for b, n in enumerate(lens.tolist()):
        first_needed = (n - 20) // INTERPRETER_BLOCK_N
        for t in (k, v):
            t[b, :, INTERPRETER_BLOCK_N:first_needed * INTERPRETER_BLOCK_N] = float("nan")
            t[b, :, n:] = float("nan")
    # kv blocks 1..3 of row 0 and block 1 of row 1 lie between the sink and the window
    assert [int(k[b, 0, :n].isnan().any(-1).sum()) for b, n in ((0, 150), (1, 110))] == [96, 32]
    got = attngen.decode(q, k, v, lens, pattern)
    assert torch.isfinite(got).all() and torch.equal(got, want)


@pytest.mark.usefixtures("interpreter")
def test_splits_merge_exactly():
    q, k, v, lens = _case([70, 45], 2, 1, 2)
    outs = [attngen.decode(q, k, v, lens, "causal & (sink(4) | local(20))", splits=s)
            for s in (1, 2, 3)]
    assert all(torch.allclose(o, outs[0], atol=1e-6) for o in outs[1:])


def test_split_kernel_covers_ranges_plans_with_one_group_per_kv_head():
    def spec(text, H, HKV):
        return attngen.compile(text, head_dim=16, dtype=torch.float32, heads=H, kv_heads=HKV,
                               device="cpu").spec

    assert supported(spec("causal & (sink(4) | local(20))", 4, 2), 4, 2)
    assert supported(spec("kv_heads { 0: local(8); *: causal }", 4, 2), 4, 2)
    assert not supported(spec("heads { 0: local(8); *: causal }", 4, 2), 4, 2)
    assert not supported(spec("causal & power(4)", 4, 2), 4, 2)
