"""Generated backward kernels under the interpreter (fp32) vs the reference's autograd, the
transposed block bounds and tables they loop over, and the torch.library op under
torch.compile."""
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

import attngen
from attngen.codegen.render import render
from attngen.lower.atoms import Atom, block_ranges, transpose
from attngen.lower.decompose import decompose
from attngen.lower.kernel_plan import KernelSpec
from attngen.reference import attention as reference
from attngen.runtime.tables import transpose_csr
from tests.kernel_check import inputs, nan_padded
from tests.test_strategies import mixed_patterns

GRAD_TOL = 1e-3  # max abs error ÷ the reference gradient's max abs value


def _grads(fn, q, k, v, dout, dlse=None):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = fn(q, k, v)
    loss = (out * dout).sum()
    if dlse is not None:
        loss = loss + (torch.where(torch.isinf(lse), 0.0, lse) * dlse).sum()
    loss.backward()
    return out, q.grad, k.grad, v.grad


def check_grads(pattern, Hq=2, Hkv=1, M=37, N=53, D=16, seed=0, with_lse=False,
                doc_ids=None):
    p = attngen.parse(pattern) if isinstance(pattern, str) else pattern
    q, k, v = inputs(1, Hq, Hkv, M, N, D, seed)
    g = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(q.shape, generator=g)
    dlse = torch.randn(q.shape[:3], generator=g) if with_lse else None
    got = _grads(lambda *t: attngen.attention(*t, p, return_lse=True, doc_ids=doc_ids,
                                              backend="triton"), q, k, v, dout, dlse)
    want = _grads(lambda *t: reference(*t, p, return_lse=True, doc_ids=doc_ids), q, k, v,
                  dout, dlse)
    where = f"pattern {p} at Hq={Hq} Hkv={Hkv} M={M} N={N} D={D}"
    # one scale for dq, dk and dv: a gradient that is exactly 0 in exact arithmetic (dq
    # with a single key) is rounding noise on both sides
    scale = max(max(b.abs().max().item() for b in want[1:]), 1e-6)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(a).all(), f"non-finite {name} for {where}"
        err = (a - b).abs().max().item() / (1.0 if name == "out" else scale)
        assert err <= GRAD_TOL, f"{name} error {err:.2e} (relative) > {GRAD_TOL} for {where}"
    return got


# -- transposed block bounds and tables ----------------------------------------------------
ints = st.integers
side = st.one_of(st.none(), ints(-40, 80))


@st.composite
def atoms(draw):
    def pair():
        lo, hi = draw(side), draw(side)
        return (-(1 << 40) if lo is None else lo, (1 << 40) if hi is None else hi)

    (dlo, dhi), (klo, khi), (qlo, qhi) = pair(), pair(), pair()
    return Atom(dlo, dhi, klo, khi, qlo, qhi)


def _blocks(allowed, in_range, BM, BN, QB, KB):
    shape = (QB, BM, KB, BN)
    pad = np.zeros((QB * BM, KB * BN), dtype=bool)
    a, r = pad.copy(), pad.copy()
    a[:allowed.shape[0], :allowed.shape[1]] = allowed
    r[:in_range.shape[0], :in_range.shape[1]] = in_range
    some = a.reshape(shape).any(axis=(1, 3))
    every = (a | ~r).reshape(shape).all(axis=(1, 3))
    return some, every & some


@settings(max_examples=300, deadline=None)
@given(atoms(), ints(1, 90), ints(1, 90), st.sampled_from([(16, 16), (32, 16), (7, 9)]))
def test_transposed_block_ranges_match_brute_force(atom, M, N, block):
    """Per kv block, the query blocks an atom touches and those it fills, in closed form
    from the transposed atom, equal the blocks found on the dense mask."""
    BM, BN = block
    q = np.arange(M)[:, None] + (N - M)
    k = np.arange(N)[None, :]
    allowed = ((atom.dlo <= q - k) & (q - k <= atom.dhi) & (atom.klo <= k) & (k <= atom.khi)
               & (atom.qlo <= q) & (q <= atom.qhi))
    QB, KB = -(-M // BM), -(-N // BN)
    some, full = _blocks(allowed, np.ones_like(allowed), BM, BN, QB, KB)
    n = np.arange(KB)
    lo, hi, flo, fhi = block_ranges(transpose(atom, M, N), n, BN, BM, N, M)
    m = np.arange(QB)[:, None]
    assert np.array_equal((lo <= m) & (m <= hi), some)
    assert np.array_equal((flo <= m) & (m <= fhi), full)


@settings(max_examples=50, deadline=None)
@given(ints(1, 3), ints(1, 9), ints(1, 9), ints(0, 2**32 - 1))
def test_transposed_csr_lists_the_rows_of_each_column(R, QB, KB, seed):
    dense = torch.rand((R, QB, KB), generator=torch.Generator().manual_seed(seed)) < 0.4
    offsets, indices, base = [], [], 0
    for r in range(R):
        rows, cols = dense[r].nonzero(as_tuple=True)
        off = torch.zeros(QB + 1, dtype=torch.int64)
        off[1:] = torch.bincount(rows, minlength=QB).cumsum(0)
        offsets.append(off + base)
        indices.append(cols)
        base += len(cols)
    off_t, idx_t = transpose_csr(torch.stack(offsets).to(torch.int32),
                                 torch.cat(indices + [torch.zeros(1, dtype=torch.int64)]), KB)
    for r in range(R):
        for j in range(KB):
            got = idx_t[off_t[r, j]:off_t[r, j + 1]].tolist()
            assert got == dense[r, :, j].nonzero().flatten().tolist()


# -- gradients ----------------------------------------------------------------------------
@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern, Hq, Hkv, M, N", [
    ("causal", 4, 2, 37, 53),                              # ranges, ragged tails, M < N
    ("local(7)", 2, 2, 45, 45),
    ("causal & (sink(4) | local(16))", 4, 1, 70, 70),      # A-shape, GQA 4 → 1
    ("band(3, 20) - sink(2)", 2, 1, 70, 17),               # M > N
    ("causal & power(4)", 2, 2, 45, 45),                   # table
    ("causal & (local(9) | strided(5))", 4, 2, 70, 40),    # decomposed: ranges + permuted
    ("causal & strided(6)", 2, 1, 33, 70),                 # permuted only
    ("causal & (sink(3) | local(9) | power(4) | strided(5))", 2, 1, 50, 50),
    ("heads { 0: causal & strided(4); 1: local(7); 2: causal & power(4); "
     "*: causal & (local(9) | strided(5)) }", 4, 2, 61, 61),  # per-head mixture
    ("causal", 2, 1, 1, 1),
    ("causal & (local(9) | strided(5))", 2, 1, 1, 64),     # one query, decode-like
])
def test_gradients_match_the_reference(pattern, Hq, Hkv, M, N):
    check_grads(pattern, Hq=Hq, Hkv=Hkv, M=M, N=N)


@pytest.mark.usefixtures("interpreter")
def test_lse_gradient_and_empty_rows():
    """Rows with no allowed key (LSE = -inf) get zero gradients and no NaN; a loss on the
    returned LSE flows through the same kernels (it shifts Delta)."""
    pattern = "causal & rows(2, 30) & ~sink(3)"
    out, dq, dk, dv = check_grads(pattern, Hq=2, Hkv=1, M=40, N=40, with_lse=True)
    empty = [i for i in range(40) if i not in (2, 30)]
    assert torch.equal(dq[:, :, empty], torch.zeros_like(dq[:, :, empty]))
    assert torch.equal(dk[:, :, :3], torch.zeros_like(dk[:, :, :3]))


@pytest.mark.usefixtures("interpreter")
def test_packed_documents_and_a_padded_head_dim():
    doc = torch.tensor([0] * 20 + [1] * 7 + [2] * 23)
    check_grads("causal & document", Hq=2, Hkv=1, M=50, N=50, doc_ids=doc)
    check_grads("causal & (sink(2) | local(12))", Hq=2, Hkv=2, M=33, N=33, D=24)


@pytest.mark.usefixtures("interpreter")
@settings(max_examples=6, deadline=None)
@given(mixed_patterns(), st.sampled_from([(17, 45), (45, 45), (50, 23)]),
       st.sampled_from([(2, 2), (4, 2), (2, 1)]))
@example("strided(2) & band(6, 1) | dilated(6, 2) | strided(2) - local(1)", (17, 45), (2, 2))
def test_gradients_of_random_compositions(pattern, shape, gqa):
    parts = decompose(attngen.parse(pattern).node)
    note(f"{pattern}: {[(p.strategy, p.node.text) for p in parts]}")
    check_grads(pattern, Hq=gqa[0], Hkv=gqa[1], M=shape[0], N=shape[1])


@pytest.mark.usefixtures("interpreter")
def test_gradients_match_finite_differences_of_the_reference():
    """Directional derivatives of the fp32 kernel's gradients vs central differences of
    the fp64 reference, for a table and a permuted part at a tiny shape."""
    p = attngen.parse("causal & (power(2) | strided(3))")
    q, k, v = inputs(1, 2, 1, 9, 11, 16, seed=3)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    _, dq, dk, dv = _grads(lambda *t: attngen.attention(*t, p, return_lse=True,
                                                        backend="triton"), q, k, v, w)
    g = torch.Generator().manual_seed(5)
    eps = 1e-6

    def loss(*t):
        return (reference(*t, p) * w.double()).sum().item()

    x = [t.double() for t in (q, k, v)]
    for _ in range(3):
        u = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in x]
        numeric = (loss(*(a + eps * b for a, b in zip(x, u)))
                   - loss(*(a - eps * b for a, b in zip(x, u)))) / (2 * eps)
        analytic = sum((d.double() * b).sum().item() for d, b in zip((dq, dk, dv), u))
        assert math.isclose(analytic, numeric, rel_tol=1e-4, abs_tol=1e-4), (analytic, numeric)


@pytest.mark.usefixtures("interpreter")
def test_nan_padding_past_the_lengths_is_never_read():
    """q, k, v and dO are views into buffers padded with NaN past M and N: the
    gradients stay finite and equal those of the unpadded tensors."""
    p = "causal & (sink(3) | local(9) | power(4) | strided(5))"
    q, k, v = inputs(1, 4, 2, 37, 45, 16)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))

    want = _grads(lambda *t: attngen.attention(*t, p, return_lse=True, backend="triton"),
                  q, k, v, dout)
    big = [nan_padded(t) for t in (q, k, v)]
    views = [b[:, :, :n] for b, n in zip(big, (37, 45, 45))]
    assert views[1].stride(2) == 16 and not views[1].is_contiguous()
    out = attngen.attention(*views, p, backend="triton")
    out.backward(nan_padded(dout).detach()[:, :, :37])
    got = [out] + [b.grad[:, :, :n] for b, n in zip(big, (37, 45, 45))]
    assert all(torch.isfinite(g).all() and torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern", ["causal & (sink(4) | local(16))",
                                     "causal & (local(9) | strided(5))"])
def test_split_loop_rendering(pattern):
    """The masked / full / masked loops (fused_loops=False) of the transposed bounds."""
    q, k, v = inputs(1, 2, 1, 70, 70, 16)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    kernel = attngen.compile(pattern, head_dim=16, dtype=torch.float32, heads=2, kv_heads=1,
                             device="cpu", options={"fused_loops": False})
    assert not kernel.spec.fused_loops
    out, lse = kernel(q, k, v, return_lse=True)
    got = kernel.backward(q, k, v, out, lse, dout)
    want = _grads(lambda *t: reference(*t, pattern, return_lse=True), q, k, v, dout)[1:]
    scale = max(w.abs().max().item() for w in want)
    assert all((g - w).abs().max().item() <= GRAD_TOL * scale for g, w in zip(got, want))


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("pattern", ["causal & (local(9) | strided(5))",
                                     "causal & power(2)"])
def test_backward_is_deterministic(pattern):
    """Two backward calls give the same bits (the second uses the table plan's kept
    transposed CSR)."""
    q, k, v = inputs(1, 4, 1, 45, 45, 16)
    kernel = attngen.compile(pattern, head_dim=16,
                             dtype=torch.float32, heads=4, kv_heads=1, device="cpu")
    out, lse = kernel(q, k, v, return_lse=True)
    first = kernel.backward(q, k, v, out, lse, torch.ones_like(out))
    second = kernel.backward(q, k, v, out, lse, torch.ones_like(out))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_every_strategy_has_backward_passes():
    spec = KernelSpec.build(attngen.parse(
        "heads { 0: causal & power(4); 1: local(7); *: causal & (local(9) | strided(5)) }"),
        4, 2)
    with pytest.raises(ValueError, match="complete"):  # the plan is what renders
        render(spec, "KEY", "VERSION", kind="backward")
    source = render(spec.complete(transposed=True), "KEY", "VERSION", kind="backward")
    for name in ("attn_bwd_dkdv(", "attn_bwd_dq(", "attn_bwd_dkdv_mod5(", "attn_bwd_dq_mod5(",
                 "TABT_OFFSETS + 0 * 2 * (KB + 1) + n"):
        assert name in source
    compile(source, "backward.py", "exec")


# -- torch.library op under torch.compile ------------------------------------------------
def _recording_backend(seen: dict):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def record(kind):
        def compiler(gm, example_inputs):
            seen[kind] = [n.target for n in gm.graph.nodes if n.op == "call_function"]
            return make_boxed_func(gm.forward)
        return compiler

    return aot_autograd(fw_compiler=record("forward"), bw_compiler=record("backward"))


@pytest.mark.usefixtures("interpreter")
def test_compiled_model_keeps_attention_as_one_node():
    """torch.compile(fullgraph=True) traces the op through its fake implementation: the
    forward graph holds one attngen::attention node, the backward graph one
    attngen::attention_backward, and both give the eager results."""
    torch._dynamo.reset()
    p = attngen.parse("causal & (local(9) | strided(5))")
    proj = torch.nn.Linear(16, 16)

    def model(q, k, v):
        return proj(attngen.attention(q, k, v, p, backend="triton")).square().sum()

    q, k, v = (t.requires_grad_() for t in inputs(1, 2, 1, 24, 24, 16))
    seen = {}
    compiled = torch.compile(model, backend=_recording_backend(seen), fullgraph=True)
    got = compiled(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v))
    ops = torch.ops.attngen
    assert seen["forward"].count(ops.attention.default) == 1, seen["forward"]
    assert seen["backward"].count(ops.attention_backward.default) == 1, seen["backward"]
    assert not any("flash" in str(t) or "softmax" in str(t) for t in seen["forward"])
    want = model(q, k, v)
    want_grads = torch.autograd.grad(want, (q, k, v))
    assert torch.allclose(got, want)
    assert all(torch.allclose(a, b) for a, b in zip(got_grads, want_grads))


@pytest.mark.usefixtures("interpreter")
def test_op_registration_passes_opcheck():
    q, k, v = (t.requires_grad_() for t in inputs(1, 2, 1, 20, 20, 16))
    torch.library.opcheck(torch.ops.attngen.attention.default, (q, k, v, "causal", 0.25, None),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
