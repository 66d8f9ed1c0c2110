"""Malformed patterns: every one raises PatternError at the right line and column, with a
clear message, a rendered source line and a caret under the fault (DESIGN §3, Errors)."""
from __future__ import annotations

import pytest
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
