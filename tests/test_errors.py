"""Malformed patterns: every one raises PatternError at the right line and column, with a
clear message, a rendered source line and a caret under the fault (DESIGN §3, Errors)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attngen
from attngen import PatternError

# (source, evaluate at (M, N, heads) or None, line, col, message part, hint part or None)
CASES = {
    # names and arity
    "unknown primitive": ("loacl(4)", None, 1, 1, "unknown pattern `loacl`", "`local`"),
    "unknown bare name": ("casual", None, 1, 1, "unknown pattern `casual`", "`causal`"),
    "no arguments": ("local()", None, 1, 1, "local takes 1 argument, got 0", "local(w)"),
    "bare local": ("local", None, 1, 1, "local takes 1 argument, got 0", "local(w)"),
    "too many arguments": ("local(1,2)", None, 1, 1, "local takes 1 argument, got 2", None),
    "band one argument": ("band(3)", None, 1, 1, "band takes 2 arguments, got 1", "band(l, r)"),
    "causal with argument": ("causal(3)", None, 1, 1, "causal takes 0 arguments", None),
    "columns empty": ("columns()", None, 1, 1, "columns takes at least one argument", None),
    "integer as pattern": ("causal | N", None, 1, 10, "`N` is an integer, not a pattern", None),
    # parameter values known at parse time
    "zero window": ("local(0)", None, 1, 7, "local: w = 0 is not a valid window", None),
    "negative window": ("local(-3)", None, 1, 7, "w = -3 is not a valid window", None),
    "zero stride": ("causal & strided(0)", None, 1, 18, "strided: s = 0", None),
    "zero dilation": ("dilated(4, 0)", None, 1, 12, "dilated: d = 0", None),
    "zero sink": ("sink(0) | local(8)", None, 1, 6, "sink: n = 0 is not a valid size", None),
    "fractional window": ("local(0.5)", None, 1, 7,
                          "w = 1/2 (floored to 0) is not a valid window", None),
    "gamma out of range": ("block_cover(2)", None, 1, 13, "gamma = 2 must lie in (0, 1]", None),
    # parameters known only at evaluation time
    "negative at N": ("local(N - 100)", (50, 50, 1), 1, 1,
                      "w = N - 100 evaluates to -50 at N=50, M=50", None),
    "negative at N, inside": ("causal & (sink(4) | local(N - 100))", (50, 50, 1), 1, 21,
                              "evaluates to -50", None),
    "zero sink at M - N": ("sink(M - N)", (8, 8, 1), 1, 1, "n = M - N evaluates to 0", None),
    "negative through def": ("def f(w) = local(w)\nf(N - 100)", (50, 50, 1), 1, 12,
                             "evaluates to -50", None),
    # heads blocks
    "head out of range": ("heads { 0..9: causal; *: full }", (4, 4, 8), 1, 9,
                          "head index 9 is out of range: the layer has 8 query heads", None),
    "kv head out of range": ("kv_heads { 0: full; 2..9: causal }", (4, 4, 8), 1, 21,
                             "out of range: the layer has 8 kv heads", None),
    "head without pattern": ("heads { 0: causal }", (4, 4, 2), 1, 1,
                             "head 1 has no pattern", None),
    "overlapping heads": ("heads { 0..3: causal; 2: full }", None, 1, 23,
                          "head 2 is assigned twice", None),
    "overlapping ranges": ("heads { 4..7: full; 0..5: causal; *: causal }", None, 1, 21,
                           "head 4 is assigned twice", None),
    "huge overlapping range": ("heads { 0..100000000: causal; 5..7: full }", None, 1, 31,
                               "head 5 is assigned twice", None),
    "empty head range": ("heads { 3..1: causal }", None, 1, 9, "empty head range 3..1", None),
    "empty heads": ("heads { }", None, 1, 1, "empty heads block", None),
    "star twice": ("heads { *: full; 0: causal; *: causal }", None, 1, 29,
                   "`*` appears twice", None),
    "heads in expression": ("causal & heads { 0: full }", None, 1, 10,
                            "`heads` may only appear at the top", None),
    "heads under ~": ("~heads { 0: full }", None, 1, 2, "may only appear at the top", None),
    "heads in heads": ("heads { 0: heads { 0: full } }", None, 1, 12,
                       "may only appear at the top", None),
    "heads def in expression": ("def h() = heads { 0: full; *: causal }\ncausal & h()", None,
                                2, 10, "`heads { … }` may only appear at the top", "`h`"),
    "heads def as left operand": ("def h() = heads { 0: full; *: causal }\nh - local(4)", None,
                                  2, 1, "may only appear at the top", "heads block"),
    "heads def in heads entry": ("def h() = heads { 0: full; *: causal }\n"
                                 "heads { 0: h(); *: causal }", None, 2, 12,
                                 "may only appear at the top", None),
    "heads def in def": ("def h() = heads { 0: full; *: causal }\n"
                         "def g() = causal & h()\ng()", None, 2, 20,
                         "may only appear at the top", None),
    "bad selector": ("heads { 1.5: causal }", None, 1, 9, "expected a head index or '*'", None),
    "missing colon": ("heads { 0 causal }", None, 1, 11, "expected ':' after the head", None),
    # integer expressions
    "unknown integer name": ("local(W)", None, 1, 7, "unknown name `W` in an integer",
                             "M, N"),
    "misspelt parameter": ("def f(width=4) = local(widht)", None, 1, 24, "unknown name `widht`",
                           "did you mean `width`?"),
    "q outside where": ("local(q)", None, 1, 7, "`q` is only defined inside where", None),
    "k outside where": ("sink(k + 1)", None, 1, 6, "`k` is only defined inside where", None),
    "slash division": ("local(N / 2)", None, 1, 9, "found '/'", "integer division is written `//`"),
    "division by zero": ("local(4 // 0)", None, 1, 12, "division by zero", None),
    "modulo by zero": ("local(N % (2 - 2))", None, 1, 12, "division by zero", None),
    "min one argument": ("local(min(4))", None, 1, 7, "min takes at least 2 arguments, got 1",
                         None),
    "abs two arguments": ("local(abs(1, 2))", None, 1, 7, "abs takes 1 argument, got 2", None),
    "unknown function": ("local(mx(4, N))", None, 1, 7, "unknown function `mx`",
                         "did you mean `max`?"),
    "missing argument": ("local(4, )", None, 1, 10, "expected a number, a name or '('", None),
    # where conditions
    "assignment in where": ("where(q = k)", None, 1, 9, "expected a comparison", "`==`"),
    "slash in where": ("causal & where(q / 2 < k)", None, 1, 18, "found '/'", "`//`"),
    "where without comparison": ("where(k)", None, 1, 8, "expected a comparison", None),
    "unknown name in where": ("where(q < kk)", None, 1, 11, "unknown name `kk`",
                              "did you mean `k`?"),
    "dangling or": ("where(q < k or)", None, 1, 15, "expected a number", None),
    "where division by zero": ("where(q // 0 < k)", None, 1, 12, "division by zero", None),
    "where unclosed": ("where((q < k)", None, 1, 14, "expected ')' to close where(", None),
    # syntax
    "unbalanced open": ("(causal | local(4)", None, 1, 19, "expected ')' to close '('", None),
    "unmatched close": ("causal | local(4))", None, 1, 18, "unmatched ')'", None),
    "missing ) at end": ("local(4", None, 1, 8, "found end of input", None),
    "missing ) before comment": ("local(4   # window\n", None, 1, 8, "found end of input", None),
    "unexpected character": ("local(4) $", None, 1, 10, "unexpected character '$'", None),
    "trailing garbage": ("causal causal", None, 1, 8, "expected an operator", None),
    "trailing semicolon": ("local(4);", None, 1, 9, "expected an operator", None),
    "operator without operand": ("causal &", None, 1, 9, "expected a pattern", None),
    "bad number": ("local(1.2.3)", None, 1, 10, "unexpected character '.'", None),
    "empty input": ("", None, 1, 1, "holds no pattern", None),
    "only comments": ("# nothing here\n", None, 1, 1, "holds no pattern", None),
    "missing def body": ("def f() = \n", None, 1, 10, "expected a pattern", None),
    "missing parameter default": ("def f(w=) = local(w)", None, 1, 9, "expected a number", None),
    # definitions
    "def after expression": ("causal\ndef f() = full", None, 2, 1,
                             "a definition cannot follow the pattern", "before the pattern"),
    "duplicate def": ("def f() = full\ndef f() = causal\nf", None, 2, 1,
                      "`f` is defined twice", None),
    "redefined primitive": ("def local(w) = causal\nlocal(3)", None, 1, 1,
                            "`local` is a primitive and cannot be redefined", None),
    "recursive def": ("def f() = causal | f()\nf()", None, 1, 20, "`f` refers to itself", None),
    "mutually recursive": ("def f() = g()\ndef g() = causal & f()\nf()", None, 2, 20,
                           "(f → g → f)", None),
    "def arity": ("def f(w, s=4) = local(w) | sink(s)\nf()", None, 2, 1,
                  "f takes 1 to 2 arguments, got 0", None),
    "unknown def with did-you-mean": ("def a_shape(s=4) = sink(s)\na_shap()", None, 2, 1,
                                      "unknown pattern `a_shap`", "`a_shape`"),
    # layout: line 3, comments before the fault
    "line 3": ("causal\n  & (sink(4)\n     | loacl(4))", None, 3, 8, "unknown pattern `loacl`",
               "`local`"),
    "after comments": ("# a window\n# of eight keys\nlocal(0)", None, 3, 7,
                       "w = 0 is not a valid window", None),
    "where on line 3": ("# 2D neighbourhood\ncausal &\n where(abs(q // 8 - k // 8) = 1)", None,
                        3, 29, "expected a comparison", "`==`"),
    "tab indentation": ("causal\n\t& loacl(4)", None, 2, 4, "unknown pattern `loacl`",
                        "`local`"),
}


def _raise(source: str, evaluate) -> PatternError:
    with pytest.raises(PatternError) as info:
        pattern = attngen.parse(source)
        if evaluate is not None:
            M, N, heads = evaluate
            pattern.mask(M, N, heads=heads)
    return info.value


def _check_render(err: PatternError, source: str, file: str = "<pattern>") -> None:
    lines = err.render().split("\n")
    assert lines[0].startswith(f"{file}:{err.line}:{err.col}: error: {err.message}")
    src_line = source.split("\n")[err.line - 1]
    assert lines[1] == "  " + src_line
    caret = lines[2]
    assert caret.strip() and set(caret.strip()) == {"^"}
    assert caret.index("^") == 2 + err.col - 1
    if err.hint:
        assert lines[3] == f"hint: {err.hint}"


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_error_location_and_message(case):
    source, evaluate, line, col, message, hint = CASES[case]
    err = _raise(source, evaluate)
    assert (err.line, err.col) == (line, col), err.render()
    assert message in err.message, err.render()
    if hint is None:
        assert err.hint is None or "did you mean" not in err.hint
    else:
        assert err.hint is not None and hint in err.hint, err.render()
    _check_render(err, source)
    assert str(err) == err.render()


def test_enough_cases():
    assert len(CASES) >= 30


def test_caret_underlines_the_whole_token():
    err = _raise("causal & loacl(4)", None)
    assert err.render().split("\n")[2] == "  " + " " * 9 + "^" * 5


def test_caret_spans_head_selector():
    err = _raise("heads { 0..9: causal; *: full }", (4, 4, 8))
    assert err.render().split("\n")[2] == "  " + " " * 8 + "^^^^"


def test_negative_size_points_at_the_call():
    err = _raise("local(N - 100)", (50, 50, 1))
    assert err.render().split("\n")[2] == "  " + "^" * len("local(N - 100)")
    attngen.parse("local(N - 100)").mask(128, 128)  # valid at larger N


def test_caret_keeps_tabs_so_it_lines_up():
    err = _raise("causal\n\t& loacl(4)", None)
    assert err.render().split("\n")[2] == "  \t  ^^^^^"


def test_error_is_value_error_and_attngen_error():
    err = _raise("local(0)", None)
    assert isinstance(err, ValueError) and isinstance(err, attngen.AttnGenError)


def test_heads_alias_at_top_is_allowed():
    p = attngen.parse("def h() = heads { 0: full; *: causal }\ndef g() = h()\ng()")
    assert p.is_mixture


def test_load_names_the_file(tmp_path):
    path = tmp_path / "window.attn"
    source = "# sliding window\ndef win(w=128) = causal & loacl(w)\n"
    path.write_text(source)
    with pytest.raises(PatternError) as info:
        attngen.load(path)
    err = info.value
    assert (err.line, err.col) == (2, 27)
    text = err.render()
    assert text.startswith(f"{path}:2:27: error: unknown pattern `loacl`")
    assert "  def win(w=128) = causal & loacl(w)" in text.split("\n")
    assert "did you mean `local`?" in text
    _check_render(err, source, str(path))


def test_load_evaluation_error_names_the_file(tmp_path):
    path = tmp_path / "span.attn"
    source = "def span() = causal & local(N - 64)\n"
    path.write_text(source)
    pattern = attngen.load(path)
    with pytest.raises(PatternError) as info:
        pattern.mask(32, 32)
    assert info.value.render().startswith(f"{path}:1:23: error: local: parameter w")
    _check_render(info.value, source, str(path))


def test_load_missing_paren_at_end_of_file(tmp_path):
    path = tmp_path / "open.attn"
    path.write_text("def f() = sink(4) | local(16\n\n# end\n")
    with pytest.raises(PatternError) as info:
        attngen.load(path)
    assert (info.value.line, info.value.col) == (1, 29)


# -- fuzz: token soup either parses or fails with a located PatternError ---------------------
TOKENS = [
    "full", "causal", "local", "band", "sink", "columns", "rows", "strided", "fixed", "dilated",
    "power", "radial", "where", "document", "block_topk", "heads", "kv_heads", "def", "and",
    "or", "not", "min", "max", "abs", "q", "k", "N", "M", "w", "f", "loacl",
    "0", "1", "2", "3", "4", "9", "128", "0.5", "1.5",
    "(", ")", "{", "}", ",", ":", ";", "=", "..", "|", "&", "-", "~", "+", "*", "//", "/", "%",
    "<", "<=", ">", ">=", "==", "!=", "!", "#", "$", "\n", " ",
]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(TOKENS), max_size=24),
       st.lists(st.sampled_from([" ", ""]), min_size=24, max_size=24))
def test_token_soup_parses_or_raises_located_error(tokens, seps):
    source = "".join(t + s for t, s in zip(tokens, seps))
    try:
        attngen.parse(source)
    except PatternError as err:
        assert err.line is not None and err.col is not None, err.render()
        assert 1 <= err.line <= source.count("\n") + 1
        assert 1 <= err.col
        err.render()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([
    "causal & {}", "local({})", "heads {{ 0: {}; *: full }}", "where(q < {})",
    "def f(w=4) = {}\nf()", "sink(4) | ({})",
]), st.lists(st.sampled_from(TOKENS), min_size=1, max_size=8))
def test_token_soup_in_context(template, tokens):
    source = template.format(" ".join(tokens))
    try:
        attngen.parse(source)
    except PatternError as err:
        assert err.line is not None and 1 <= err.line and err.col is not None and 1 <= err.col
        err.render()


# -- hardening (issue 16): inputs that used to hang, blow up or raise a raw exception ----------
def test_min_of_q_and_k_is_negative_when_m_exceeds_n():
    # q = i + N − M is negative for the first queries when M > N: q is not nonnegative
    p = attngen.parse("where(min(q, k) < 0)")
    assert str(p) != "~full"
    assert p.mask(2, 1)[0, :, 0].tolist() == [True, False]


def test_huge_period_costs_a_few_residue_classes(monkeypatch):
    from attngen.lower import cost

    calls = []
    shape = cost.class_shape
    monkeypatch.setattr(cost, "class_shape", lambda *a: calls.append(a) or shape(*a))
    plan = attngen.lower("causal & strided(1000000)", 16, 16, block=8)
    assert plan.blocks >= 2 and len(calls) <= 8


@settings(max_examples=60)
@given(st.integers(1, 50), st.integers(1, 50), st.integers(1, 70), st.integers(1, 9))
def test_permutation_cost_equals_the_walk_over_residues(M, N, period, bm):
    from attngen.ir import simplify as S
    from attngen.lower.atoms import atoms_of, numeric
    from attngen.lower.cost import permutation_cost, ranges_cost
    from attngen.lower.grid import Grid
    from attngen.lower.permute import class_shape

    node, g = S.prim("causal"), Grid(M, N, bm, bm)
    blocks = masked = 0
    for r in range(period):
        m, n = class_shape(M, N, period, r)
        if m == 0:
            continue
        if n == 0:
            blocks += -(-m // bm)
            continue
        b, p = ranges_cost(atoms_of(node, numeric(m, n)), Grid(m, n, bm, bm))
        blocks, masked = blocks + b + -(-m // bm), masked + p
    assert permutation_cost(node, period, True, g) == (blocks, masked)


def test_doubling_definitions_expand_once():
    lines = ["def a0() = local(4)"] + [f"def a{i}() = a{i - 1}() | a{i - 1}()"
                                       for i in range(1, 60)]
    assert str(attngen.parse("\n".join(lines))) == "local(4)"


def test_exponential_definitions_are_refused_by_name():
    lines = ["def a0(w) = local(w)"] + [f"def a{i}(w) = a{i - 1}(2 * w) | a{i - 1}(2 * w + 1)"
                                        for i in range(1, 30)]
    with pytest.raises(PatternError, match=r"`a\d+` expands to more than \d+ terms"):
        attngen.parse("\n".join(lines) + "\na29(1)")


@pytest.mark.parametrize("argument, first", [("min(w, N) + max(w, M)", "4"),
                                             ("w // 2 + w // 3 + N", "N")])
def test_arguments_that_double_per_level_are_refused(argument, first):
    lines = ["def a0(w) = local(w)"] + [f"def a{i}(w) = a{i - 1}({argument})"
                                        for i in range(1, 41)]
    with pytest.raises(PatternError, match=r"a\d+: argument w grew beyond \d+ terms"):
        attngen.parse("\n".join(lines) + f"\na40({first})")


@pytest.mark.parametrize("call, limit", [
    (lambda: attngen.layout("causal", 100_000, block=1), "ATTNGEN_MAX_BLOCKS"),
    (lambda: attngen.layout("causal", 1 << 31, block=128), "ATTNGEN_MAX_LENGTH"),
    (lambda: attngen.lower("causal", 1 << 31), "ATTNGEN_MAX_LENGTH"),
    (lambda: attngen.parse("local(4)").mask(64, heads=100_000_000), "ATTNGEN_MAX_HEADS"),
    (lambda: attngen.parse("local(4)").mask(1 << 16), "ATTNGEN_MAX_MASK_ELEMENTS"),
    (lambda: attngen.layout("local(4)", 64, heads=100_000_000), "ATTNGEN_MAX_HEADS"),
    (lambda: attngen.layout("causal", 64, block=99_999_999_999), "sides at most 65536"),
    (lambda: attngen.lower("causal", 64, block=(8192, 8192)), "area at most 16777216"),
])
def test_sizes_beyond_the_limits_fail_before_allocating(call, limit):
    with pytest.raises(ValueError, match=f"(limit of .*{limit}|{limit})"):
        call()


def test_dense_block_classes_are_bounded(monkeypatch):
    lay = attngen.layout("causal", 64 * 64, block=64)
    monkeypatch.setenv("ATTNGEN_MAX_MASK_ELEMENTS", str(64 * 64 - 1))
    with pytest.raises(ValueError, match="ATTNGEN_MAX_MASK_ELEMENTS"):
        lay.pattern_classes(0)


def test_exact_density_is_refused_before_a_huge_count():
    lay = attngen.layout("causal", 1 << 22, block=4096)  # 1024 partial blocks of 2^24
    assert lay.block_counts() == (1024, 1024 * 1023 // 2)
    with pytest.raises(ValueError, match="would evaluate 17179869184 elements"):
        lay.density()


def test_limits_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATTNGEN_MAX_BLOCKS", str(300 * 300 - 1))
    with pytest.raises(ValueError, match="ATTNGEN_MAX_BLOCKS"):
        attngen.layout("causal", 300, block=1)
    monkeypatch.setenv("ATTNGEN_MAX_BLOCKS", str(300 * 300))
    assert attngen.layout("causal", 300, block=1).block_counts() == (0, 300 * 301 // 2)


@pytest.mark.parametrize("value, message", [("abc", "must be an integer"),
                                            ("0", "must be at least 1")])
def test_bad_limit_variables_are_named(monkeypatch, value, message):
    monkeypatch.setenv("ATTNGEN_MAX_LENGTH", value)
    with pytest.raises(ValueError, match=f"ATTNGEN_MAX_LENGTH {message}"):
        attngen.layout("causal", 8)


def test_heads_builder_does_not_materialise_ranges():
    p = attngen.heads({range(0, 10**12): attngen.local(4), "*": attngen.causal})
    with pytest.raises(PatternError, match="head index 999999999999 is out of range"):
        p.head_nodes(2)  # once the heads are known, a larger range is an error
    with pytest.raises(PatternError, match="head 5 is assigned twice"):
        attngen.heads({range(0, 10**12): attngen.local(4), (5,): attngen.causal})


def test_deep_nesting_is_refused_at_the_offending_token():
    err = _raise("(" * 141 + "causal" + ")" * 141, None)
    assert (err.line, err.col) == (1, 102) and "deeper than 100" in err.message
    err = _raise("where(" + "(" * 150 + "q < k" + ")" * 150 + ")", None)
    assert "deeper than 100" in err.message
    err = _raise("local(" + "-" * 200 + "4)", None)
    assert "deeper than 100" in err.message
    assert attngen.parse("(" * 90 + "causal" + ")" * 90) == attngen.causal


def test_long_flat_chains_need_no_recursion(monkeypatch):
    monkeypatch.setenv("ATTNGEN_MAX_PATTERN_CHARS", "100000")
    union = " | ".join(f"columns({i})" for i in range(3000))
    assert len(attngen.parse(union).node.children) == 3000
    conj = " and ".join(f"q - k != {i}" for i in range(1000))
    mask = attngen.parse(f"where({conj})").mask(4, 4)[0]
    assert torch.equal(mask, ~attngen.causal.mask(4)[0])  # only q - k < 0 is left
    total = " + ".join(["1"] * 3000)
    assert str(attngen.parse(f"local({total})")) == "local(3000)"


def test_deep_definition_chains_are_refused():
    lines = ["def d0() = causal"] + [f"def d{i}() = d{i - 1}() & ~sink({i})"
                                     for i in range(1, 150)]
    with pytest.raises(PatternError, match="definitions nest deeper than 100"):
        attngen.parse("\n".join(lines))


def test_pattern_text_size_is_limited(tmp_path):
    with pytest.raises(PatternError, match="ATTNGEN_MAX_PATTERN_CHARS"):
        attngen.parse("causal" + " " * 2_000_000)
    path = tmp_path / "big.attn"
    path.write_text("# " + "x" * 3_000_000 + "\ncausal\n")
    with pytest.raises(PatternError, match="ATTNGEN_MAX_PATTERN_CHARS"):
        attngen.load(path)


@pytest.mark.parametrize("source, evaluate", [
    ("where(q // (q - k) == 0)", (16, 16, 1)),
    ("where(q % (M - N) == 0)", (16, 16, 1)),
    ("where((q - k) % (k - 3) == 0)", (8, 8, 1)),
])
def test_division_by_zero_at_evaluation_is_a_pattern_error(source, evaluate):
    p = attngen.parse(source)
    with pytest.raises(PatternError, match="division by zero"):
        p.mask(evaluate[0], evaluate[1])
    with pytest.raises(PatternError, match="division by zero"):
        attngen.layout(p, evaluate[0], evaluate[1], block=4)


@pytest.mark.parametrize("source, col, message", [
    ("local(" + "1" + "0" * 100 + ")", 7, "is too large"),
    ("where(q - k < 1000000000000000000000000000000)", 15, "is too large"),
    ("heads { 99999999999999999999: local(4); *: causal }", 9, "is too large"),
    ("local(" + "9" * 5000 + ")", 7, "(5000 digits) is too large"),
    ("sink(4294967297)", 6, "is too large"),
    ("local(65536 * 65536)", 7, "local: parameter w = 4294967296 is too large"),
    ("where(q * 100000 * 100000 > k)", 7, "the constant 10000000000 is too large"),
    ("local(0.0000000000000000000000001)", 7, "decimals"),
    ("local(N * N)", 7, "products of two variables are not supported"),
    ("where(q * q < k)", 7, "products of two variables are not supported"),
    ("where((q // 2) * (k // 2) < 4)", 7, "products of two variables are not supported"),
    ("local(\u0663)", 7, "unexpected character"),
    ("sink(\uff14)", 6, "unexpected character"),
])
def test_bad_constants_and_products_are_located_pattern_errors(source, col, message):
    err = _raise(source, None)
    assert (err.line, err.col) == (1, col), err.render()
    assert message in err.message, err.render()


def test_rational_comparison_is_cleared_of_denominators():
    p = attngen.parse("where(q // M < 0.5*k)")
    assert str(p) == "where(2*(q // M) < k)"
    assert attngen.parse(str(p)) == p
    q = torch.arange(5)[:, None] + 2
    k = torch.arange(7)[None, :]
    assert torch.equal(p.mask(5, 7)[0], (q // 5) < 0.5 * k)
    assert str(attngen.parse("where(-2*k + q < 5)")) == "where(-2*k + q < 5)"


def test_rational_comparison_compiles_and_matches_the_reference(interpreter):
    from attngen.reference import attention as reference

    p = attngen.parse("where(q // M < 0.5*k) & causal")
    kern = attngen.compile(p, head_dim=16, dtype=torch.float32, heads=1, device="cpu")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 24, 16, generator=g) for _ in range(3))
    assert torch.allclose(kern(q, k, v), reference(q, k, v, p), atol=1e-4)


@pytest.mark.parametrize("source", ["band(2147483647, 2147483647)", "local(2147483647)",
                                    "dilated(65536, 65536)"])
def test_constants_that_overflow_int32_in_kernels_are_refused(source):
    # these ran and gave wrong results (q + r wrapped around in int32)
    with pytest.raises(PatternError, match="too large"):
        attngen.parse(source)


@pytest.mark.parametrize("source", ["band(1073741824, 1073741824)", "local(1073741824)",
                                    "dilated(32768, 32768) | sink(1073741824)"])
def test_largest_constants_run_right(interpreter, source):
    from attngen.reference import attention as reference

    p = attngen.parse(source)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 20, 16, generator=g) for _ in range(3))
    assert torch.allclose(attngen.attention(q, k, v, p), reference(q, k, v, p), atol=1e-4)


def test_load_of_a_missing_file_is_a_pattern_error(tmp_path):
    with pytest.raises(PatternError, match="no pattern file"):
        attngen.load(tmp_path / "missing.attn")
    with pytest.raises(PatternError, match="no bundled pattern"):
        attngen.load("nosuch")
    with pytest.raises(PatternError, match="is not a file"):
        attngen.load(tmp_path)
    (tmp_path / "bad.attn").write_bytes(b"causal \xff\xfe")
    with pytest.raises(PatternError, match="not UTF-8"):
        attngen.load(tmp_path / "bad.attn")


# -- plan.json (issue 16, deliverable 4) --------------------------------------------------------
SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@pytest.mark.parametrize("plan, message", [
    ({"model": "m"}, "has no 'layers'"),
    ([{"layer": 0, "pattern": "causal"}], "a plan is a JSON object"),
    ({"layers": {"0": "causal"}}, "'layers' must be a list"),
    ({"layers": [{"layer": 1.9, "pattern": "causal"}]}, "'layer' must be an integer, got 1.9"),
    ({"layers": [{"layer": True, "pattern": "causal"}]}, "'layer' must be an integer, got true"),
    ({"layers": [{"layer": None, "pattern": "causal"}]}, "'layer' must be an integer, got null"),
    ({"layers": [{"layer": "0", "pattern": "causal"}]}, "'layer' must be an integer"),
    ({"layers": [{"layer": -1, "pattern": "causal"}]}, "'layer' must be at least 0"),
    ({"layers": [{"layer": 0, "pattern": 42}]}, "'pattern' must be a string, got 42"),
    ({"layers": [{"layer": 0, "pattern": None}]}, "'pattern' must be a string, got null"),
    ({"layers": [{"layer": 0}]}, "needs 'layer' and 'pattern'"),
    ({"layers": ["causal"]}, "needs 'layer' and 'pattern'"),
    ({"layers": [{"layer": 0, "pattern": "causal", "heads": 3}]}, "'heads' must be a list"),
    ({"model": 7, "layers": []}, "'model' must be a string"),
    ({"version": "1", "layers": []}, "'version' must be an integer"),
])
def test_plan_schema_is_checked(plan, message):
    from attngen.integrations.plan import read_plan

    with pytest.raises(ValueError, match=re.escape(message)):
        read_plan(plan)


def test_empty_plan(tmp_path):
    from attngen.integrations.plan import read_plan

    assert read_plan({}).layers == {} and read_plan({"layers": []}).layers == {}
    (tmp_path / "plan.json").write_text("{}")  # a file must say what it plans
    with pytest.raises(ValueError, match="has no 'layers'"):
        read_plan(tmp_path / "plan.json")


def test_plan_pattern_errors_name_the_layer(tmp_path):
    from attngen.integrations.plan import read_plan

    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"layers": [{"layer": 0, "pattern": "causal"},
                                           {"layer": 3, "pattern": "causal & loacl(4)"}]}))
    with pytest.raises(PatternError) as info:
        read_plan(path)
    assert info.value.render().startswith(f"{path} layer 3:1:10: error: unknown pattern")
    deep = {"layers": [{"layer": 5, "pattern": "(" * 300 + "causal" + ")" * 300}]}
    with pytest.raises(PatternError, match="deeper than 100") as info:
        read_plan(deep)
    assert info.value.span.file == "plan layer 5"


def test_plan_files_that_cannot_be_read(tmp_path):
    from attngen.integrations.plan import read_plan

    with pytest.raises(FileNotFoundError, match="no plan file"):
        read_plan(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_plan(tmp_path / "bad.json")


@pytest.mark.parametrize("plan, config, message", [
    ({"model": "Qwen2.5-0.5B", "layers": []}, SMOLLM2, "made for model `Qwen2.5-0.5B`"),
    ({"num_heads": 8, "layers": []}, SMOLLM2, "the plan is for 8 heads, the model has 9"),
    ({"num_layers": 24, "layers": []}, SMOLLM2, "the plan is for 24 layers"),
    ({"layers": [{"layer": 30, "pattern": "causal"}]}, SMOLLM2, "names layers [30]"),
    ({"layers": [{"layer": 2, "pattern": "heads { 0..11: local(4); *: causal }"}]}, SMOLLM2,
     "plan layer 2: head index 11 is out of range"),
    ({"layers": [{"layer": 2, "pattern": "causal", "heads": [{"head": 0}] * 12}]}, SMOLLM2,
     "plan layer 2 lists 12 heads, the model has 9"),
])
def test_plan_for_another_model_is_refused(plan, config, message):
    from attngen.integrations.plan import check_plan

    with pytest.raises(ValueError, match=re.escape(message)):
        check_plan(plan, config)


ROOT = Path(__file__).resolve().parents[1]
COMMITTED_PLANS = sorted(p for p in ROOT.glob("docs/results/**/plan.json")
                         if "shards" not in p.parts)  # shards/plan.json: search work lists


@pytest.mark.parametrize("path", COMMITTED_PLANS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_plans_validate(path):
    from attngen.integrations.plan import check_plan, read_plan

    plan = read_plan(path)
    assert plan.layers and check_plan(plan, SMOLLM2) is plan
    gguf_name = {**SMOLLM2, "name_or_path": "/cache/models/SmolLM2-135M-Instruct.Q4_1"}
    check_plan(plan, gguf_name)


def test_committed_plans_exist():
    assert len(COMMITTED_PLANS) >= 3
