"""Dynamic patterns (DESIGN §5): the run-time estimation against plain PyTorch/NumPy
re-implementations, and the generated kernels (interpreter, fp32) against the reference
given the estimated sets — alone, united with static terms, and in per-head mixtures.

Tolerance: outputs and LSE within kernel_check.TOL (1e-4 absolute, fp32). Estimated sets
must be equal; random inputs are drawn continuous, so ties have probability zero."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attngen
from attngen.dsl.elaborate import load_text
from attngen.errors import PatternError
from attngen.integrations.masks import block_topk_mask, vertical_slash_mask
from attngen.lower.decompose import decompose
from attngen.lower.grid import Grid
from attngen.lower.kernel_plan import KernelSpec
from attngen.reference import attention as reference
from attngen.runtime import dynamic
from tests.kernel_check import TOL


def planted(B, Hq, Hkv, M, N, D, seed, columns=(), offsets=()):
    """q, k, v with planted vertical lines (keys aligned with the mean query) and slashes
    (key k a copy of query row k + d, so q · k is large along offset d)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, M, D, generator=g)
    k = torch.randn(B, Hkv, N, D, generator=g) * 0.5
    v = torch.randn(B, Hkv, N, D, generator=g)
    G = Hq // Hkv
    for h in range(Hkv):
        lead = q[:, h * G]
        voters = lead[:, -min(64, M):].mean(1)
        for c in columns:
            if c < N:
                k[:, h, c] += 4 * math.sqrt(D) * voters / voters.norm(dim=-1, keepdim=True)
        for d in offsets:
            for key in range(N):
                row = key + d - (N - M)
                if 0 <= row < M:
                    k[:, h, key] += 0.8 * lead[:, row]
    return q, k, v


def part_of(text: str):
    return decompose(attngen.parse(text).node)[-1]


def cover_reference(q, k, gamma: float, g: int, scale: float) -> torch.Tensor:
    """FlexPrefill-style block cover, one pooled query block at a time in NumPy."""
    R, M, _ = q.shape
    N = k.shape[1]
    G = -(-N // g)
    out = np.zeros((R, G, G), dtype=bool)
    qa, ka = q.double().numpy(), k.double().numpy()
    for r in range(R):
        for i in range(G):
            rows = [x - (N - M) for x in range(i * g, min((i + 1) * g, N)) if x >= N - M]
            if rows:
                pq = qa[r, rows].mean(0)
            else:
                pq = np.zeros(qa.shape[-1])
            scores = np.array([pq @ ka[r, j * g:min((j + 1) * g, N)].mean(0)
                               for j in range(i + 1)]) * scale
            mass = np.exp(scores - scores.max())
            mass /= mass.sum()
            total = 0.0
            for j in np.argsort(-mass, kind="stable"):
                if total >= gamma:
                    break
                out[r, i, j] = True
                total += mass[j]
            out[r, i, i] = True
    return torch.from_numpy(out)


# -- estimation --------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 150), st.integers(-40, 60), st.integers(1, 120), st.integers(1, 200),
       st.integers(0, 10_000))
def test_vertical_slash_sets_match_plain_pytorch(M, extra, v, s, seed):
    N = max(1, M + extra)  # M > N too: voters at negative positions see no key
    q, k, _ = planted(2, 1, 1, M, N, 16, seed, columns=(N // 3, N // 2),
                      offsets=(min(7, N - 1), N // 4))
    scale = 1 / 4
    keys, offsets = dynamic.vertical_slash_sets(q[:, 0], k[:, 0], v, s, scale)
    got = dynamic.token_mask([((0,), part_of(f"vertical_slash({v}, {s})"))], q, k, scale)
    want = vertical_slash_mask(q[:, 0], k[:, 0], v, s, scale)
    assert torch.equal(got[:, 0], want)
    assert keys.shape == (2, min(v, N)) and offsets.shape == (2, min(s, N))
    sinks, near = min(30, v, N), min(100, s, N)
    assert (keys[:, :sinks] == torch.arange(sinks)).all()  # forced sinks
    assert (offsets[:, :near] == torch.arange(near)).all()  # forced diagonals


def test_planted_lines_are_found():
    M = N = 300
    q, k, _ = planted(1, 1, 1, M, N, 32, 3, columns=(150, 201), offsets=(130, 177))
    keys, offsets = dynamic.vertical_slash_sets(q[:, 0], k[:, 0], 32, 102, 1 / math.sqrt(32))
    assert {150, 201} <= set(keys[0].tolist())
    assert {130, 177} <= set(offsets[0].tolist())


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 150), st.integers(0, 60), st.integers(1, 6), st.sampled_from([8, 16, 32]),
       st.integers(0, 10_000))
def test_block_topk_matches_plain_pytorch(M, extra, t, g, seed):
    N = M + extra
    q, k, _ = planted(2, 1, 1, M, N, 16, seed)
    got = dynamic.token_mask([((0,), part_of(f"block_topk({t}, {g})"))], q, k, 0.25)
    assert torch.equal(got[:, 0], block_topk_mask(q[:, 0], k[:, 0], t, g))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 120), st.integers(0, 50), st.sampled_from([0.3, 0.7, 0.9, 1.0]),
       st.sampled_from([8, 16]), st.integers(0, 10_000))
def test_block_cover_matches_numpy(M, extra, gamma, g, seed):
    N = M + extra
    q, k, _ = planted(1, 1, 1, M, N, 16, seed)
    got = dynamic.block_picks(q[:, 0], k[:, 0], "block_cover", [gamma, g], 0.25)
    assert torch.equal(got, cover_reference(q[:, 0], k[:, 0], gamma, g, 0.25))


@pytest.mark.parametrize("M, N", [(37, 53), (64, 64), (1, 40), (50, 33)])
def test_block_conversion_covers_exactly_the_estimate(M, N):
    """Kernel blocks from the estimate: every allowed pair lies in a visited block or a
    gathered column, never both; full blocks are all allowed; nothing else is visited."""
    q, k, _ = planted(1, 3, 1, M, N, 16, 0, columns=(5,), offsets=(3,))
    grid = Grid(M, N, 16, 8)
    parts = [((0,), part_of("vertical_slash(6, 9)")), ((1,), part_of("block_topk(2, 8)")),
             ((2,), part_of("block_cover(0.6, 12)"))]
    est = dynamic.estimate(parts, q, k, 0.25, grid)
    allowed = dynamic.token_mask(parts, q, k, 0.25)[0]
    seen = torch.zeros(3, M, N, dtype=torch.int64)
    for h in range(3):
        for m in range(grid.QB):
            r0, r1 = m * 16, min(M, m * 16 + 16)
            row = h * grid.QB + m
            for (off, idx), full in ((est.partial, False), (est.full, True)):
                for j in idx[off[row]:off[row + 1]].tolist():
                    block = allowed[h, r0:r1, j * 8:(j + 1) * 8]
                    if full:
                        assert block.all()
                    seen[h, r0:r1, j * 8:(j + 1) * 8] += block
            cols = est.columns[h, m, :est.column_counts[h, m]].long()
            seen[h, r0:r1, cols] += allowed[h, r0:r1, cols]
    assert torch.equal(seen, allowed.long())


# -- kernels vs the reference given the estimated sets -----------------------------------
def expected_mask(pattern: attngen.Pattern, q, k, scale):
    """bool [B, H, M, N]: static union | (estimate & within), head by head."""
    B, H, M, _ = q.shape
    N = k.shape[2]
    spec = KernelSpec.build(pattern, H, k.shape[1])
    estimate = dynamic.token_mask(list(spec.dynamic), q, k, scale)
    out = torch.zeros(B, H, M, N, dtype=torch.bool)
    for h, gi in enumerate(spec.head_group):
        for part in spec.groups[gi].parts:
            if part.strategy == "dynamic":
                within = part.dynamic.within
                extra = (torch.as_tensor(attngen.Pattern(within).mask(M, N))
                         if within is not None else True)
                out[:, h] |= estimate[:, h] & extra
            else:
                out[:, h] |= torch.as_tensor(attngen.Pattern(part.node).mask(M, N))
    return out


def check_dynamic(text, B=1, Hq=2, Hkv=1, M=37, N=53, D=16, seed=0):
    pattern = attngen.parse(text) if isinstance(text, str) else text
    q, k, v = planted(B, Hq, Hkv, M, N, D, seed, columns=(N // 2,), offsets=(N // 5,))
    scale = 1 / math.sqrt(D)
    out, lse = attngen.attention(q, k, v, pattern, return_lse=True, backend="triton")
    mask = expected_mask(pattern, q, k, scale)
    where = f"{text} at B={B} Hq={Hq} Hkv={Hkv} M={M} N={N}"
    for b in range(B):
        ref_out, ref_lse = reference(q[b:b + 1], k[b:b + 1], v[b:b + 1], None, mask=mask[b],
                                     return_lse=True)
        assert torch.isfinite(out[b]).all(), where
        err = (out[b] - ref_out[0]).abs().max().item()
        assert err <= TOL, f"output error {err:.2e} for {where}"
        assert torch.equal(torch.isinf(lse[b]), torch.isinf(ref_lse[0])), where
        finite = torch.isfinite(ref_lse[0])
        if finite.any():
            assert (lse[b][finite] - ref_lse[0][finite]).abs().max().item() <= TOL, where


DYNAMIC = ["vertical_slash(6, 9)", "sink(8) | vertical_slash(5, 12)",
           "block_topk(2, 16)", "block_cover(0.8, 16)", "local(24) & block_topk(1, 8)",
           "causal & (local(10) | block_topk(2, 16))", "strided(4) | vertical_slash(3, 4)",
           "vertical_slash(N // 8, N // 4)"]


@pytest.mark.parametrize("text", DYNAMIC)
@pytest.mark.parametrize("shape", [(1, 2, 1, 37, 53), (2, 4, 2, 70, 70), (1, 2, 2, 1, 45)])
def test_dynamic_kernels_match_reference(interpreter, text, shape):
    check_dynamic(text, *shape)


@pytest.mark.parametrize("text", ["vertical_slash(6, 9)", "sink(4) | vertical_slash(6, 9)",
                                  "block_topk(2, 8)"])
def test_more_queries_than_keys(interpreter, text):
    check_dynamic(text, 1, 2, 1, 50, 33)


@pytest.mark.parametrize("block_n", [64, 128])
def test_vertical_slash_at_the_gpu_block_widths(interpreter, block_n):
    """The slash test reads BLOCK_N / 32 + 1 words per row and funnel-shifts them: the
    interpreter's 32-wide blocks take one word, so the GPU's 64- and 128-wide blocks are
    checked here, on keys spanning many words, rows of every alignment and M < N."""
    from attngen.runtime.kernel import Config

    text, M, N = "sink(3) | vertical_slash(7, 60)", 150, 301
    pattern = attngen.parse(text)
    q, k, v = planted(1, 2, 1, M, N, 16, 3, columns=(N // 2,), offsets=(N // 5, 97))
    kernel = attngen.compile(pattern, head_dim=16, dtype=torch.float32, heads=2, kv_heads=1,
                             device="cpu")
    out, _, _ = kernel.launch(q, k, v, Config(16, block_n, 1, 1), None, None)
    mask = expected_mask(pattern, q, k, 1 / 4)
    ref = reference(q, k, v, None, mask=mask[0])
    assert (out - ref).abs().max().item() <= TOL


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 12), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_csr_in_place_is_csr_of(R, KB, p, seed):
    from attngen.runtime.tables import csr_of

    g = torch.Generator().manual_seed(seed)
    classes = torch.rand(R, KB, generator=g) < p
    offsets, indices = dynamic.csr_in_place(classes, R * KB)
    want_offsets, want_indices = csr_of(classes)
    assert torch.equal(offsets, want_offsets)
    assert torch.equal(indices[:int(offsets[-1])], want_indices)


def test_dynamic_launch_builds_its_indices_without_host_round_trips(interpreter, monkeypatch):
    """After a first call (kernel tables and head rows made once), a dynamic mixture's call
    makes no tensor from a host list and no `nonzero`: both wait for the device."""
    text = "heads { 0: vertical_slash(4, 6); 1: block_topk(2, 16); *: causal & local(8) }"
    q, k, v = planted(1, 4, 2, 40, 40, 16, 0, columns=(20,), offsets=(8,))
    first = attngen.attention(q, k, v, text, backend="triton")

    def refuse(*args, **kwargs):
        raise AssertionError("a host round trip on the dynamic path")

    for name in ("nonzero", "tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, refuse)
    monkeypatch.setattr(torch.Tensor, "nonzero", refuse)
    assert torch.equal(attngen.attention(q, k, v, text, backend="triton"), first)


MIXTURE = ("heads { 0: vertical_slash(8, 12); 1: block_topk(2, 16); 2: local(16); "
           "3: sink(4) | block_cover(0.7, 16); 4: causal; 5: sink(4) | local(8); "
           "*: sink(8) | vertical_slash(4, 20) }")


@pytest.mark.parametrize("Hkv", [1, 2, 4])
def test_mixture_with_dynamic_heads(interpreter, Hkv):
    """≥ 4 different patterns across 8 heads, dynamic ones among them; heads of one kv
    group carry different patterns (GQA)."""
    check_dynamic(MIXTURE, 1, 8, Hkv, 45, 61)


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("vertical_slash(4, 4) | block_topk(2, 16)", "at most one"),
    ("causal - vertical_slash(4, 4)", "not negated"),
])
def test_unsupported_dynamic_forms_say_why(text, words):
    with pytest.raises(PatternError, match=words):
        KernelSpec.build(attngen.parse(text), 1)


# -- attngen show ------------------------------------------------------------------------
def test_show_draws_the_estimate_of_given_inputs(tmp_path, capsys):
    from attngen.cli import main

    q, k, _ = planted(1, 2, 1, 24, 40, 16, 0, columns=(21,), offsets=(9,))
    torch.save({"q": q, "k": k}, tmp_path / "qk.pt")
    text = "heads { 0: sink(2) | vertical_slash(4, 3); 1: block_topk(1, 8) }"
    assert main(["show", text, "--inputs", str(tmp_path / "qk.pt"),
                 "--png", str(tmp_path / "d.png")]) == 0
    printed = capsys.readouterr().out
    want = dynamic.allowed(attngen.parse(text), q, k, 0.25)[0]
    for h in range(2):  # the printed picture of each head is its estimated mask
        picture = "\n".join("".join("#" if x else "." for x in row) for row in want[h].tolist())
        assert picture in printed
    assert "vertical_slash" in printed and (tmp_path / "d.png").stat().st_size > 10_000


def test_show_refuses_a_dense_picture_too_large(capsys):
    from attngen.cli import main

    assert main(["show", "vertical_slash(4, 4)", "--n", "16384"]) != 0
    assert "M·N must be at most" in capsys.readouterr().err


# -- bench accounting (CPU: Flex eager) --------------------------------------------------
@pytest.mark.parametrize("text", ["vertical_slash(40, 60)", "block_topk(2, 32)",
                                  "sink(8) | vertical_slash(10, 20)",
                                  "local(100) & block_cover(0.8, 64)"])
def test_bench_counts_pairs_and_builds_flex_mask_from_the_estimate(text):
    """Exact allowed pairs without a dense mask; Flex given the estimate as a block mask
    computes the same attention as SDPA with the dense mask."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from attngen.bench import dynamic as bench_dynamic

    N, H = 2 * bench_dynamic.FLEX_BLOCK + 57, 2
    q, k, v = planted(1, H, H, N, N, 16, 1, columns=(N // 2,), offsets=(N // 3,))
    p = attngen.parse(text)
    parts = list(KernelSpec.build(p, H).dynamic)
    term = parts[0][1].dynamic
    est = dynamic.pick(parts, q, k, 0.25)
    mask = dynamic.allowed(p, q, k, 0.25)
    pairs = bench_dynamic.allowed_pairs(term, term.static, est, N)
    assert pairs is None if (term.static or term.within) else pairs == mask.sum().item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, block_mask=bench_dynamic.flex_block_mask(
            term, term.static, parts, est, H, N))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("text", ["vertical_slash(40, 60)", "local(100) & block_cover(0.8, 64)"])
def test_backward_bench_gives_flex_the_kernels_estimate(interpreter, text):
    """`attngen bench --backward` hands Flex the block mask of the estimate attngen's own
    kernel makes on the same inputs: Flex then computes the dense-mask attention."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from attngen.bench import dynamic as bench_dynamic
    from attngen.bench import serve as bench_serve

    N, H = 2 * bench_dynamic.FLEX_BLOCK + 57, 2
    q, k, v = planted(1, H, H, N, N, 16, 1, columns=(N // 2,), offsets=(N // 3,))
    p = attngen.parse(text)
    assert bench_serve._dynamic(p, H)
    block_mask, _ = bench_serve._flex_mask(p, q, k, H, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, block_mask=block_mask)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=dynamic.allowed(p, q, k, 0.25))
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("call", ["block_sparse(3, 16)", "vertical_and_slash(7, 11)"])
def test_bundled_minference_patterns_run(interpreter, call):
    """The library's MInference definitions, called with small budgets, run as kernels."""
    from attngen import library

    source = library.files()["minference"].read_text()
    pattern = load_text(f"{source}\n{call}")  # the expression after the definitions
    assert pattern.is_dynamic
    check_dynamic(pattern, 1, 2, 1, 45, 61)


def test_mixture_schedule_counts_the_estimated_blocks():
    """With dynamic heads the program order is made per call from the estimate: every
    program once, longest first by static plus estimated blocks and column chunks."""
    from attngen.runtime.kernel import Config

    p = attngen.parse("heads { 0: vertical_slash(8, 20); 1: local(7); *: block_topk(1, 32) }")
    kernel = attngen.compile(p, head_dim=16, dtype=torch.float32, heads=4, kv_heads=2,
                             device="cpu")
    cfg = Config(32, 32, 1, 1)
    q, k, _ = planted(2, 4, 2, 100, 100, 16, 0, columns=(50,), offsets=(20,))
    offsets, _ = kernel._tables(100, 100, cfg, "cpu", None)
    grid = Grid(100, 100, 32, 32)
    est = dynamic.estimate(list(kernel.spec.dynamic), q, k, 0.25, grid)
    order = kernel._schedule(2, 100, 100, cfg, "cpu", offsets, est).numpy()
    assert sorted(order.tolist()) == list(range(4 * 8))  # QB=4 × B·H=8, each once
    local = attngen.layout(attngen.parse("local(7)"), 100, 100, block=32)
    static = (local.classes().numpy()[0] > 0).sum(-1)  # [QB]
    work = est.work(grid).numpy()  # [QB, BH]
    costs = [work[w // 8, w % 8] + (static[w // 8] if (w % 8) % 4 == 1 else 0) for w in order]
    assert costs == sorted(costs, reverse=True) and max(costs) > min(costs)


@pytest.mark.parametrize("text", [MIXTURE, "sink(3) | block_topk(2, 8)", "block_cover(0.8, 16)"])
def test_reference_backend_runs_dynamic_patterns_as_the_kernels_do(interpreter, text):
    """One CPU path: backend='reference' (what 'auto' takes on the CPU) computes a dynamic
    pattern from the kernels' own estimate, so both backends give the same output and LSE
    (batch 2, GQA, M < N)."""
    q, k, v = planted(2, 8, 2, 29, 45, 16, 5, columns=(20,), offsets=(7,))
    got, got_lse = attngen.attention(q, k, v, text, return_lse=True, backend="reference")
    want, want_lse = attngen.attention(q, k, v, text, return_lse=True, backend="triton")
    assert (got - want).abs().max().item() <= TOL
    finite = torch.isfinite(want_lse)
    assert torch.equal(finite, torch.isfinite(got_lse))
    assert (got_lse[finite] - want_lse[finite]).abs().max().item() <= TOL
