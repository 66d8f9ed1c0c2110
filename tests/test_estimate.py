"""vertical_slash's estimation kernels (templates/_estimate.py.j2) under the interpreter
against the PyTorch estimation of runtime.dynamic: the column and diagonal sums agree to
fp32 rounding (max abs difference ≤ 1e-5; the sums are at most 64), and the picked sets
are equal on inputs with planted lines (no near-ties at the top-k boundary)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attngen
from attngen.runtime import dynamic
from tests.test_dynamic import planted


def _module():
    kernel = attngen.compile("vertical_slash(6, 9)", head_dim=16, dtype=torch.float32,
                             heads=1, device="cpu")
    return kernel.load().module


def _sums(q, k, scale):
    """Column and diagonal sums by definition, one voter at a time."""
    R, M, _ = q.shape
    N = k.shape[1]
    L = min(64, M)
    vertical, slash = torch.zeros(R, N), torch.zeros(R, N)
    for i in range(L):
        pos = N - L + i
        if pos < 0:
            continue
        scores = (q[:, M - L + i, None, :] * k[:, :pos + 1]).sum(-1) * scale
        p = torch.softmax(scores, -1)
        vertical[:, :pos + 1] += p
        slash[:, :pos + 1] += p.flip(-1)  # offset d = pos − k: key pos − d
    return vertical, slash


@pytest.mark.usefixtures("interpreter")
@settings(max_examples=12, deadline=None)
@given(st.integers(1, 100), st.integers(-20, 60), st.sampled_from([16, 24, 32]),
       st.integers(0, 1000))
def test_estimation_kernels_sum_like_the_definition(M, extra, D, seed):
    N = max(1, M + extra)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, M, D, generator=g), torch.randn(2, N, D, generator=g)
    kernel = attngen.compile("vertical_slash(6, 9)", head_dim=D, dtype=torch.float32,
                             heads=1, device="cpu")
    vertical, slash = dynamic._vs_sums_kernel(kernel.load().module, q, k, D ** -0.5)
    want_vertical, want_slash = _sums(q, k, D ** -0.5)
    assert (vertical - want_vertical).abs().max().item() <= 1e-5
    assert (slash - want_slash).abs().max().item() <= 1e-5


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("M, N", [(37, 53), (130, 130), (70, 50), (1, 40)])
def test_estimation_kernels_pick_the_pytorch_sets(M, N):
    q, k, _ = planted(2, 1, 1, M, N, 16, 3, columns=(N // 2, N // 3), offsets=(N // 4,))
    got = dynamic.vertical_slash_sets(q[:, 0], k[:, 0], 33, 104, 0.25, _module())
    want = dynamic.vertical_slash_sets(q[:, 0], k[:, 0], 33, 104, 0.25)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
