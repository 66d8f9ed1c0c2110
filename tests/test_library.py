"""The bundled pattern library (`patterns/*.attn`) against its published definitions.

Every reference below is a NumPy restatement of the paper's rule or of the reference code
(cited per test), written without attngen, or an example matrix copied from
/work/shared/research/patterns.md. A reference is built for the full N x N problem; queries
are bottom-right aligned, so `pattern.mask(M, N)` must equal its last M rows.
"""
from __future__ import annotations

import math
import re
from functools import cache

import numpy as np
import pytest
import torch

import attngen
from attngen import library

EXPECTED_FILES = {
    "bigbird", "document", "duo", "longformer", "longlora", "minference", "moa", "natten",
    "neighborhood2d", "power", "radial", "sparse_transformer", "streaming",
}


def _definitions() -> list[tuple[str, str]]:
    out = []
    for stem, path in sorted(library.files().items()):
        out += [(stem, name) for name in re.findall(r"^def (\w+)", path.read_text(), re.M)]
    return out


@cache
def call(stem: str, expr: str) -> attngen.Pattern:
    """`expr` (e.g. "a_shape(2, 4)") evaluated with the definitions of a bundled file."""
    return attngen.parse(library.files()[stem].read_text() + "\n" + expr)


def mask(stem: str, expr: str, M: int, N: int, **kw) -> np.ndarray:
    return call(stem, expr).mask(M, N, **kw).numpy()


def grid(N: int):
    return np.arange(N)[:, None], np.arange(N)[None, :]


def matrix(text: str) -> np.ndarray:
    return np.array([[c == "1" for c in line] for line in text.split()], dtype=bool)


def check(stem: str, expr: str, ref: np.ndarray, sizes=None, **kw):
    """Compare the pattern with the N x N reference at every M in `sizes` (default: M = N,
    a chunk, and a single decoding row)."""
    N = ref.shape[-1]
    for M in sizes or sorted({N, max(1, N // 3 + 1), 1}):
        got = mask(stem, expr, M, N, **kw)[0]
        want = ref[N - M:]
        if not np.array_equal(got, want):
            bad = np.argwhere(got != want)[:5].tolist()
            pytest.fail(f"{stem}: {expr} at M={M}, N={N} differs at (row, key) {bad}")


# ---------------------------------------------------------------------------------------
# Every file and every definition loads.
# ---------------------------------------------------------------------------------------
def test_library_has_every_family():
    assert EXPECTED_FILES <= set(library.files())


@pytest.mark.parametrize("stem", sorted(EXPECTED_FILES))
def test_file_loads(stem):
    path = library.files()[stem]
    text = path.read_text()
    assert re.search(r"arXiv|NeurIPS|ICLR|CVPR", text), "each file cites its paper"
    p = attngen.load(path)
    assert isinstance(p, attngen.Pattern)
    assert attngen.load(stem) == p  # a bare name finds the bundled file


@pytest.mark.parametrize("stem,name", _definitions(), ids=lambda x: x)
def test_definition_loads(stem, name):
    path = library.files()[stem]
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    assert at > 0 and lines[at - 1].startswith("#"), f"{name} needs a comment citing its source"
    p = attngen.load(path, name)  # called with its defaults: every parameter has one
    assert attngen.parse(str(p)) == p  # canonical text round-trips
    if p.is_dynamic:
        return
    heads = 8 if p.is_mixture else 1
    doc_ids = [0] * 20 + [1] * 44
    m = p.mask(37, 64, heads=heads, doc_ids=doc_ids)
    assert m.shape == (heads, 37, 64) and m.dtype == torch.bool


# ---------------------------------------------------------------------------------------
# StreamingLLM / A-shape / Tri-shape (research notes §1)
# ---------------------------------------------------------------------------------------
A_SHAPE_2_4 = """
1000000000000000 1100000000000000 1110000000000000 1111000000000000 1111100000000000
1111110000000000 1101111000000000 1100111100000000 1100011110000000 1100001111000000
1100000111100000 1100000011110000 1100000001111000 1100000000111100 1100000000011110
1100000000001111"""


def a_shape_ref(N, n_init, n_local):
    """MInference streaming_forward: d = q - k >= 0 and (d < n_local or k < n_init)."""
    q, k = grid(N)
    d = q - k
    return (d >= 0) & ((d < n_local) | (k < n_init))


def test_a_shape_example():
    ref = matrix(A_SHAPE_2_4)
    check("streaming", "a_shape(2, 4)", ref, sizes=[16, 4, 1])
    check("streaming", "streaming_llm(2, 4)", ref, sizes=[16, 4, 1])
    assert np.array_equal(mask("streaming", "a_shape(2, 4)", 4, 16)[0], ref[12:])


def streaming_llm_ref(N, start, recent):
    """StartRecentKVCache.evict_for_space for one-token decoding: the query at t sees
    keys [0, start) and [t - recent + 1, t]."""
    out = np.zeros((N, N), dtype=bool)
    for t in range(N):
        out[t, :min(start, t + 1)] = True
        out[t, max(0, t - recent + 1):t + 1] = True
    return out


@pytest.mark.parametrize("N", [1, 9, 16, 29])
@pytest.mark.parametrize("s,w", [(2, 4), (3, 5), (1, 1), (5, 2)])
def test_a_shape_and_streaming_llm(N, s, w):
    check("streaming", f"a_shape({s}, {w})", a_shape_ref(N, s, w))
    check("streaming", f"streaming_llm({s}, {w})", streaming_llm_ref(N, s, w))


def tri_shape_ref(N, n_init, n_local, n_last):
    """minference/ops/streaming_kernel.py::tri_shape_kernel for a full prefill (M = N):
    n_last = min(n_last, q_len - 1); the first rows run a_shape on k[:-n_last] (bottom-right
    offset computed on the truncated tensors), the last n_last rows are dense causal."""
    n_last = min(n_last, N - 1)
    out = np.zeros((N, N), dtype=bool)
    first = N - n_last
    out[:first, :first] = a_shape_ref(first, n_init, n_local)
    q, k = grid(N)
    out[first:] = (k <= q)[first:]
    return out


@pytest.mark.parametrize("N", [2, 11, 24])
@pytest.mark.parametrize("s,w,n_last", [(2, 4, 3), (1, 3, 5), (3, 2, 40)])
def test_tri_shape(N, s, w, n_last):
    # M = N is the reference code exactly; M < N keeps the rows a full prefill has (the
    # code's clamp of n_last to M - 1 is a documented divergence).
    check("streaming", f"tri_shape({s}, {w}, {n_last})", tri_shape_ref(N, s, w, n_last))


# ---------------------------------------------------------------------------------------
# DuoAttention (notes §10)
# ---------------------------------------------------------------------------------------
def duo_streaming_ref(N, sink_size, recent_size):
    """duo_attn/patch/streaming_attn.py::generate_streaming_mask (before rounding N to 8)."""
    ones = np.ones((N, N), dtype=bool)
    causal = ~np.triu(ones, 1)
    recent = np.triu(ones, -recent_size + 1)
    sink = ones.copy()
    sink[:, sink_size:] = False
    return (recent | sink) & causal


@pytest.mark.parametrize("N", [1, 10, 33])
@pytest.mark.parametrize("sink,recent", [(2, 4), (4, 8), (1, 1)])
def test_duo_streaming(N, sink, recent):
    check("duo", f"duo_streaming({sink}, {recent})", duo_streaming_ref(N, sink, recent))


def test_duo_defaults_and_retrieval():
    assert str(call("duo", "duo_streaming()")) == str(attngen.parse(
        "causal & (sink(64) | local(256))"))
    check("duo", "duo_retrieval()", np.tril(np.ones((13, 13), dtype=bool)))
    # kv_heads mixture: every query head of a GQA group gets its KV head's pattern.
    N = 300
    m = mask("duo", "duo_example()", 5, N, heads=16, kv_heads=8)
    stream = duo_streaming_ref(N, 64, 256)[N - 5:]
    causal = np.tril(np.ones((N, N), dtype=bool))[N - 5:]
    for h in range(16):
        assert np.array_equal(m[h], causal if h // 2 in (0, 5) else stream), h


# ---------------------------------------------------------------------------------------
# MoA (notes §10: MoA/attention/cache_utils.py::moa_config_to_cache_config)
# ---------------------------------------------------------------------------------------
def moa_ref(N, alpha, beta, max_new_token=1024, sink_size=64, minimum_cache_size=128,
            split_size=64):
    c = int(alpha + (N + max_new_token) * beta)
    c = min(c, N + max_new_token)
    c = math.ceil(max(c, minimum_cache_size) / split_size) * split_size
    sink = min(c, sink_size)
    local = c - sink
    q, k = grid(N)
    return (k <= q) & ((k < sink) | (q - k < local))


@pytest.mark.parametrize("N", [5, 16, 23])
@pytest.mark.parametrize("alpha,beta", [("0", "0.5"), ("3", "0.125"), ("-30", "1"),
                                        ("7.5", "0"), ("0", "0.3")])
def test_moa_small(N, alpha, beta):
    # scaled down: max_new_token=8, minimum_cache_size=4, split_size=4, sink_size=2
    ref = moa_ref(N, float(alpha), float(beta), 8, 2, 4, 4)
    check("moa", f"moa({alpha}, {beta}, 8, 4, 4, 2)", ref)


@pytest.mark.parametrize("alpha,beta,N", [("0", "0.5", 700), ("-900", "0.125", 2000),
                                          ("100", "0.0625", 3000)])
def test_moa_published_constants(alpha, beta, N):
    ref = moa_ref(N, float(alpha), float(beta))
    check("moa", f"moa({alpha}, {beta})", ref, sizes=[3, 1])


# ---------------------------------------------------------------------------------------
# Sparse Transformer (notes §3.1: openai/sparse_attention attention.py)
# ---------------------------------------------------------------------------------------
STRIDED_LOCAL_4 = """
1000000000000000 1100000000000000 1110000000000000 1111000000000000 0111100000000000
0011110000000000 0001111000000000 0000111100000000 0000011110000000 0000001111000000
0000000111100000 0000000011110000 0000000001111000 0000000000111100 0000000000011110
0000000000001111"""
STRIDED_STRIDE_4 = """
1000000000000000 0100000000000000 0010000000000000 0001000000000000 1000100000000000
0100010000000000 0010001000000000 0001000100000000 1000100010000000 0100010001000000
0010001000100000 0001000100010000 1000100010001000 0100010001000100 0010001000100010
0001000100010001"""
FIXED_4_1 = """
1000000000000000 1100000000000000 1110000000000000 1111000000000000 0001100000000000
0001110000000000 0001111000000000 0001111100000000 0001000110000000 0001000111000000
0001000111100000 0001000111110000 0001000100011000 0001000100011100 0001000100011110
0001000100011111"""


def test_sparse_transformer_examples():
    check("sparse_transformer", "strided_local(4)", matrix(STRIDED_LOCAL_4))
    check("sparse_transformer", "strided_stride(4)", matrix(STRIDED_STRIDE_4))
    check("sparse_transformer", "strided_pattern(4)",
          matrix(STRIDED_LOCAL_4) | matrix(STRIDED_STRIDE_4))
    check("sparse_transformer", "fixed_pattern(4, 1)", matrix(FIXED_4_1))


def openai_local_ref(N, l):
    # get_attn_mask 'local': band_part(ones, min(n - 1, l - 1), 0)
    q, k = grid(N)
    return (q - k >= 0) & (q - k <= min(N - 1, l - 1))


def openai_strided_ref(N, l):
    # get_attn_mask 'strided': (q - k >= 0) & ((q - k) % l == 0)
    q, k = grid(N)
    return (q - k >= 0) & ((q - k) % l == 0)


def fixed_ref(N, l, c):
    # paper: A(1) = same l-block, A(2) = k mod l in {l - c, ..., l - 1}; causal
    q, k = grid(N)
    return (k <= q) & ((k // l == q // l) | (k % l >= l - c))


@pytest.mark.parametrize("N", [7, 16, 37])
@pytest.mark.parametrize("l", [1, 3, 4, 5])
def test_sparse_transformer(N, l):
    check("sparse_transformer", f"strided_local({l})", openai_local_ref(N, l))
    check("sparse_transformer", f"strided_stride({l})", openai_strided_ref(N, l))
    check("sparse_transformer", f"strided_pattern({l})",
          openai_local_ref(N, l) | openai_strided_ref(N, l))
    for c in range(0, l + 1):
        check("sparse_transformer", f"fixed_pattern({l}, {c})", fixed_ref(N, l, c))


# ---------------------------------------------------------------------------------------
# Longformer (notes §2, §4, §9)
# ---------------------------------------------------------------------------------------
LONGFORMER_4 = """
1110000000000000 1111000000000000 1111100000000000 0111110000000000 0011111000000000
0001111100000000 0000111110000000 0000011111000000 0000001111100000 0000000111110000
0000000011111000 0000000001111100 0000000000111110 0000000000011111 0000000000001111
0000000000000111"""
DILATED_2_2 = """
1010100000000000 0101010000000000 1010101000000000 0101010100000000 1010101010000000
0101010101000000 0010101010100000 0001010101010000 0000101010101000 0000010101010100
0000001010101010 0000000101010101 0000000010101010 0000000001010101 0000000000101010
0000000000010101"""


def test_longformer_examples():
    check("longformer", "longformer(4)", matrix(LONGFORMER_4))
    # one-sided w = 2 steps of dilation 2 <=> attention_window 4
    check("longformer", "longformer_dilated(4, 2)", matrix(DILATED_2_2))


def longformer_ref(N, w, d=1, autoregressive=False, n_global=0):
    """allenai sliding_chunks / diagonaled_mm: keys q + d*j for j in [-w/2, w/2] (or
    [-w/2, 0] autoregressive), out-of-range diagonals masked; global tokens as attention-gym
    global_sliding_window (is_global[q] or is_global[k])."""
    out = np.zeros((N, N), dtype=bool)
    one_sided = w // 2
    for q in range(N):
        for j in range(-one_sided, (0 if autoregressive else one_sided) + 1):
            if 0 <= q + d * j < N:
                out[q, q + d * j] = True
    is_global = np.arange(N) < n_global
    return out | is_global[:, None] | is_global[None, :]


@pytest.mark.parametrize("N", [1, 9, 30])
@pytest.mark.parametrize("w", [2, 4, 6])
def test_longformer(N, w):
    check("longformer", f"longformer({w})", longformer_ref(N, w))
    check("longformer", f"longformer_causal({w})", longformer_ref(N, w, autoregressive=True))
    for d in (1, 2, 3):
        check("longformer", f"longformer_dilated({w}, {d})", longformer_ref(N, w, d))
    for g in (1, 3):
        check("longformer", f"longformer_global({w}, {g})", longformer_ref(N, w, n_global=g))


# ---------------------------------------------------------------------------------------
# BigBird (notes §9: HF modeling_big_bird.py, ITC, random blocks off in eval)
# ---------------------------------------------------------------------------------------
def bigbird_ref(N, g):
    """Block layout of HF BigBirdBlockSparseAttention in eval: first and last block rows
    attend to all blocks; other block rows attend to blocks b-1, b, b+1, 0 and the last
    (their random blocks all index block 0). The sequence is padded to a multiple of g."""
    nb = -(-N // g)
    blocks = np.zeros((nb, nb), dtype=bool)
    for b in range(nb):
        if b in (0, nb - 1):
            blocks[b, :] = True
        else:
            blocks[b, [0, b - 1, b, b + 1, nb - 1]] = True
    tokens = np.repeat(np.repeat(blocks, g, axis=0), g, axis=1)
    return tokens[:N, :N]


@pytest.mark.parametrize("N", [1, 12, 19, 40])
@pytest.mark.parametrize("g", [1, 2, 3, 4])
def test_bigbird(N, g):
    check("bigbird", f"bigbird({g})", bigbird_ref(N, g))


# ---------------------------------------------------------------------------------------
# PowerAttention (notes §5: arXiv 2503.03588 Algorithm 1)
# ---------------------------------------------------------------------------------------
POWER_2_2 = """
1000000000000000 1100000000000000 1110000000000000 1111000000000000 1111100000000000
1111110000000000 1111111000000000 1111111100000000 1100111110000000 1100111111000000
1111001111100000 1111001111110000 1100110011111000 1100110011111100 1100001100111110
1100001100111111"""


def power_ref(N, B, window):
    q, k = grid(N)
    bd = q // B - k // B
    return (k <= q) & ((bd < window) | ((bd & (bd - 1)) == 0) | (k < B))


def test_power_example():
    check("power", "power_attention(2, 2)", matrix(POWER_2_2))


@pytest.mark.parametrize("N", [1, 17, 64, 77])
@pytest.mark.parametrize("B,window", [(1, 1), (2, 2), (3, 5), (4, 1)])
def test_power(N, B, window):
    check("power", f"power_attention({B}, {window})", power_ref(N, B, window))


# ---------------------------------------------------------------------------------------
# Radial Attention (notes §6: radial_attn/attn_mask.py)
# ---------------------------------------------------------------------------------------
RADIAL_HUNYUAN = """
1111111111001100 1111111111101110 1111111101110111 1111111100110011 1111111111111100
1111111111111110 1111111111110111 1111111111110011 1100111111111111 1110111111111111
0111111111111111 0011111111111111 1100110011111111 1110111011111111 0111011111111111
0011001111111111"""
RADIAL_WAN = """
1111111111001100 1111111111101110 1111111101110111 1111111100110011 1111111111111100
1111111111111110 1111111111110111 1111111111110011 1111111111111111 1111111111111111
1111111111111111 1111111111111111 1111110011111111 1111111011111111 1111011111111111
1111001111111111"""


def radial_ref(N, tpf, model, decay, block_size, threshold):
    """Token mask of gen_log_mask_shrinked before shrinkMaskStrict: get_window_width and
    get_diagonal_split_mask per frame pair (i, j); Wan makes frame 0 a sink. The code fixes
    threshold = 128; the scaled-down examples set block_size = threshold."""
    frames = -(-N // tpf)
    out = np.zeros((frames * tpf, frames * tpf), dtype=bool)
    r = np.arange(tpf)
    for i in range(frames):
        for j in range(frames):
            if j == 0 and model == "wan":
                local = np.ones((tpf, tpf), dtype=bool)
            else:
                dist = abs(i - j)
                if dist <= 1:
                    width = tpf
                else:
                    dl = 2 ** tpf.bit_length() / 2 ** dist.bit_length() * decay
                    width = dl if dl >= block_size else block_size
                local = np.abs(r[None, :] - r[:, None]) <= width
                dl0 = 2 ** tpf.bit_length() / 2 ** dist.bit_length()
                if dl0 < threshold and dist % int(threshold / dl0) != 0:
                    local[:] = False
            out[i * tpf:(i + 1) * tpf, j * tpf:(j + 1) * tpf] = local
    return out[:N, :N]


def test_radial_examples():
    check("radial", "radial_hunyuan(4, 1, 0.5)", matrix(RADIAL_HUNYUAN))
    check("radial", "radial_wan(4, 1, 0.5)", matrix(RADIAL_WAN))
    assert np.array_equal(radial_ref(16, 4, "hunyuan", 0.5, 1, 1), matrix(RADIAL_HUNYUAN))


@pytest.mark.parametrize("model", ["hunyuan", "wan"])
@pytest.mark.parametrize("tpf,frames,b,decay", [(4, 4, 1, "0.5"), (5, 7, 2, "1"),
                                                 (3, 9, 1, "0.25"), (8, 6, 2, "0.5")])
def test_radial_scaled(model, tpf, frames, b, decay):
    N = tpf * frames
    ref = radial_ref(N, tpf, model, float(decay), b, b)
    check("radial", f"radial_{model}({tpf}, {b}, {decay})", ref)


@pytest.mark.parametrize("model", ["hunyuan", "wan"])
def test_radial_published_threshold(model):
    # block_size = threshold = 128 as in the code, with frames short enough to keep N small:
    # 200 tokens per frame -> frame pairs 2 apart are kept, 3 apart dropped, 4 apart kept...
    tpf, frames = 200, 9
    N = tpf * frames
    ref = radial_ref(N, tpf, model, 1.0, 128, 128)
    check("radial", f"radial_{model}({tpf})", ref, sizes=[N // 2, 7])


def test_radial_hunyuan_text_tokens():
    tpf, frames, text = 4, 3, 5
    N = tpf * frames + text
    ref = np.ones((N, N), dtype=bool)
    ref[:tpf * frames, :tpf * frames] = radial_ref(tpf * frames, tpf, "hunyuan", 0.5, 1, 1)
    check("radial", f"radial_hunyuan_joint({tpf}, {frames}, 1, 0.5)", ref)


# ---------------------------------------------------------------------------------------
# NATTEN (notes §8: src/natten/backends/flex.py::get_na_flex_mask), 1D and 2D
# ---------------------------------------------------------------------------------------
NATTEN_5 = """
1111100000000000 1111100000000000 1111100000000000 0111110000000000 0011111000000000
0001111100000000 0000111110000000 0000011111000000 0000001111100000 0000000111110000
0000000011111000 0000000001111100 0000000000111110 0000000000011111 0000000000011111
0000000000011111"""
NATTEN_5_DIL2 = """
1010101010000000 0101010101000000 1010101010000000 0101010101000000 1010101010000000
0101010101000000 0010101010100000 0001010101010000 0000101010101000 0000010101010100
0000001010101010 0000000101010101 0000001010101010 0000000101010101 0000001010101010
0000000101010101"""
NATTEN_5_CAUSAL = """
1000000000000000 1100000000000000 1110000000000000 1111000000000000 1111100000000000
0111110000000000 0011111000000000 0001111100000000 0000111110000000 0000011111000000
0000001111100000 0000000111110000 0000000011111000 0000000001111100 0000000000111110
0000000000011111"""
NATTEN2D_4x4_3x3 = """
1110111011100000 1110111011100000 0111011101110000 0111011101110000 1110111011100000
1110111011100000 0111011101110000 0111011101110000 0000111011101110 0000111011101110
0000011101110111 0000011101110111 0000111011101110 0000111011101110 0000011101110111
0000011101110111"""


def natten_dim_ref(q, k, L, kernel, dilation, causal):
    """One dimension of get_na_flex_mask with stride 1 (q, k are coordinates)."""
    qg, kg = q % dilation, k % dilation
    qd, kd = q // dilation, k // dilation
    padding = 1 - ((qg + (dilation - (L % dilation))) // dilation)
    L_g = L // dilation + padding
    if causal:
        leader = np.minimum(qd, L_g - 1)
        return (qd - kd >= 0) & (leader - kd < kernel) & (qg == kg)
    left, right = kernel // 2, kernel // 2 + (kernel % 2 - 1)
    centre = np.minimum(np.maximum(np.minimum(qd, L_g - 1), left), L_g - 1 - right)
    w0, w1 = centre - kd, kd - centre
    return (((0 <= w0) & (w0 <= left)) | ((0 <= w1) & (w1 <= right))) & (qg == kg)


def test_natten_examples():
    check("natten", "natten(5)", matrix(NATTEN_5))
    check("natten", "natten(5, 2)", matrix(NATTEN_5_DIL2))
    check("natten", "natten_causal(5)", matrix(NATTEN_5_CAUSAL))
    check("neighborhood2d", "natten2d(4, 4, 3, 3)", matrix(NATTEN2D_4x4_3x3))


# NATTEN requires kernel * dilation <= length, so only such combinations are generated.
@pytest.mark.parametrize("N, kernel, dilation", [
    (N, kernel, dilation) for N in (16, 17, 23) for kernel in (1, 3, 4, 5, 6)
    for dilation in (1, 2, 3) if kernel * dilation <= N])
def test_natten_1d(N, kernel, dilation):
    q, k = grid(N)
    check("natten", f"natten({kernel}, {dilation})",
          natten_dim_ref(q, k, N, kernel, dilation, causal=False))
    check("natten", f"natten_causal({kernel}, {dilation})",
          natten_dim_ref(q, k, N, kernel, dilation, causal=True))


def attention_gym_natten_ref(W, H, KW, KH):
    """attn_gym/masks/natten.py::generate_natten (square canvases only; see the notes)."""
    q, k = grid(W * H)
    qx, qy, kx, ky = q // W, q % W, k // W, k % W
    cx = np.clip(qx, KW // 2, (W - 1) - KW // 2)
    cy = np.clip(qy, KH // 2, (H - 1) - KH // 2)
    return (np.abs(cx - kx) <= KW // 2) & (np.abs(cy - ky) <= KH // 2)


@pytest.mark.parametrize("h,w,kh,kw", [(5, 5, 3, 3), (6, 6, 5, 5), (4, 7, 3, 5), (5, 3, 2, 3),
                                       (6, 4, 4, 2), (3, 8, 1, 6)])
def test_natten_2d(h, w, kh, kw):
    N = h * w
    q, k = grid(N)
    ref = (natten_dim_ref(q // w, k // w, h, kh, 1, False)
           & natten_dim_ref(q % w, k % w, w, kw, 1, False))
    check("neighborhood2d", f"natten2d({h}, {w}, {kh}, {kw})", ref)
    if h == w and kh == kw and kh % 2:
        assert np.array_equal(ref, attention_gym_natten_ref(w, h, kw, kh))


# ---------------------------------------------------------------------------------------
# LongLoRA S^2-Attn (llama_attn_replace.py)
# ---------------------------------------------------------------------------------------
def longlora_flash_ref(N, g, shifted):
    """forward_flashattn: varlen cu_seqlens [0, g, 2g, ..., N] for the first half of the
    heads and [.., g//2, g//2 + g, ..., N] for the second half; causal inside a segment."""
    starts = np.arange(0, N, g) + (g // 2 if shifted else 0)
    bounds = np.concatenate([[0], starts[starts > 0], [N]])
    seg = np.searchsorted(bounds, np.arange(N), side="right")
    q, k = grid(N)
    return (seg[:, None] == seg[None, :]) & (k <= q)


def longlora_roll_ref(N, g):
    """forward_noflashattn: roll(-g // 2) the second half of the heads, attend causally
    inside groups of g of the rolled sequence, roll the output back."""
    rolled = np.roll(np.arange(N), -g // 2)  # rolled[i] = original position at index i
    index = np.empty(N, dtype=int)
    index[rolled] = np.arange(N)  # index of each original position in the rolled order
    q, k = grid(N)
    return (index[q] // g == index[k] // g) & (index[k] <= index[q])


@pytest.mark.parametrize("N,g", [(8, None), (16, None), (24, None), (12, 3), (18, 6), (20, 4)])
def test_longlora(N, g):
    G = N // 4 if g is None else g
    arg = "" if g is None else str(g)
    check("longlora", f"longlora_group({arg})", longlora_flash_ref(N, G, False))
    check("longlora", f"longlora_shifted({arg})", longlora_flash_ref(N, G, True))
    check("longlora", f"longlora_shifted_roll({arg})", longlora_roll_ref(N, G))
    m = mask("longlora", f"longlora({arg})", N, N, heads=8)
    for h in range(8):
        assert np.array_equal(m[h], longlora_flash_ref(N, G, shifted=h >= 4))


# ---------------------------------------------------------------------------------------
# Document masking (attention-gym document_mask.py)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("N", [1, 13, 40])
def test_document(N):
    rng = np.random.default_rng(N)
    doc_ids = np.sort(rng.integers(0, 4, N))
    q, k = grid(N)
    same = doc_ids[q] == doc_ids[k]
    check("document", "document_causal()", same & (k <= q), doc_ids=doc_ids)
    check("document", "document_full()", same, doc_ids=doc_ids)


# ---------------------------------------------------------------------------------------
# MInference dynamic patterns: parameters only
# ---------------------------------------------------------------------------------------
def test_minference_dynamic():
    vs = attngen.load(library.files()["minference"], "vertical_and_slash")
    bs = attngen.load(library.files()["minference"], "block_sparse")
    assert vs.is_dynamic and bs.is_dynamic
    assert "vertical_slash(1000, 6096)" in str(vs)
    assert "block_topk(100, 64)" in str(bs)
    assert "vertical_slash(30, 800)" in str(call("minference", "vertical_and_slash(30, 800)"))
    assert attngen.load(library.files()["minference"]) == vs
