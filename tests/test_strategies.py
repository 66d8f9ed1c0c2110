"""Lowering strategies of DESIGN §4 beyond ranges: residue-class permutation, disjoint
decomposition merged by log-sum-exp, and tables built on the device. Set identities are
checked on dense masks (NumPy); kernels under the interpreter (fp32) vs the reference."""
import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import attngen
from attngen.codegen.render import render
from attngen.ir.pattern import Pattern, evaluate_node
from attngen.lower.decompose import _split, decompose, disjuncts
from attngen.lower.kernel_plan import GroupSpec, KernelSpec
from attngen.lower.permute import class_shape, in_classes, period
from attngen.runtime.kernel import Config, Kernel
from attngen.runtime.tables import device_layout
from tests.kernel_check import check
from tests.patterns_gen import text, trees

ints = st.integers
lengths = ints(1, 90)

# Terms that want different strategies: affine (ranges), irregular (table), periodic.
AFFINE = ["local({a})", "sink({b})", "band({b}, {c})", "causal", "rows({a})"]
IRREGULAR = ["power({c})", "fixed({a}, {c})", "radial({a}, {c})",
             "where(abs(q // {a} - k // {a}) <= 1 and abs(q % {a} - k % {a}) <= {c})"]
PERIODIC = ["strided({s})", "dilated({a}, {s})", "strided({s}) - local({b})",
            "where((q - k) % {s} == 0 and q - k >= {c})", "strided({s}) & band({a}, {b})"]


@st.composite
def mixed_patterns(draw):
    """causal & (…) or a bare union of 1–3 terms, at least one of them periodic."""
    params = dict(a=draw(ints(2, 12)), b=draw(ints(1, 20)), c=draw(ints(1, 6)),
                  s=draw(ints(2, 9)))
    terms = [draw(st.sampled_from(PERIODIC))]
    terms += draw(st.lists(st.sampled_from(AFFINE + IRREGULAR + PERIODIC), max_size=2))
    body = " | ".join(t.format(**params) for t in terms)
    return f"causal & ({body})" if draw(st.booleans()) else body


def _mask(node, M, N):
    return Pattern(node).mask(M, N)[0].numpy()


# -- set identities -------------------------------------------------------------------
@settings(max_examples=300)
@given(trees, lengths, lengths)
def test_disjuncts_are_the_node(tree, M, N):
    node = attngen.parse(text(tree)).node
    union = np.logical_or.reduce([_mask(d, M, N) for d in disjuncts(node)])
    assert np.array_equal(union, _mask(node, M, N))


@settings(max_examples=50, deadline=None)  # planning a radial | strided term takes seconds
@given(st.one_of(mixed_patterns(), trees.map(text)), lengths, lengths)
def test_decomposition_parts_cover_each_pair_once(pattern, M, N):
    node = attngen.parse(pattern).node
    parts = decompose(node)
    note(f"{pattern} → {[(p.strategy, p.node.text) for p in parts]}")
    covered = np.sum([_mask(p.node, M, N) for p in parts], axis=0, dtype=np.int64)
    assert np.array_equal(covered, _mask(node, M, N).astype(np.int64))


@settings(max_examples=100, deadline=None)
@given(mixed_patterns(), lengths, lengths)
def test_permuted_parts_are_exact_inside_residue_classes(pattern, M, N):
    """A permuted part's class-coordinate pattern, evaluated at (i, j) for q = r + s·i and
    k = r + s·j, is the part itself (or, when not exact, a superset of it)."""
    for part in decompose(attngen.parse(pattern).node):
        if part.strategy != "permutation":
            continue
        s, want = part.period, _mask(part.node, M, N)
        rows = np.arange(M)[:, None] + (N - M)
        cols = np.arange(N)[None, :]
        same_class = (rows - cols) % s == 0
        r = cols % s
        got = evaluate_node(part.classes, (rows - r) // s, (cols - r) // s, M, N) & same_class
        note(f"{part.node.text} mod {s} → {part.classes.text} (exact={part.exact})")
        assert not (want & ~same_class).any()
        if part.exact:
            assert np.array_equal(got, want)
        else:
            assert not (want & ~got).any()


@pytest.mark.parametrize("text_, s, classes", [
    ("causal & strided(128)", 128, "causal"),
    ("causal & dilated(1024, 4)", 4, "local(1024)"),
    ("strided(64) - local(1024)", 64, "~local(16)"),
    ("where((q - k) % 8 == 0 and q >= k)", 8, "causal"),
    ("strided(6) & strided(4)", 12, "full"),
])
def test_period_and_class_pattern(text_, s, classes):
    node = attngen.parse(text_).node
    assert period(node) == s
    assert in_classes(node, s) == attngen.parse(classes).node


@pytest.mark.parametrize("text_", ["causal & sink(4)", "strided(N // 4)", "local(8) | strided(3)",
                                   "strided(5) & rows(2)"])
def test_no_permutation_without_proof(text_):
    node = attngen.parse(text_).node
    s = period(node)
    assert s is None or in_classes(node, s) is None


@settings(max_examples=200)
@given(ints(1, 300), ints(1, 300), ints(1, 40))
def test_class_shapes_partition_the_problem(M, N, s):
    shapes = [class_shape(M, N, s, r) for r in range(s)]
    assert sum(m for m, _ in shapes) == M and sum(n for _, n in shapes) == N


def test_the_planner_picks_permutation_where_it_pays():
    plan = attngen.lower("causal & (local(1024) | strided(128))", 131072)
    assert [t.strategy for t in plan.groups[0].terms] == ["ranges", "permutation"]
    assert plan.groups[0].terms[1].pattern == "causal & strided(128) - local(1024)"
    # ≈ the allowed elements (1.2 % of causal) within block rounding, not every block
    assert plan.block_density < 0.03
    assert [t.strategy for t in attngen.lower("causal & strided(64)", 8192).groups[0].terms] \
        == ["permutation"]


# -- tables on the device ---------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(trees, lengths, lengths, st.sampled_from([(16, 16), (32, 16), (7, 9)]))
def test_device_layout_equals_the_analytic_layout(tree, M, N, block):
    p = attngen.parse(text(tree))
    got = device_layout(p, M, N, block=block, device="cpu").classes()
    assert torch.equal(got, attngen.layout(p, M, N, block=block).classes())


@settings(max_examples=20, deadline=None)
@given(trees, lengths, lengths, st.integers(0, 9))
def test_device_layout_in_small_tiles_is_the_same(tree, M, N, log_chunk):
    """block_classes evaluates a tile of blocks at a time when a row of blocks would pass
    CHUNK_ELEMENTS (memory bounded at any length): tiles of one block up to whole rows."""
    from attngen.runtime import tables

    p = attngen.parse(text(tree))
    want = attngen.layout(p, M, N, block=(8, 4)).classes()
    saved = tables.CHUNK_ELEMENTS
    try:
        tables.CHUNK_ELEMENTS = 32 << log_chunk
        assert torch.equal(device_layout(p, M, N, block=(8, 4), device="cpu").classes(), want)
    finally:
        tables.CHUNK_ELEMENTS = saved


# -- kernels ------------------------------------------------------------------------------


@pytest.mark.usefixtures("interpreter")
@settings(max_examples=40, deadline=None)
@given(mixed_patterns(), st.sampled_from([(1, 17), (45, 45), (33, 70), (70, 40)]),
       st.sampled_from([(2, 2), (4, 2), (2, 1)]))
def test_mixed_strategy_kernels_match_the_reference(pattern, shape, gqa):
    M, N = shape
    parts = decompose(attngen.parse(pattern).node)
    note(f"{pattern}: {[(p.strategy, p.node.text) for p in parts]}")
    check(pattern, Hq=gqa[0], Hkv=gqa[1], M=M, N=N, D=16)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern", [
    "causal & (local(20) | strided(8))", "causal & dilated(64, 8)",
    "causal & (sink(3) | local(9) | strided(6))", "causal & (power(4) | strided(7))",
    "heads { 0: causal & strided(4); 1: causal & strided(6); 2: local(7); *: causal & "
    "(local(9) | strided(5)) }"])
@pytest.mark.parametrize("M, N", [(97, 97), (40, 131), (1, 64)])
def test_permuted_kernels_match_the_reference(pattern, M, N):
    p = attngen.parse(pattern)
    spec = KernelSpec.build(p, 4, 2)
    assert spec.periods  # the permutation path is what this test exercises
    check(p, Hq=4, Hkv=2, M=M, N=N, D=16)


@pytest.mark.usefixtures("interpreter")
def test_ranges_and_table_parts_share_one_pass(tmp_path):
    """A split the cost model rarely picks (ranges, then a table of the rest, then a
    permuted part), rendered and run directly."""
    p = attngen.parse("causal & (sink(3) | local(9) | power(4) | strided(5))")
    by = {"affine": [], "other": [], "periodic": []}
    for d in disjuncts(p.node):
        kind = ("periodic" if period(d) else
                "affine" if d.text.startswith(("local", "causal & sink")) else "other")
        by[kind].append(d)
    parts = _split([by["affine"], by["other"]], {5: by["periodic"]})
    assert [x.strategy for x in parts] == ["ranges", "table", "permutation"]
    spec = KernelSpec.from_groups(p, (GroupSpec(0, p.node, parts, 0),), (0, 0), fused_loops=True)
    source = render(spec, "test", "test")
    kernel = Kernel(spec, "test", tmp_path, 16, torch.float32, True, code=source.encode())
    q, k, v = (torch.randn(1, 2 if i == 0 else 1, 77, 16) for i in range(3))
    out, lse = kernel(q, k, v, return_lse=True)
    ref_out, ref_lse = attngen.attention(q, k, v, p, return_lse=True, backend="reference")
    assert (out - ref_out).abs().max() <= 1e-4
    assert (lse - ref_lse).abs().max() <= 1e-4


def test_a_bare_permuted_pattern_skips_the_identity_pass():
    assert not KernelSpec.build(attngen.parse("causal & strided(8)"), 2).identity_pass
    assert KernelSpec.build(attngen.parse("causal & (local(9) | strided(8))"), 2).identity_pass
    assert KernelSpec.build(attngen.parse(
        "heads { 0: causal & strided(8); *: causal & strided(4) }"), 2).identity_pass


def test_mixture_schedule_runs_every_program_once_longest_first():
    p = attngen.parse("heads { 0: causal & power(8); 1: local(7); *: causal }")
    kernel = attngen.compile(p, head_dim=16, dtype=torch.float32, heads=4, kv_heads=2,
                             device="cpu")
    cfg = Config(32, 32, 1, 1)
    offsets, _ = kernel._tables(100, 100, cfg, "cpu", None)
    order = kernel._schedule(2, 100, 100, cfg, "cpu", offsets, None).numpy()
    assert sorted(order.tolist()) == list(range(4 * 2 * 4))  # QB=4 × B·H=8, each once
    lay = attngen.layout(p, 100, 100, block=32, heads=4, kv_heads=2)
    visits = (lay.classes().numpy() > 0).sum(-1)  # [H, QB]
    costs = [visits[(w % 8) % 4, w // 8] for w in order]
    assert costs == sorted(costs, reverse=True)
