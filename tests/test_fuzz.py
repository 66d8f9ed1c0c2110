"""Fuzz corpus (issue 16): generated patterns, token soup, raw bytes and hostile sizes.

Every input either gives the right answer (the mask against tests/patterns_gen's NumPy
oracle, the block classes against brute force, at small sizes) or fails with PatternError,
ValueError or TypeError carrying a message: never another exception, a hang or a memory
blow-up. The work limits of attngen.env are lowered for this module, so every
refusal happens before anything large is built and each example stays small; nothing here
times anything. Bounded for CI by the `ci` profile's max_examples (about 30 s in all).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import attngen
from attngen import PatternError
from attngen.ir.arith import M as M_SYM
from attngen.ir.arith import N as N_SYM
from attngen.ir.arith import evaluate, k, q
from tests.patterns_gen import oracle, oracle_mask, text, trees
from tests.test_properties import brute_classes

CLEAN = (PatternError, ValueError, TypeError)


@pytest.fixture(autouse=True, scope="module")
def small_limits():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNGEN_MAX_LENGTH", "4096")
        mp.setenv("ATTNGEN_MAX_BLOCKS", str(1 << 14))
        mp.setenv("ATTNGEN_MAX_HEADS", "64")
        mp.setenv("ATTNGEN_MAX_MASK_ELEMENTS", str(1 << 18))
        yield


def outcome(fn):
    """fn()'s result, or the clean error it raised (which must say something)."""
    try:
        return fn()
    except CLEAN as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        if isinstance(e, PatternError):
            assert e.message.strip()
        return e


# -- sizes --------------------------------------------------------------------------------------
small = st.sampled_from([1, 2, 3, 5, 7, 16, 31, 33, 47])
hostile = st.sampled_from([0, -1, 4097, (1 << 31) - 1, 1 << 31, 1 << 63, True, 3.0, "8"])
sizes = st.one_of(small, small, small, hostile)
blocks = st.one_of(st.sampled_from([1, 4, 16, 64, (8, 16), (16, 8)]),
                   st.sampled_from([0, -4, (0, 4), 2.5, "x", (1, 2, 3), 1 << 40]))
head_counts = st.one_of(st.sampled_from([1, 2, 3, 4]), st.sampled_from([0, -2, 65, 10**9]))


@settings(max_examples=120)
@given(trees, sizes, sizes, blocks, head_counts)
def test_grammar_patterns_at_hostile_sizes(tree, M, N, block, heads):
    p = attngen.parse(text(tree))
    note(f"attngen.layout(attngen.parse({str(p)!r}), {M!r}, {N!r}, block={block!r}, "
         f"heads={heads!r})")
    lay = outcome(lambda: attngen.layout(p, M, N, block=block, heads=heads))
    plan = outcome(lambda: attngen.lower(p, M, N, block=block, heads=heads))
    mask = outcome(lambda: p.mask(M, N, heads=heads))
    if isinstance(mask, torch_tensor()):
        assert np.array_equal(mask[0].numpy(), oracle_mask(tree, M, N))
        if not isinstance(lay, Exception):
            bm, bn = (block, block) if isinstance(block, int) else block
            assert np.array_equal(lay.classes().numpy(), brute_classes(mask.numpy(), bm, bn))
            assert not isinstance(plan, Exception)


def torch_tensor():
    import torch

    return torch.Tensor


@settings(max_examples=120)
@given(trees, st.integers(1, 24), st.integers(1, 24))
def test_queries_before_the_first_key_m_greater_than_n(tree, N, extra):
    """M > N puts the first queries at negative positions (q = i + N − M): simplification
    must keep the predicate there too (`where(min(q, k) < 0)` was `~full`)."""
    M = N + extra
    p = attngen.parse(text(tree))
    note(f"attngen.parse({text(tree)!r}).mask({M}, {N})")
    assert np.array_equal(p.mask(M, N)[0].numpy(), oracle_mask(tree, M, N))
    qs = np.arange(-40, 0, dtype=np.int64)
    ks = np.arange(40, dtype=np.int64)
    got = evaluate(p.node.predicate, {q: qs, k: ks, N_SYM: 40, M_SYM: 80})
    assert np.array_equal(np.broadcast_to(got, qs.shape), oracle(tree, qs, ks))


# -- text: token soup, bytes, and the shapes that used to break the parser ---------------------
HARD_TOKENS = [
    "causal", "local", "sink", "strided", "dilated", "band", "where", "heads", "kv_heads", "def",
    "q", "k", "N", "M", "and", "or", "not", "min", "abs", "f", "g", "w",
    "0", "1", "4", "2147483647", "2147483648", "4294967296", "9" * 40, "0.5", "0." + "0" * 30 + "1",
    "\u0663", "\uff14", "\u00e9", "\u200b", "\x00", "\t", "\n", " ",
    "(", ")", "{", "}", ",", ":", ";", "=", "..", "|", "&", "-", "~", "+", "*", "//", "%",
    "<", "<=", "==", "!=", "(" * 60, ")" * 60, "~" * 60, "-" * 60,
]


@settings(max_examples=250)
@given(st.lists(st.sampled_from(HARD_TOKENS), max_size=30))
def test_hard_token_soup(tokens):
    source = " ".join(tokens)
    p = outcome(lambda: attngen.parse(source))
    if isinstance(p, PatternError):
        assert p.span is None or (p.line >= 1 and p.col >= 1)
    elif isinstance(p, attngen.Pattern) and not p.is_dynamic:
        outcome(lambda: p.mask(5, 3, heads=2))
        outcome(lambda: attngen.layout(p, 5, 3, block=2, heads=2))


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_raw_bytes(data):
    for source in (data.decode("latin-1"), data.decode("utf-8", errors="replace")):
        outcome(lambda: attngen.parse(source))


@settings(max_examples=40)
@given(st.integers(0, 400), st.sampled_from(["(", "~(", "where((", "local(("]))
def test_nesting_depth(depth, opener):
    closer = {"(": ")", "~(": ")", "where((": ")", "local((": ")"}[opener]
    body = {"(": "causal", "~(": "causal", "where((": "q < k", "local((": "4"}[opener]
    tail = {"(": "", "~(": "", "where((": ")", "local((": ")"}[opener]
    head = opener[:-1] if opener in ("where((", "local((") else ""
    nest = "(" if head else opener
    source = head + nest * depth + body + closer * depth + tail
    p = outcome(lambda: attngen.parse(source))
    levels = depth * (2 if opener == "~(" else 1)  # `~` and `(` are a level each
    if levels <= 95:
        assert isinstance(p, attngen.Pattern), p
    if levels > 101:
        assert isinstance(p, PatternError) and "deeper than" in p.message


@settings(max_examples=30)
@given(st.integers(1, 1000), st.sampled_from([" | ", " & ", " - "]))
def test_long_flat_chains(n, op):
    source = op.join(f"columns({i})" if op == " | " else f"~sink({i + 1})" for i in range(n))
    p = attngen.parse(source if op != " - " else "causal - " + source.replace("~", ""))
    assert isinstance(p, attngen.Pattern)


@settings(max_examples=40)
@given(st.integers(1, 80), st.sampled_from(["w", "2 * w + 1", "min(w, N) + max(w, M)"]))
def test_definitions_that_double(levels, arg):
    """Each level uses the one below twice: the same arguments expand once; different ones
    grow exponentially, as does an argument using its parameter twice, and both are refused
    by name before they take long."""
    lines = ["def a0(w) = local(w)"] + [
        f"def a{i}(w) = a{i - 1}(w) | a{i - 1}({arg})" for i in range(1, levels + 1)]
    p = outcome(lambda: attngen.parse("\n".join(lines) + f"\na{levels}(1)"))
    if arg == "w":
        assert p == attngen.local(1)
    elif isinstance(p, PatternError):
        assert any(m in p.message for m in ("expands to more than", "too large", "grew beyond"))


@settings(max_examples=30)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=6))
def test_recursive_definitions(names):
    """A chain of defs that calls back into itself is refused with the cycle, never looped."""
    lines = [f"def {a}() = causal & {b}()" for a, b in zip(names, names[1:] + names[:1])]
    if len(set(names)) < len(names):
        p = outcome(lambda: attngen.parse("\n".join(lines)))
        assert isinstance(p, PatternError)
        return
    p = outcome(lambda: attngen.parse("\n".join(lines)))
    assert isinstance(p, PatternError) and "refers to itself" in p.message


head_range = st.tuples(st.integers(0, 12), st.integers(0, 12)).map(sorted).map(tuple)
big_range = st.tuples(st.integers(0, 1 << 30), st.integers(0, 1 << 30)
                      ).map(sorted).map(tuple)


@settings(max_examples=80)
@given(st.lists(st.one_of(head_range, head_range, big_range), min_size=1, max_size=5),
       st.booleans(), st.sampled_from([1, 4, 8, 13]))
def test_heads_ranges(ranges, star, heads):
    """Overlapping ranges are refused; ranges beyond the heads are refused once the heads are
    known; otherwise each head gets its entry's pattern. Never materialised element-wise."""
    entries = "; ".join(f"{lo}..{hi}: local({i + 1})" for i, (lo, hi) in enumerate(ranges))
    source = f"heads {{ {entries}{'; *: causal' if star else ''} }}"
    p = outcome(lambda: attngen.parse(source))
    overlap = any(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(ranges)
                  for b in ranges[i + 1:])
    if overlap:
        assert isinstance(p, PatternError) and "assigned twice" in p.message
        return
    assert isinstance(p, attngen.Pattern)
    nodes = outcome(lambda: p.head_nodes(heads))
    if any(hi >= heads for _, hi in ranges):
        assert isinstance(nodes, PatternError) and "out of range" in nodes.message
        return
    for h in range(heads):
        mine = [i for i, (lo, hi) in enumerate(ranges) if lo <= h <= hi]
        if mine:
            assert nodes[h] == attngen.local(mine[0] + 1).node
        elif star:
            assert nodes[h] == attngen.causal.node
    if not star and any(not any(lo <= h <= hi for lo, hi in ranges) for h in range(heads)):
        assert isinstance(nodes, PatternError)


@settings(max_examples=60)
@given(st.integers(0, 10**40), st.sampled_from(["local({})", "sink({})", "strided({})",
                                                "where(q - k < {})", "band({}, 0)",
                                                "heads {{ {}: causal; *: full }}",
                                                "block_topk(4, {})", "local({} * 2)"]))
def test_huge_integers(value, template):
    p = outcome(lambda: attngen.parse(template.format(value)))
    if value > 1 << 30:  # kernels compute in int32; sums of two constants must fit
        assert isinstance(p, PatternError) and "too large" in p.message
    elif isinstance(p, attngen.Pattern) and not p.is_dynamic and not p.is_mixture:
        outcome(lambda: attngen.layout(p, 33, 17, block=8))
