"""The backward of dynamic patterns: generated dQ, dK, dV (interpreter, fp32) against the
reference's autograd given the same estimated mask, the block lists the backward builds
from the forward's estimate, and that the backward reuses that estimate (never estimates).

Tolerance: as tests/test_backward.py, max abs error ≤ GRAD_TOL × the largest reference
gradient; the forward output within kernel_check.TOL."""
import pytest
import torch

import attngen
from attngen.codegen.render import render
from attngen.errors import PatternError
from attngen.lower.grid import Grid
from attngen.lower.kernel_plan import KernelSpec
from attngen.reference import attention as reference
from attngen.runtime import dynamic
from tests.kernel_check import TOL, nan_padded
from tests.test_backward import GRAD_TOL, _grads
from tests.test_dynamic import DYNAMIC, MIXTURE, expected_mask, part_of, planted


def check_dynamic_grads(text, B=1, Hq=2, Hkv=1, M=37, N=53, D=16, seed=0, with_lse=False):
    """Gradients of the generated kernels vs the reference's autograd with the mask the
    forward estimated (planted inputs: the estimate has real vertical and slash lines)."""
    pattern = attngen.parse(text) if isinstance(text, str) else text
    q, k, v = planted(B, Hq, Hkv, M, N, D, seed, columns=(N // 2,), offsets=(N // 5,))
    g = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(q.shape, generator=g)
    dlse = torch.randn(q.shape[:3], generator=g) if with_lse else None
    mask = expected_mask(pattern, q, k, D ** -0.5)

    def ref(q, k, v):
        rows = [reference(q[b:b + 1], k[b:b + 1], v[b:b + 1], None, mask=mask[b],
                          return_lse=True) for b in range(B)]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    got = _grads(lambda *t: attngen.attention(*t, pattern, return_lse=True,
                                              backend="triton"), q, k, v, dout, dlse)
    want = _grads(ref, q, k, v, dout, dlse)
    where = f"{text} at B={B} Hq={Hq} Hkv={Hkv} M={M} N={N}"
    scale = max(max(w.abs().max().item() for w in want[1:]), 1e-6)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(a).all(), f"non-finite {name} for {where}"
        err = (a - b).abs().max().item()
        tol = TOL if name == "out" else GRAD_TOL * scale
        assert err <= tol, f"{name} error {err:.2e} > {tol:.2e} for {where}"


@pytest.mark.parametrize("text", DYNAMIC)
@pytest.mark.parametrize("shape", [(1, 2, 1, 37, 53), (2, 4, 2, 70, 70)])
def test_dynamic_gradients_match_reference(interpreter, text, shape):
    """vertical_slash alone and with sinks, block_topk, block_cover, local & block_topk,
    a permuted static term beside vertical_slash, … at odd lengths, M ≠ N and GQA."""
    check_dynamic_grads(text, *shape)


@pytest.mark.parametrize("text", ["vertical_slash(6, 9)", "sink(4) | vertical_slash(6, 9)",
                                  "block_topk(2, 8)", "local(24) & block_topk(1, 8)"])
@pytest.mark.parametrize("M, N", [(50, 33), (1, 45), (29, 101)])
def test_dynamic_gradients_at_other_shapes(interpreter, text, M, N):
    check_dynamic_grads(text, 1, 2, 1, M, N)


@pytest.mark.parametrize("Hkv", [1, 2, 4])
def test_mixture_gradients_with_dynamic_and_static_heads(interpreter, Hkv):
    """Heads of one kv group with different (dynamic and static) patterns: dK, dV sum
    them in one program."""
    check_dynamic_grads(MIXTURE, 1, 8, Hkv, 45, 61)


def test_gradient_of_the_returned_lse(interpreter):
    check_dynamic_grads("sink(8) | vertical_slash(5, 12)", 1, 2, 1, 45, 61, with_lse=True)


def test_backward_reuses_the_forward_estimate(interpreter, monkeypatch):
    """One estimate per forward+backward: the backward's block lists come from the flags
    the forward returned, and are the forward's own indices on the forward's grid."""
    calls = {"pick": 0}
    real_pick = dynamic.pick

    def counting(*args, **kwargs):
        calls["pick"] += 1
        return real_pick(*args, **kwargs)

    monkeypatch.setattr(dynamic, "pick", counting)
    seen = []
    real_indices = dynamic.indices

    def recording(parts, est, *args):
        seen.append(est)
        return real_indices(parts, est, *args)

    monkeypatch.setattr(dynamic, "indices", recording)
    text = "heads { 0: sink(4) | vertical_slash(6, 9); *: block_topk(2, 16) }"
    q, k, v = planted(1, 2, 1, 45, 61, 16, 0, columns=(30,), offsets=(12,))
    q.requires_grad_(True)
    out = attngen.attention(q, k, v, text, backend="triton")
    assert calls["pick"] == 1 and len(seen) == 1
    out.sum().backward()
    assert calls["pick"] == 1, "the backward estimated again"
    assert len(seen) == 2 and all(torch.equal(a, b)
                                  for a, b in zip(seen[0].tensors(), seen[1].tensors()))
    # the flags that reached the backward give the forward's indices exactly
    kernel = attngen.compile(text, head_dim=16, dtype=torch.float32, heads=2, kv_heads=1,
                             device="cpu")
    grid = Grid(45, 61, 32, 32)
    parts = list(kernel.spec.dynamic)
    fresh = dynamic.estimate(parts, q.detach(), k, 0.25, grid).kernel_args()
    reused = real_indices(parts, seen[1], 1, 2, 45, grid).kernel_args()
    assert all(a == b if isinstance(a, int) else torch.equal(a, b)
               for a, b in zip(fresh, reused))


def test_kernel_backward_needs_the_estimate(interpreter):
    kernel = attngen.compile("vertical_slash(4, 8)", head_dim=16, dtype=torch.float32,
                             heads=1, device="cpu")
    q, k, v = planted(1, 1, 1, 20, 20, 16, 0)
    out, lse, est = kernel.forward(q, k, v)
    assert isinstance(est, dynamic.Estimate)
    with pytest.raises(ValueError, match="estimate of its forward"):
        kernel.backward(q, k, v, out, lse, torch.ones_like(out))
    dq, dk, dv = kernel.backward(q, k, v, out, lse, torch.ones_like(out), estimate=est)
    again = kernel.backward(q, k, v, out, lse, torch.ones_like(out), estimate=est)
    assert all(torch.equal(a, b) for a, b in zip((dq, dk, dv), again))  # deterministic


@pytest.mark.parametrize("M, N", [(37, 53), (64, 64), (1, 40), (50, 33)])
def test_transposed_lists_cover_exactly_the_estimate(M, N):
    """dK/dV's work: every allowed pair lies in exactly one listed (query block, kv block)
    — tested or full — or is one of the column kernel's pairs (a picked key of the kv
    group, causal, in a block no picked diagonal crosses); full blocks and column pairs
    are entirely allowed."""
    q, k, _ = planted(1, 3, 1, M, N, 16, 0, columns=(5, N // 2), offsets=(3,))
    grid = Grid(M, N, 16, 8)
    parts = [((0,), part_of("vertical_slash(6, 9)")), ((1,), part_of("block_topk(2, 8)")),
             ((2,), part_of("block_cover(0.6, 12)"))]
    est = dynamic.pick(parts, q, k, 0.25)
    allowed = dynamic.token_mask(parts, q, k, 0.25)[0]
    (t_off, t_idx), (f_off, f_idx), (keys, counts, crossed) = dynamic.transposed(
        parts, est, 1, 3, 1, M, grid)
    seen = torch.zeros(3, M, N, dtype=torch.int64)
    rows = torch.arange(M) + (N - M)
    for key in keys[0, :counts[0]].tolist():
        for h in range(3):
            if est.vert[h, key]:
                uncrossed = crossed[h, torch.arange(M) // grid.BM, key // grid.BN] == 0
                gathered = (key <= rows) & uncrossed
                assert allowed[h, gathered, key].all()
                seen[h, gathered, key] += 1
    for h in range(3):
        for n in range(grid.KB):
            row = h * grid.KB + n
            c0, c1 = n * grid.BN, min((n + 1) * grid.BN, N)
            for off, idx, full in ((t_off, t_idx, False), (f_off, f_idx, True)):
                for m in idx[off[row]:off[row + 1]].tolist():
                    r0, r1 = m * grid.BM, min((m + 1) * grid.BM, M)
                    if full:
                        assert allowed[h, r0:r1, c0:c1].all()
                    seen[h, r0:r1, c0:c1] += allowed[h, r0:r1, c0:c1]
    assert torch.equal(seen, allowed.long())


def test_decode_of_dynamic_patterns_is_refused_clearly():
    spec = KernelSpec.build(attngen.parse("vertical_slash(4, 8)"), 1)
    with pytest.raises(PatternError, match="decode of input-dependent"):
        render(spec, "KEY", "VERSION", kind="decode")


def test_op_with_a_dynamic_pattern_passes_opcheck(interpreter):
    """The fake gives the estimate's shapes, so torch.compile can trace dynamic patterns."""
    q, k, v = (t.requires_grad_() for t in planted(1, 2, 1, 20, 24, 16, 0))
    torch.library.opcheck(torch.ops.attngen.attention.default,
                          (q, k, v, "sink(2) | vertical_slash(4, 8)", 0.25, None),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_picked_columns_beyond_the_forced_ones(interpreter):
    """v > 30: the planted column is picked on top of the forced sinks and, far from the
    diagonal, gathered, so a gathered column outside the sinks' block reaches dQ and
    dK/dV."""
    M = N = 150
    text = "vertical_slash(33, 12)"
    q, k, _ = planted(1, 2, 1, M, N, 16, 0, columns=(N // 2,), offsets=(N // 5,))
    parts = list(KernelSpec.build(attngen.parse(text), 2, 1).dynamic)
    est = dynamic.pick(parts, q, k, 0.25)
    assert est.vert[:, N // 2].all()
    ind = dynamic.indices(parts, est, 1, 2, M, Grid(M, N, 32, 32))
    assert (ind.columns == N // 2).any()  # a gathered column besides the sinks
    check_dynamic_grads(text, 1, 2, 1, M, N)


def test_compiled_model_with_a_dynamic_pattern(interpreter):
    """torch.compile(fullgraph=True): the fake returns the estimate's shapes; one forward
    and one backward node, and the eager gradients."""
    from tests.test_backward import _recording_backend

    torch._dynamo.reset()
    p = attngen.parse("sink(4) | vertical_slash(5, 8)")

    def model(q, k, v):
        return attngen.attention(q, k, v, p, backend="triton").square().sum()

    q, k, v = (t.requires_grad_() for t in planted(1, 2, 1, 24, 40, 16, 0))
    seen = {}
    compiled = torch.compile(model, backend=_recording_backend(seen), fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    ops = torch.ops.attngen
    assert seen["forward"].count(ops.attention.default) == 1, seen["forward"]
    assert seen["backward"].count(ops.attention_backward.default) == 1, seen["backward"]
    want = torch.autograd.grad(model(q, k, v), (q, k, v))
    assert all(torch.allclose(a, b) for a, b in zip(got, want))


def test_nan_padding_past_the_lengths_is_never_read(interpreter):
    """q, k, v and dO are views into buffers padded with NaN past M and N: the gradients
    stay finite and equal those of the unpadded tensors."""
    text = "heads { 0: sink(4) | vertical_slash(6, 9); *: block_topk(2, 16) }"
    q, k, v = planted(1, 2, 1, 37, 45, 16, 0, columns=(22,), offsets=(9,))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))

    want = _grads(lambda *t: attngen.attention(*t, text, return_lse=True, backend="triton"),
                  q, k, v, dout)
    big = [nan_padded(t) for t in (q, k, v)]
    out = attngen.attention(*(b[:, :, :n] for b, n in zip(big, (37, 45, 45))), text,
                            backend="triton")
    out.backward(nan_padded(dout).detach()[:, :, :37])
    got = [out] + [b.grad[:, :, :n] for b, n in zip(big, (37, 45, 45))]
    assert all(torch.isfinite(g).all() and torch.equal(g, w) for g, w in zip(got, want))
