"""Numerics of the kernel paths (issue 16): document ids beyond int32, non-finite inputs,
zero and negative scales, decode bounds, pattern parameters below their minimum, constants
beyond int32, input checks and int64 offsets. fp32 under the interpreter, small odd shapes,
against attngen.reference (the oracle; where it needs one, the oracle is stated)."""
import math
import re

import pytest
import torch

import attngen
from attngen.codegen import render
from attngen.lower.kernel_plan import KernelSpec
from attngen.reference import attention as reference
from attngen.runtime import dynamic
from attngen.runtime.decode import INTERPRETER_CONFIG
from attngen.runtime.decode import _launch as decode_launch

pytestmark = pytest.mark.usefixtures("interpreter")

TOL = 1e-4
NAN = float("nan")
INF = float("inf")


def _qkv(B=1, H=2, HKV=1, M=45, N=45, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, D, generator=g) for h, n in ((H, M), (HKV, N), (HKV, N)))


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def _close(got, want, where=""):
    err = (got - want).abs().max().item() if got.numel() else 0.0
    assert err <= TOL, f"error {err:.2e} {where}"


# -- document ids ---------------------------------------------------------------------------
def test_doc_ids_beyond_int32_are_compared_exactly():
    """ids 0 and 2^32 are two documents (int32 truncation made them one: error 1.34)."""
    q, k, v = _qkv()
    ids = torch.zeros(45, dtype=torch.int64)
    ids[20:] = 2**32
    ids[33:] = 2**32 + 1
    dout = torch.randn_like(q)
    got = _grads(lambda *t: attngen.attention(*t, "causal & document", doc_ids=ids,
                                              backend="triton"), q, k, v, dout)
    want = _grads(lambda *t: reference(*t, "causal & document", doc_ids=ids), q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        _close(a, b, name)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("ids", [torch.tensor([0.0, 0.5]).repeat(15),
                                 torch.zeros(30, dtype=torch.bool),
                                 torch.zeros(30, dtype=torch.complex64)],
                         ids=["float", "bool", "complex"])
def test_doc_ids_that_are_not_integers_are_refused(backend, ids):
    q, k, v = _qkv(M=30, N=30)
    with pytest.raises(TypeError, match="doc_ids"):
        attngen.attention(q, k, v, "causal & document", doc_ids=ids, backend=backend)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_doc_ids_of_the_wrong_shape_are_refused(backend):
    q, k, v = _qkv(M=30, N=30)
    with pytest.raises(ValueError, match="doc_ids"):
        attngen.attention(q, k, v, "causal & document", doc_ids=torch.zeros(29, dtype=torch.long),
                          backend=backend)


# -- non-finite inputs ----------------------------------------------------------------------
# ranges (partial blocks on the window's edge), a mixture with residue classes (permuted
# passes), and a table head
PATTERNS = ["local(4)", "heads { 0: causal & (sink(3) | local(9)); *: causal & strided(4) }",
            "heads { 0: local(5) & ~columns(7, 2); *: local(4) }"]
KEY = 10


def _sees(pattern, H, HKV, M, N):
    """bool [H, M, N]: the pattern's mask (the oracle of who may see what)."""
    return attngen.parse(pattern).mask(M, N, heads=H, kv_heads=HKV)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("value", [NAN, INF])
def test_a_non_finite_value_in_v_reaches_only_rows_that_see_its_key(pattern, value):
    """v[key] non-finite: rows that may attend to the key may be non-finite, every other
    row equals the reference with that value replaced (it made every row of a visited
    block NaN: masked p = 0 times NaN). The reference follows the same rule."""
    H = HKV = 2
    q, k, v = _qkv(H=H, HKV=HKV)
    v[0, 0, KEY, 3] = value
    clean = v.clone()
    clean[0, 0, KEY] = 0.0
    want = reference(q, k, clean, pattern)
    sees = _sees(pattern, H, HKV, 45, 45)[0, :, KEY]  # head 0 (kv head 0) rows
    for backend in ("triton", "reference"):
        out, lse = attngen.attention(q, k, v, pattern, return_lse=True, backend=backend)
        bad = ~torch.isfinite(out).all(-1)
        assert torch.equal(bad[0, 0], sees), f"{backend}: non-finite rows {bad[0, 0]}"
        assert not bad[0, 1].any()
        keep = ~bad
        _close(out[keep], want[keep], backend)
        assert torch.isfinite(lse).all()  # the LSE does not depend on v


@pytest.mark.parametrize("where", ["q", "k"])
def test_a_non_finite_value_in_q_or_k_stays_in_its_rows(where):
    q, k, v = _qkv()
    pattern = PATTERNS[0]
    (q if where == "q" else k)[0, 0, KEY, 2] = NAN
    out = attngen.attention(q, k, v, pattern, backend="triton")
    sees = _sees(pattern, 2, 1, 45, 45)[0, :, KEY]
    bad = ~torch.isfinite(out).all(-1)
    if where == "q":  # head 0's query row only
        assert torch.equal(bad[0, 0], torch.arange(45) == KEY) and not bad[0, 1].any()
    else:  # the one kv head: both query heads' rows that see the key
        assert torch.equal(bad[0, 0], sees) and torch.equal(bad[0, 1], sees)


@pytest.mark.parametrize("pattern", PATTERNS[:2])
def test_gradients_that_cannot_see_a_nan_equal_the_reference_without_it(pattern):
    """NaN in v[key]: dq of rows that cannot see the key, and dk, dv of keys that no such
    row shares with it, are finite and equal the reference's with the NaN replaced."""
    H = HKV = 2
    q, k, v = _qkv(H=H, HKV=HKV)
    v[0, 0, KEY, 1] = NAN
    clean = v.clone()
    clean[0, 0, KEY] = 0.0
    dout = torch.randn_like(q)
    got = _grads(lambda *t: attngen.attention(*t, pattern, backend="triton"), q, k, v, dout)
    want = _grads(lambda *t: reference(*t, pattern), q, k, clean, dout)
    mask = _sees(pattern, H, HKV, 45, 45)[0]
    rows = mask[:, KEY]  # rows of head 0 that see the key
    keys = mask[rows].any(0)  # keys such a row also sees
    _close(got[1][0, 0, ~rows], want[1][0, 0, ~rows], "dq")
    assert torch.isfinite(got[1][0, 0, ~rows]).all() and torch.isfinite(got[1][0, 1]).all()
    for i, name in ((2, "dk"), (3, "dv")):
        _close(got[i][0, 0, ~keys], want[i][0, 0, ~keys], name)
        assert torch.isfinite(got[i][0, 0, ~keys]).all() and torch.isfinite(got[i][0, 1]).all()


def test_empty_rows_give_zero_and_minus_inf_next_to_non_finite_inputs():
    """causal with M > N: the first 15 rows see nothing; a NaN query there and a NaN value
    seen by the other rows leave them exactly 0, LSE -inf, gradient 0."""
    q, k, v = _qkv(M=45, N=30)
    q[0, 0, 3] = NAN
    v[0, 0, 2, 0] = NAN
    dout = torch.randn_like(q)
    out, dq, dk, dv = _grads(lambda *t: attngen.attention(*t, "causal", backend="triton"),
                             q, k, v, dout)
    _, lse = attngen.attention(q, k, v, "causal", return_lse=True, backend="triton")
    assert torch.equal(out[:, :, :15], torch.zeros_like(out[:, :, :15]))
    assert torch.isneginf(lse[:, :, :15]).all()
    assert torch.equal(dq[:, :, :15], torch.zeros_like(dq[:, :, :15]))


def test_a_nan_in_the_cache_reaches_only_the_decode_rows_that_see_it():
    q, k, v = _qkv(B=2, H=2, HKV=1, M=3, N=64)
    lens = torch.tensor([40, 64])
    v[0, 0, 20, 5] = NAN  # row 0's queries sit at 37..39: local(4) never sees key 20
    v[1, 0, 60, 5] = NAN  # row 1's queries at 61..63 all see key 60
    for pattern in ("local(4)", "causal & (sink(4) | local(9))"):
        out = attngen.decode(q, k, v, lens, pattern)
        clean = torch.nan_to_num(v, nan=0.0)
        want = torch.cat([reference(q[b:b + 1], k[b:b + 1, :, :n], clean[b:b + 1, :, :n],
                                    pattern) for b, n in enumerate(lens.tolist())])
        _close(out[0], want[0], pattern)
        assert not torch.isfinite(out[1]).all(-1).any()


def test_a_nan_in_v_reaches_only_rows_a_dynamic_pattern_lets_see_it():
    """Oracle: the kernel with the NaN replaced, and dynamic.allowed for who sees what
    (the estimate reads q and k only)."""
    pattern = "heads { 0: sink(4) | vertical_slash(4, 8); *: block_topk(2, 16) }"
    q, k, v = _qkv(H=2, HKV=2, M=64, N=64)
    v[0, :, KEY, 0] = NAN
    clean = torch.nan_to_num(v, nan=0.0)
    out = attngen.attention(q, k, v, pattern, backend="triton")
    want = attngen.attention(q, k, clean, pattern, backend="triton")
    sees = dynamic.allowed(attngen.parse(pattern), q, k, 1 / math.sqrt(16))[0, :, :, KEY]
    bad = ~torch.isfinite(out).all(-1)[0]
    assert torch.equal(bad, sees)
    _close(out[0][~bad], want[0][~bad])


# -- scale ----------------------------------------------------------------------------------
SCALES = [0.0, -0.25]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("pattern", ["causal", PATTERNS[1]])
def test_zero_and_negative_scales_are_exact(scale, pattern):
    """Forward (out, LSE) and backward; both gave NaN in 992 of 1024 outputs."""
    q, k, v = _qkv(H=2, HKV=2, M=37, N=45)
    dout = torch.randn_like(q)
    got = _grads(lambda *t: attngen.attention(*t, pattern, scale=scale, backend="triton"),
                 q, k, v, dout)
    want = _grads(lambda *t: reference(*t, pattern, scale=scale), q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(a).all(), name
        _close(a, b, name)
    lse = attngen.attention(q, k, v, pattern, scale=scale, return_lse=True, backend="triton")[1]
    want_lse = reference(q, k, v, pattern, scale=scale, return_lse=True)[1]
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    _close(lse[torch.isfinite(lse)], want_lse[torch.isfinite(lse)], "lse")


@pytest.mark.parametrize("scale", SCALES)
def test_zero_and_negative_scales_are_exact_in_decode(scale):
    q, k, v = _qkv(B=2, H=2, HKV=1, M=3, N=64)
    lens = torch.tensor([40, 64])
    out = attngen.decode(q, k, v, lens, "causal & (sink(4) | local(9))", scale=scale)
    want = torch.cat([reference(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                "causal & (sink(4) | local(9))", scale=scale)
                      for b, n in enumerate(lens.tolist())])
    _close(out, want)


@pytest.mark.parametrize("scale", SCALES)
def test_zero_and_negative_scales_are_exact_for_dynamic_patterns(scale):
    """Oracle: the reference with the mask the estimate picked (dynamic.allowed)."""
    pattern = "heads { 0: sink(4) | vertical_slash(4, 8); *: block_topk(2, 16) }"
    q, k, v = _qkv(H=2, HKV=2, M=64, N=64)
    out = attngen.attention(q, k, v, pattern, scale=scale, backend="triton")
    mask = dynamic.allowed(attngen.parse(pattern), q, k, scale)[0]
    _close(out, reference(q, k, v, mask=mask, scale=scale))


@pytest.mark.parametrize("scale", [NAN, INF, -INF])
def test_a_non_finite_scale_is_refused(scale):
    q, k, v = _qkv()
    for backend in ("triton", "reference"):
        with pytest.raises(ValueError, match="scale"):
            attngen.attention(q, k, v, "causal", scale=scale, backend=backend)
    q, k, v = _qkv(M=2, N=40)
    with pytest.raises(ValueError, match="scale"):
        attngen.decode(q, k, v, torch.tensor([40]), "causal", scale=scale)


# -- decode bounds --------------------------------------------------------------------------
@pytest.mark.parametrize("lengths", [torch.tensor([100]), torch.tensor([-5]), 65, [65]],
                         ids=["past-the-cache", "negative", "int", "list"])
def test_decode_lengths_outside_the_cache_are_refused(lengths):
    q, k, v = _qkv(M=2, N=64)
    with pytest.raises(ValueError, match="lengths"):
        attngen.decode(q, k, v, lengths, "causal")


def test_decode_lengths_as_python_ints_work():
    q, k, v = _qkv(B=2, M=2, N=64)
    _close(attngen.decode(q, k, v, 50, "causal"), attngen.decode(q, k, v, [50, 50], "causal"))


def test_a_block_table_naming_a_missing_page_is_refused():
    q, _, _ = _qkv(M=2, N=64)
    pages = torch.randn(4, 1, 16, 16)
    with pytest.raises(ValueError, match="block_table"):
        attngen.decode(q, pages, pages, torch.tensor([32]), "causal",
                       block_table=torch.tensor([[0, 7]]))
    # entries past a row's length are padding: never read, not checked
    out = attngen.decode(q, pages, pages, torch.tensor([20]), "causal",
                         block_table=torch.tensor([[0, 1, 7]]))
    assert torch.isfinite(out).all()


def test_device_lengths_are_checked_on_the_device_without_a_sync(monkeypatch):
    """Lengths and block tables on an accelerator are checked by torch._assert_async (a
    CUDA graph can hold it). Meta tensors stand in for CUDA ones here: reading their
    values on the host (a sync) would raise."""
    from attngen.runtime.decode import _check_bounds

    asserted = []
    monkeypatch.setattr(torch, "_assert_async", lambda t, msg: asserted.append(msg))
    kernel = attngen.compile("causal", head_dim=16, dtype=torch.float32, heads=2, kv_heads=1,
                             device="cpu")
    q, _, _ = _qkv(M=2, N=64)
    pages = torch.randn(4, 1, 16, 16)
    _check_bounds(kernel, q, pages, torch.tensor([100], device="meta"),
                  torch.tensor([[0, 7]], device="meta"), None)
    assert any("lengths" in m for m in asserted) and any("block_table" in m for m in asserted)


def test_unchecked_lengths_and_pages_never_read_outside_the_cache():
    """The launch without the host checks (what a CUDA caller gets before its device-side
    assertion fires): lengths clamp to the cache, pages to the cache's pages. The cache sits
    inside a NaN-filled buffer, so any read past it would show."""
    kernel = attngen.compile("causal", head_dim=16, dtype=torch.float32, heads=2, kv_heads=1,
                             device="cpu")
    q, k, v = _qkv(M=2, N=64)
    kc, vc = (torch.full((1, 1, 128, 16), NAN) for _ in range(2))
    kc[:, :, :64], vc[:, :, :64] = k, v
    kc, vc = kc[:, :, :64], vc[:, :, :64]
    out = decode_launch(kernel, q, kc, vc, torch.tensor([100], dtype=torch.int32), None, False,
                        2, None, INTERPRETER_CONFIG)
    _close(out, attngen.decode(q, kc, vc, torch.tensor([64]), "causal"))
    pages = torch.full((6, 1, 16, 16), NAN)
    pages[:4] = torch.randn(4, 1, 16, 16)
    table = torch.tensor([[0, 9]], dtype=torch.int32)  # page 9 does not exist: read as page 3
    out = decode_launch(kernel, q, pages[:4], pages[:4], torch.tensor([32], dtype=torch.int32),
                        None, False, 2, table, INTERPRETER_CONFIG)
    want = attngen.decode(q, pages[:4], pages[:4], torch.tensor([32]), "causal",
                          block_table=torch.tensor([[0, 3]]))
    _close(out, want)


# -- pattern parameters ---------------------------------------------------------------------
@pytest.mark.parametrize("pattern, N", [("local(N - 100)", 40), ("sink(N // 50)", 30)])
def test_a_parameter_below_its_minimum_raises_on_the_kernel_path(pattern, N):
    """The kernel returned zeros; the reference and `attngen show` raise."""
    q, k, v = _qkv(M=N, N=N)
    with pytest.raises(attngen.PatternError, match="must be at least"):
        reference(q, k, v, pattern)
    with pytest.raises(attngen.PatternError, match="must be at least"):
        attngen.attention(q, k, v, pattern, backend="triton")
    kernel = attngen.compile(pattern, head_dim=16, dtype=torch.float32, heads=2, kv_heads=1,
                             device="cpu")
    with pytest.raises(attngen.PatternError, match="must be at least"):
        kernel(q, k, v)
    with pytest.raises(attngen.PatternError, match="must be at least"):
        kernel.backward(q, k, v, q, torch.zeros(1, 2, N), q)
    with pytest.raises(attngen.PatternError, match="must be at least"):
        attngen.decode(q[:, :, :2], k, v, torch.tensor([N]), pattern)


def test_the_parameter_check_runs_once_per_shape(monkeypatch):
    from attngen.ir.pattern import Pattern

    calls = []
    check = Pattern.check
    monkeypatch.setattr(Pattern, "check", lambda self, M, N: calls.append((M, N))
                        or check(self, M, N))
    kernel = attngen.compile("local(N - 10)", head_dim=16, dtype=torch.float32, heads=2,
                             kv_heads=1, device="cpu")
    q, k, v = _qkv(M=33, N=33)
    for _ in range(3):
        kernel(q, k, v)
    assert calls.count((33, 33)) == 1


@pytest.mark.parametrize("pattern", [
    "sink(4294967297)", "local(3000000000)", "band(100000000000000000000, 0)",
    "columns(4294967296, 3)", "where(q*100000*100000 > k)"])
def test_constants_beyond_int32_raise_a_pattern_error(pattern):
    """They raised Triton's raw 'out of range for type int32'; now the language refuses them
    where they are written (constants and computed constants above 2^30)."""
    q, k, v = _qkv(M=17, N=17)
    with pytest.raises(attngen.PatternError, match="too large"):
        attngen.attention(q, k, v, pattern, backend="triton")


# -- input checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "reference", "auto"])
def test_dtypes_devices_head_dims_and_patterns_are_checked_on_every_backend(
        backend, monkeypatch):
    if backend == "auto":  # on the CPU without the interpreter, auto takes the reference
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="q torch.int64"):
        attngen.attention(q.long(), k.long(), v.long(), "causal", backend=backend)
    with pytest.raises(TypeError, match="k torch.float16"):
        attngen.attention(q, k.half(), v, "causal", backend=backend)
    with pytest.raises(ValueError, match="one device"):
        attngen.attention(q, k.to("meta"), v, "causal", backend=backend)
    with pytest.raises(ValueError, match="head_dim"):
        attngen.attention(*_qkv(D=100), "causal", backend=backend)
    with pytest.raises(ValueError, match="head_dim"):
        attngen.attention(*_qkv(D=512), "causal", backend=backend)
    with pytest.raises(TypeError, match="pattern"):
        attngen.attention(q, k, v, None, backend=backend)


def test_bfloat16_under_the_interpreter_is_computed_in_fp32():
    """It returned values near 1e9."""
    q, k, v = (t.bfloat16() for t in _qkv())
    dout = torch.randn_like(q)
    got = _grads(lambda *t: attngen.attention(*t, "causal & local(9)", backend="triton"),
                 q, k, v, dout)
    want = _grads(lambda *t: reference(*t, "causal & local(9)"), q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b.float()).abs().max() <= 2e-2, name
    out = attngen.decode(q[:, :, -2:], k, v, torch.tensor([45]), "causal & local(9)")
    assert (out.float() - want[0][:, :, -2:].float()).abs().max() <= 2e-2


# -- int64 offsets --------------------------------------------------------------------------
WIDE = {"b", "h", "hkv", "r", "n0", "m0", "rows", "q_rows", "keys", "key_rows", "page",
        "k_rows", "v_rows", "start"}
# offsets inside one block, one residue class's first row, one page, or rows of one head
# (offs_n, offs_m, i: fewer than 2^31 elements, checked on the host by check_row_span)
LOCAL = {"rel_m", "rel_n", "res", "i", "offs_m", "offs_n", "row0", "% PAGE)"}
INDEX = r"(?:\[[^\]]*\])?"  # an optional [:, None]
FACTOR = re.compile(rf"(\.to\(tl\.int64\){INDEX}|% PAGE\)|\){INDEX}|\b\w+{INDEX})"
                    r"\s*\*\s*stride_\w+")


@pytest.mark.parametrize("kind", ["forward", "backward", "decode"])
def test_offsets_are_widened_to_int64_before_they_are_multiplied(kind):
    """Every `x * stride_…` in the rendered kernels multiplies an int64 index (batch, head,
    a program's first row, gathered rows) or a row of one head, whose span the host checks
    (check_row_span): a tensor past 2^31 elements never wraps an int32 product. (2^31
    elements cannot be allocated here; this reads the index arithmetic of the generated
    source.)"""
    patterns = ["heads { 0: causal & (sink(4) | local(64)); *: causal & strided(8) }",
                "heads { 0: sink(64) | vertical_slash(1000, 6096); *: block_topk(8, 64) }"]
    for text in patterns[:1] if kind == "decode" else patterns:
        spec = KernelSpec.build(attngen.parse(text), 4).complete(kind == "backward")
        source = render(spec, key="K", version="V", kind=kind)
        for m in FACTOR.finditer(source):
            factor = m.group(1)
            name = re.sub(r"\[.*", "", factor)
            assert factor.startswith(".to(tl.int64)") or name in WIDE or name in LOCAL, (
                f"{kind} `{text}`: `{factor} * stride` may wrap in int32")
        for line in re.findall(r"^\s*(?:b|hkv|r) = .*$", source, flags=re.M):
            assert "tl.int64" in line, line


def test_one_head_spanning_2_31_elements_is_refused():
    """Rows within one head are int32 offsets in the kernels' inner loops (int64 there
    spills registers): a layout whose one head spans 2^31 elements raises a ValueError."""
    from attngen.runtime.checks import check_row_span

    ok = torch.empty_strided((1, 2, 3, 16), (96, 48, 16, 1), device="meta")
    wide = torch.empty_strided((1, 2, 3, 16), (2**33, 16, 2**30, 1), device="meta")
    check_row_span(q=ok, k=ok, v=ok)
    with pytest.raises(ValueError, match="k: one head's rows span"):
        check_row_span(q=ok, k=wide, v=ok)


def test_a_compiled_kernel_on_cpu_tensors_says_how_to_run_it(monkeypatch, kernel_cache):
    """Without the interpreter a CPU tensor used to reach Triton's driver lookup ("0 active
    drivers"); now the kernel says what to do instead."""
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(kernel_cache))
    kernel = attngen.compile("causal", head_dim=16, dtype=torch.float32, heads=2, device="cpu")
    monkeypatch.delenv("TRITON_INTERPRET")
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1.*backend='reference'"):
        kernel(q, q, q)
    out = attngen.attention(q, q, q, "causal")  # auto: the reference on the CPU
    assert torch.isfinite(out).all()


def test_where_arithmetic_that_leaves_int32_is_refused_not_wrapped(monkeypatch):
    """Kernels compute positions in int32: `q * 1000000` wraps once q > 2147, which gave
    wrong results silently. Refused at launch for the lengths where it would leave int32;
    computed exactly where it does not."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    text = "causal & where(q * 1000000 > 3 * k)"
    q = torch.randn(1, 1, 40, 16)
    for N, fits in ((2000, True), (2200, False)):  # 1000000 · 2199 > 2^31 − 1 > 10^6 · 1999
        k, v = torch.randn(1, 1, N, 16), torch.randn(1, 1, N, 16)
        ref = attngen.attention(q, k, v, text, backend="reference")
        if fits:
            assert (attngen.attention(q, k, v, text) - ref).abs().max() <= 1e-4
        else:
            with pytest.raises(ValueError, match=r"1000000\*q leaves the int32 range"):
                attngen.attention(q, k, v, text)
