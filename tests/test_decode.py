"""Decode (split KV over a cache with per-row lengths) under the interpreter vs the last
rows of a full prefill with the same pattern."""
import pytest
import torch
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

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
    ("causal & power(4)", 2, 1, 2),                       # table: a list per row, split
    ("causal & (local(9) | sink(4) | fixed(16, 2))", 4, 2, 3),  # a table from a union
    ("kv_heads { 0: causal & power(4); *: local(8) }", 4, 2, 1),  # table beside ranges
    ("causal & (local(9) | strided(5))", 2, 1, 3),        # residue classes: key lists
    ("causal & strided(7)", 4, 2, 4),                     # only residue classes
    ("kv_heads { 0: causal & (sink(4) | strided(6)); *: causal & power(4) }", 4, 2, 2),
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


def _needed_blocks(pattern, n, M, Hq, Hkv, block):
    """kv blocks holding a key allowed to one of the newest M queries (any head), from the
    pattern's dense mask (the oracle), and the blocks of the cache's first n keys."""
    mask = attngen.parse(pattern).mask(min(M, n), n, heads=Hq, kv_heads=Hkv)
    keys = mask.any(0).any(0).nonzero().flatten()
    return set((keys // block).tolist()), set(range(-(-n // block)))


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern, Hq, Hkv, M", [
    ("causal & power(4)", 2, 1, 1),
    ("causal & (sink(4) | power(8))", 4, 2, 2),
])
def test_table_decode_reads_only_the_needed_blocks(pattern, Hq, Hkv, M):
    """A table plan decodes in the split kernel from per-row block lists: every cache
    block its newest queries do not need, and every position past a row's length, is NaN,
    and the output stays finite and equal to the clean cache's."""
    assert supported(attngen.compile(pattern, head_dim=D, dtype=torch.float32, heads=Hq,
                                     kv_heads=Hkv, device="cpu").spec, Hq, Hkv)
    q, k, v, lens = _case([700, 333, 190], Hq, Hkv, M)
    want, want_lse = attngen.decode(q, k, v, lens, pattern, return_lse=True)
    unread = 0
    for b, n in enumerate(lens.tolist()):
        needed, blocks = _needed_blocks(pattern, n, M, Hq, Hkv, INTERPRETER_BLOCK_N)
        for j in blocks - needed:
            for t in (k, v):
                t[b, :, j * INTERPRETER_BLOCK_N:(j + 1) * INTERPRETER_BLOCK_N] = float("nan")
        for t in (k, v):
            t[b, :, n:] = float("nan")
        unread += len(blocks - needed)
    assert unread >= 10  # the lists skip most of these caches
    got, got_lse = attngen.decode(q, k, v, lens, pattern, return_lse=True)
    assert torch.isfinite(got).all() and torch.equal(got, want)
    assert torch.equal(got_lse, want_lse)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern, window, Hq, Hkv, M", [
    ("causal & strided(16)", None, 2, 1, 1),
    ("causal & (local(9) | strided(12))", "causal & local(9)", 4, 2, 3),
])
def test_residue_class_decode_reads_only_the_needed_keys(pattern, window, Hq, Hkv, M):
    """Residue-class parts decode from per-row key lists: every key that none of the
    newest M queries may see is NaN (not just the blocks: the keys between a class's keys
    too), except in the kv blocks of a range-lowered window part (read whole, masked), and
    the output stays finite and equal to the clean cache's."""
    q, k, v, lens = _case([400, 161, 77], Hq, Hkv, M)
    want, want_lse = attngen.decode(q, k, v, lens, pattern, return_lse=True)
    for b, n in enumerate(lens.tolist()):
        mask = attngen.parse(pattern).mask(min(M, n), n, heads=Hq, kv_heads=Hkv)
        unused = ~mask.any(0).any(0)
        if window is not None:
            needed, _ = _needed_blocks(window, n, M, Hq, Hkv, INTERPRETER_BLOCK_N)
            for j in needed:
                unused[j * INTERPRETER_BLOCK_N:(j + 1) * INTERPRETER_BLOCK_N] = False
        assert unused.float().mean() > 0.5  # most of the cache is skipped
        for t in (k, v):
            t[b, :, :n][:, unused] = float("nan")
            t[b, :, n:] = float("nan")
    got, got_lse = attngen.decode(q, k, v, lens, pattern, return_lse=True)
    assert torch.isfinite(got).all() and torch.equal(got, want)
    assert torch.equal(got_lse, want_lse)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.integers(1, 140), min_size=1, max_size=3), st.integers(1, 5),
       st.integers(1, 4), st.sampled_from([0, 8, 32]),
       st.sampled_from(["causal & power(4)", "causal & (local(9) | sink(4) | fixed(16, 2))",
                        "kv_heads { 0: causal & power(4); *: causal & (sink(2) | local(8)) }",
                        "causal & (local(9) | strided(5))",
                        "kv_heads { 0: causal & strided(6); *: causal & power(4) }"]))
@example(lengths=[140, 7, 77], M=5, splits=3, page=8,
         pattern="kv_heads { 0: causal & power(4); *: causal & (sink(2) | local(8)) }")
@example(lengths=[2, 139], M=4, splits=4, page=32, pattern="causal & power(4)")
@example(lengths=[97, 3, 140], M=5, splits=2, page=16,
         pattern="kv_heads { 0: causal & strided(6); *: causal & power(4) }")
def test_table_and_class_decode_equals_the_prefill_for_any_lengths(
        interpreter, lengths, M, splits, page, pattern):
    """Per-row lengths (shorter than M too), split counts, contiguous or paged caches: the
    split kernel with per-row block and key lists equals the last rows of a full prefill."""
    note(f"lengths={lengths} M={M} splits={splits} page={page} pattern={pattern!r}")
    q, k, v, lens = _case(lengths, 4, 2, M, seed=len(lengths) * 1000 + sum(lengths))
    table = None
    if page:
        k, table = _paged(k, lens, page)
        v, _ = _paged(v, lens, page)
    out, lse = attngen.decode(q, k, v, lens, pattern, return_lse=True, splits=splits,
                              block_table=table)
    q2, k2, v2, _ = _case(lengths, 4, 2, M, seed=len(lengths) * 1000 + sum(lengths))
    for b, n in enumerate(lengths):
        rows = min(M, n)
        full_q = torch.cat([torch.randn(1, 4, n - rows, D), q2[b:b + 1, :, M - rows:]], dim=2)
        want, want_lse = reference(full_q, k2[b:b + 1, :, :n], v2[b:b + 1, :, :n], pattern,
                                   return_lse=True)
        assert (out[b:b + 1, :, M - rows:] - want[:, :, -rows:]).abs().max() <= 1e-4
        finite = torch.isfinite(want_lse[:, :, -rows:])
        got_lse = lse[b:b + 1, :, M - rows:]
        assert torch.equal(torch.isfinite(got_lse), finite)
        if finite.any():
            assert (got_lse[finite] - want_lse[:, :, -rows:][finite]).abs().max() <= 1e-4


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("splits", [1, 2])
def test_a_row_with_no_allowed_key_gives_zero_and_minus_inf(splits):
    """local(4) & sink(4) allows nothing to a query past position 7 (row 0, length 40) and
    keys 3..6 to the query at 6 (row 1): zeros and -inf for the first, the prefill's rows
    for the second, whether one split normalises its own rows or the splits are merged."""
    q, k, v, lens = _case([40, 7], 2, 1, 1)
    pattern = "local(4) & sink(4)"
    out, lse = attngen.decode(q, k, v, lens, pattern, return_lse=True, splits=splits)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isneginf(lse[0]).all()
    want, want_lse = reference(q[1:], k[1:, :, :7], v[1:, :, :7], pattern, return_lse=True)
    assert (out[1:] - want).abs().max() <= 1e-5 and (lse[1:] - want_lse).abs().max() <= 1e-5


@pytest.mark.usefixtures("interpreter")
def test_splits_merge_exactly():
    q, k, v, lens = _case([70, 45], 2, 1, 2)
    outs = [attngen.decode(q, k, v, lens, "causal & (sink(4) | local(20))", splits=s)
            for s in (1, 2, 3)]
    assert all(torch.allclose(o, outs[0], atol=1e-6) for o in outs[1:])


def test_split_kernel_covers_static_plans_with_one_group_per_kv_head():
    def spec(text, H, HKV):
        return attngen.compile(text, head_dim=16, dtype=torch.float32, heads=H, kv_heads=HKV,
                               device="cpu").spec

    assert supported(spec("causal & (sink(4) | local(20))", 4, 2), 4, 2)
    assert supported(spec("kv_heads { 0: local(8); *: causal }", 4, 2), 4, 2)
    assert not supported(spec("heads { 0: local(8); *: causal }", 4, 2), 4, 2)
    assert supported(spec("causal & power(4)", 4, 2), 4, 2)  # a table: per-row lists
    assert supported(spec("causal & (local(9) | strided(5))", 4, 2), 4, 2)  # key lists


def _paged(cache, lengths, page, seed=0):
    """The rows of a contiguous cache [B, Hkv, N_max, D] scattered over shuffled pages of
    `page` keys: (pages [P, Hkv, page, D], block_table [B, max_pages])."""
    B, HKV, n_max, _ = cache.shape
    per_row = -(-n_max // page)
    order = torch.randperm(B * per_row + 3, generator=torch.Generator().manual_seed(seed))
    pages = torch.full((B * per_row + 3, HKV, page, cache.shape[3]), float("nan"))
    table = order[:B * per_row].reshape(B, per_row)
    for b in range(B):
        for p in range(-(-int(lengths[b]) // page)):
            chunk = cache[b, :, p * page:(p + 1) * page]
            pages[table[b, p], :, :chunk.shape[1]] = chunk
    return pages, table.to(torch.int32)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern, page, Hq, Hkv, M", [
    ("causal & (sink(4) | local(20))", 16, 4, 1, 1),       # pages smaller than a kv block
    ("causal", 64, 2, 2, 3),                                # a kv block inside one page
    ("local(7)", 8, 8, 2, 2),
    ("causal & power(4)", 16, 2, 1, 2),                     # table: gathered, then per row
])
def test_paged_cache_equals_contiguous(pattern, page, Hq, Hkv, M):
    """A block table over shuffled pages (unused slots NaN) gives the contiguous result."""
    q, k, v, lens = _case([70, 9, 33], Hq, Hkv, M)
    want, want_lse = attngen.decode(q, k, v, lens, pattern, return_lse=True)
    k_pages, table = _paged(k, lens, page)
    v_pages, _ = _paged(v, lens, page)
    got, got_lse = attngen.decode(q, k_pages, v_pages, lens, pattern, return_lse=True,
                                  block_table=table)
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() <= 1e-5
    assert torch.equal(torch.isinf(got_lse), torch.isinf(want_lse))


@pytest.mark.usefixtures("interpreter")
def test_many_rows_per_kv_head_use_several_row_blocks():
    """G · M = 4 · 20 = 80 rows per kv head: more than one program's rows (64)."""
    lengths = [45, 101]
    q, k, v, lens = _case(lengths, 4, 1, 20)
    out = attngen.decode(q, k, v, lens, "causal & (sink(4) | local(30))")
    for b, n in enumerate(lengths):
        full_q = torch.cat([torch.randn(1, 4, n - 20, D), q[b:b + 1]], dim=2)
        want = reference(full_q, k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                         "causal & (sink(4) | local(30))")
        assert (out[b] - want[0, :, -20:]).abs().max() <= 1e-4


@pytest.mark.usefixtures("interpreter")
def test_splits_share_only_the_needed_blocks():
    """More splits than a window has blocks: the splits share the window (and the sink),
    every one of them merges exactly, whatever their number."""
    q, k, v, lens = _case([300, 257], 2, 1, 1)
    pattern = "causal & (sink(4) | local(40))"
    outs = [attngen.decode(q, k, v, lens, pattern, splits=s) for s in (1, 2, 3, 5, 9)]
    assert all((o - outs[0]).abs().max() <= 1e-5 for o in outs[1:])


@pytest.mark.usefixtures("interpreter")
def test_fused_merge_equals_the_merge_kernel_and_rearms_its_counters():
    from attngen.runtime.decode import DecodeConfig, run

    q, k, v, lens = _case([70, 45], 4, 2, 2)
    kern = attngen.compile("causal & (sink(4) | local(30))", head_dim=D, dtype=q.dtype,
                           heads=4, kv_heads=2, device="cpu")
    fused = run(kern, q, k, v, lens, config=DecodeConfig(INTERPRETER_BLOCK_N, 1, 1, 0, True))
    counters = kern.tables["decode-count", "cpu"]
    assert counters.abs().sum() == 0  # zero again: ready for the next call
    again = run(kern, q, k, v, lens, config=DecodeConfig(INTERPRETER_BLOCK_N, 1, 1, 0, True))
    two = run(kern, q, k, v, lens, config=DecodeConfig(INTERPRETER_BLOCK_N, 1, 1, 0, False))
    assert torch.equal(fused, again) and (fused - two).abs().max() <= 1e-6


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern", ["vertical_slash(6, 9)", "sink(4) | vertical_slash(5, 12)"])
def test_dynamic_decode_is_estimated_from_its_own_queries(pattern):
    """A dynamic pattern is re-estimated per decode call (DESIGN §5 on the call's queries).
    With 64 queries per row they are exactly vertical_slash's voters in a full prefill, so
    the decode equals the prefill's last rows; with fewer it is the prefill kernel on the
    call's rows (the same estimate a prefill of those rows makes)."""
    lengths = [150, 97]
    q, k, v, lens = _case(lengths, 2, 1, 64)
    out = attngen.decode(q, k, v, lens, pattern)
    g = torch.Generator().manual_seed(1)
    for b, n in enumerate(lengths):
        full_q = torch.cat([torch.randn(1, 2, n - 64, D, generator=g), q[b:b + 1]], dim=2)
        want = attngen.attention(full_q, k[b:b + 1, :, :n], v[b:b + 1, :, :n], pattern)
        assert (out[b:b + 1] - want[:, :, -64:]).abs().max() <= 1e-4, (pattern, b)
    few = attngen.decode(q[:, :, -3:], k, v, lens, pattern)
    for b, n in enumerate(lengths):
        want = attngen.attention(q[b:b + 1, :, -3:], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                 pattern)
        assert torch.equal(few[b:b + 1], want)
