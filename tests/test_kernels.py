"""Generated forward kernels under the Triton interpreter (fp32) vs the reference oracle."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import attngen
from attngen.library import files
from tests.kernel_check import check, inputs
from tests.patterns_gen import text, trees

pytestmark = pytest.mark.usefixtures("interpreter")

SHAPES = [(1, 17), (17, 130), (130, 333), (333, 130), (64, 64), (1, 1)]
SMALL_SHAPES = [(1, 17), (17, 45), (45, 17), (33, 65), (1, 1)]
GQA = [(2, 2), (4, 2), (4, 1)]


def _bundled():
    out = []
    for stem, path in sorted(files().items()):
        for name in re.findall(r"^def (\w+)", path.read_text(), flags=re.M):
            p = attngen.load(path, name)
            if not p.is_dynamic:
                out.append(pytest.param(p, id=f"{stem}.{name}"))
    return out


@pytest.mark.parametrize("pattern", _bundled())
def test_every_bundled_static_pattern(pattern, request):
    i = int.from_bytes(request.node.name.encode(), "little") % 997
    M, N = SHAPES[i % 4]
    Hq, Hkv = GQA[i % 3]
    if pattern.is_mixture:
        Hq, Hkv = (8, 8) if pattern.node.name == "kv_heads" else (8, 2)
    doc = None
    if "document" in str(pattern):
        M = min(M, N)  # packed documents: every query is one of the keys
        doc = torch.from_numpy(np.sort(np.random.default_rng(i).integers(0, 5, N)))
    check(pattern, Hq=Hq, Hkv=Hkv, M=M, N=N, D=(16, 64)[i % 2], doc_ids=doc)


@settings(max_examples=100)
@given(trees, st.sampled_from(SMALL_SHAPES), st.sampled_from(GQA), st.sampled_from([16, 64]))
def test_generated_compositions(tree, shape, gqa, D):
    p = attngen.parse(text(tree))
    note(f"pattern: {p}")
    M, N = shape
    check(p, Hq=gqa[0], Hkv=gqa[1], M=M, N=N, D=D)


@pytest.mark.parametrize("pattern", ["causal & (sink(128) | local(4096))",
                                     "causal & (sink(4) | local(31))", "local(64) - sink(20)",
                                     "heads { 0: causal; 1: local(9); *: band(5, 40) }"])
@pytest.mark.parametrize("M, N", [(130, 333), (333, 333), (100, 64)])
def test_published_shapes_and_ragged_tails(pattern, M, N):
    check(pattern, Hq=4, Hkv=2, M=M, N=N, D=64)


@pytest.mark.parametrize("D", [24, 80])
def test_head_dims_that_are_not_powers_of_two(D):
    check("causal & (sink(4) | local(40)) | strided(9)", Hq=2, Hkv=1, M=70, N=101, D=D)


def test_rows_with_no_allowed_key_give_zero_and_minus_inf():
    out, lse = check("causal & where(q >= 40) | rows(3)", Hq=2, Hkv=1, M=64, N=64)
    assert torch.isinf(lse[0, 0, :40]).sum() == 39  # row 3 has its own keys
    assert (out[0, :, :3] == 0).all()


def test_out_of_range_memory_is_never_read():
    q, k, v = inputs(1, 2, 1, 45, 77, 16)
    big = [torch.full((1, t.shape[1], t.shape[2] + 40, 16), float("nan")) for t in (q, k, v)]
    for b, t in zip(big, (q, k, v)):
        b[:, :, :t.shape[2]] = t
    views = [b[:, :, :t.shape[2]] for b, t in zip(big, (q, k, v))]
    out = attngen.attention(*views, "causal & (sink(3) | local(20))", backend="triton")
    ref = attngen.attention(q, k, v, "causal & (sink(3) | local(20))", backend="reference")
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 1e-4


def test_two_runs_are_bitwise_equal():
    q, k, v = inputs(1, 2, 1, 70, 90, 16)
    a = attngen.attention(q, k, v, "causal & strided(3) | local(7)", backend="triton")
    b = attngen.attention(q, k, v, "causal & strided(3) | local(7)", backend="triton")
    assert torch.equal(a, b)


def test_kernel_object_has_readable_source():
    kern = attngen.compile("causal & (sink(8) | local(64))", head_dim=16, dtype=torch.float32,
                           heads=2, device="cpu")
    src = kern.source
    assert "# pattern: causal & (local(64) | sink(8))" in src
    assert f"# cache key: {kern.key}" in src
    assert "full blocks" in src and "@triton.jit" in src
    q, k, v = inputs(1, 2, 1, 33, 33, 16)
    ref = attngen.attention(q, k, v, "causal & (sink(8) | local(64))", backend="reference")
    assert (kern(q, k, v) - ref).abs().max() <= 1e-4
