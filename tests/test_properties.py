"""Generated patterns: parser round trip, IR mask vs an independent NumPy oracle,
simplification at far points, and exact block layouts vs brute force."""
import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import attngen
from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.arith import evaluate, k, q
from tests.patterns_gen import oracle, oracle_mask, text, trees

lengths = st.integers(1, 70)


@settings(max_examples=300)
@given(trees)
def test_print_parse_round_trip(tree):
    p = attngen.parse(text(tree))
    note(f"text: {text(tree)}  canonical: {p}")
    again = attngen.parse(str(p))
    assert again == p
    assert str(again) == str(p)
    assert again.key == p.key


@settings(max_examples=300)
@given(trees, lengths, lengths)
def test_ir_mask_equals_numpy_oracle(tree, M, N):
    p = attngen.parse(text(tree))
    note(f"repro: attngen.parse({text(tree)!r}).mask({M}, {N})")
    assert np.array_equal(p.mask(M, N)[0].numpy(), oracle_mask(tree, M, N))


@settings(max_examples=100)
@given(trees, st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 20)),
                       min_size=1, max_size=40))
def test_simplified_predicate_at_far_points(tree, points):
    p = attngen.parse(text(tree))
    qs = np.array([a for a, _ in points], dtype=np.int64)
    ks = np.array([b for _, b in points], dtype=np.int64)
    got = evaluate(p.node.predicate, {q: qs, k: ks, N_SYM: 1 << 21, M_SYM: 1 << 21})
    note(f"pattern: {text(tree)}")
    assert np.array_equal(np.broadcast_to(got, qs.shape), oracle(tree, qs, ks))


def brute_classes(mask: np.ndarray, bm: int, bn: int) -> np.ndarray:
    H, M, N = mask.shape
    QB, KB = -(-M // bm), -(-N // bn)
    pad = np.zeros((H, QB * bm, KB * bn), dtype=np.int8) - 1
    pad[:, :M, :N] = mask
    blocks = pad.reshape(H, QB, bm, KB, bn).transpose(0, 1, 3, 2, 4).reshape(H, QB, KB, -1)
    valid = blocks >= 0
    allowed = (blocks == 1).sum(-1)
    return np.where(allowed == 0, 0, np.where(allowed == valid.sum(-1), 2, 1)).astype(np.uint8)


@settings(max_examples=300)
@given(trees, st.integers(1, 400), st.integers(1, 400), st.integers(16, 128),
       st.integers(16, 128))
def test_layout_classes_equal_brute_force(tree, M, N, bm, bn):
    p = attngen.parse(text(tree))
    note(f"repro: attngen.layout(attngen.parse({str(p)!r}), {M}, {N}, block=({bm}, {bn}))")
    lay = attngen.layout(p, M, N, block=(bm, bn))
    expected = brute_classes(p.mask(M, N).numpy(), bm, bn)
    assert np.array_equal(lay.classes().numpy(), expected)


@settings(max_examples=60)
@given(trees, trees, st.integers(1, 200), st.integers(1, 200), st.sampled_from([16, 32, 48]))
def test_mixture_layout_per_head(tree_a, tree_b, M, N, bs):
    p = attngen.parse(f"heads {{ 0, 2: {str(attngen.parse(text(tree_a)))}; "
                      f"*: {str(attngen.parse(text(tree_b)))} }}")
    lay = attngen.layout(p, M, N, block=bs, heads=4)
    expected = brute_classes(p.mask(M, N, heads=4).numpy(), bs, bs)
    assert np.array_equal(lay.classes().numpy(), expected)
    assert len(lay.nodes) <= 2  # identical heads share one classification


@pytest.mark.parametrize("text_", [
    "causal & (sink(128) | local(4096))", "causal & (local(1024) | strided(128))",
    "causal & fixed(128, 8)", "causal & dilated(64, 4)", "power(64) | sink(128)",
])
@pytest.mark.parametrize("M, N", [(1023, 1024), (1024, 1023), (129, 777), (1, 1000)])
def test_layout_exact_on_published_shapes(text_, M, N):
    p = attngen.parse(text_)
    for bm, bn in [(128, 128), (64, 128), (128, 64)]:
        lay = attngen.layout(p, M, N, block=(bm, bn))
        assert np.array_equal(lay.classes().numpy(), brute_classes(p.mask(M, N).numpy(), bm, bn))
