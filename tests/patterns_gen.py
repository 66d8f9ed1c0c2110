"""Random patterns as DSL text, each with an independent NumPy evaluator.

A generated pattern is a tree of tuples; `text(tree)` writes it in the pattern language
and `oracle(tree, q, k, N, M)` evaluates it straight from DESIGN §3's definitions, without
attngen, so the same cases test the parser, the IR, its simplifier and the lowering.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

ints = st.integers


def _bitlen(x):
    x = np.abs(np.asarray(x, dtype=np.int64))
    out = np.zeros_like(x)
    for i in range(63):
        out = np.where(x >= (1 << i), i + 1, out)
    return out


PRIMS = {
    "full": (st.just(()), lambda q, k: np.ones(np.broadcast(q, k).shape, bool)),
    "causal": (st.just(()), lambda q, k: k <= q),
    "local": (st.tuples(ints(1, 40)), lambda q, k, w: (q - w < k) & (k <= q)),
    "band": (st.tuples(ints(0, 20), ints(0, 20)), lambda q, k, l, r: (q - l <= k) & (k <= q + r)),
    "sink": (st.tuples(ints(1, 30)), lambda q, k, n: k < n),
    "columns": (st.lists(ints(0, 80), min_size=1, max_size=3).map(tuple),
                lambda q, k, *c: np.isin(k, c) & np.ones_like(q, bool)),
    "rows": (st.lists(ints(0, 80), min_size=1, max_size=3).map(tuple),
             lambda q, k, *r: np.isin(q, r) & np.ones_like(k, bool)),
    "strided": (st.tuples(ints(1, 9)), lambda q, k, s: (q - k) % s == 0),
    "fixed": (ints(1, 16).flatmap(lambda l: st.tuples(st.just(l), ints(0, l))),
              lambda q, k, l, c: (k // l == q // l) | (k % l >= l - c)),
    "dilated": (st.tuples(ints(1, 8), ints(1, 5)),
                lambda q, k, w, d: (q - k >= 0) & (q - k < w * d) & ((q - k) % d == 0)),
    "chunked": (st.tuples(ints(1, 24)), lambda q, k, c: q // c == k // c),
    "power": (st.tuples(ints(1, 8)),
              lambda q, k, g: _is_pow2_or_zero(np.abs(q // g - k // g))),
    "radial": (st.tuples(ints(1, 12), ints(1, 16), st.sampled_from(["1", "0.5", "2"])),
               lambda q, k, f, b, decay: _radial(q, k, f, b, float(decay))),
}


def _is_pow2_or_zero(t):
    return (t & (t - 1)) == 0


def _radial(q, k, f, b, decay):
    t = np.abs(q // f - k // f)
    s = 2.0 ** (_bitlen(f) - _bitlen(t))
    width = np.where(t <= 1, f, np.maximum(b, s * decay))
    band = np.abs(q % f - k % f) <= width
    split = np.floor(b / s).astype(np.int64)
    keep = (s >= b) | (t % np.maximum(split, 1) == 0)
    return band & keep


# where(...) conditions: a small grammar of comparisons over q and k.
_terms = st.sampled_from([
    ("q - k", lambda q, k: q - k), ("k - q", lambda q, k: k - q),
    ("abs(q - k)", lambda q, k: np.abs(q - k)), ("q // 4 - k // 4", lambda q, k: q // 4 - k // 4),
    ("(q - k) % 5", lambda q, k: (q - k) % 5), ("k % 7", lambda q, k: k % 7),
    ("q % 8 - k % 8", lambda q, k: q % 8 - k % 8), ("min(q, k)", lambda q, k: np.minimum(q, k)),
    ("max(q, 3 * k)", lambda q, k: np.maximum(q, 3 * k)), ("q + k", lambda q, k: q + k),
])
_cmps = st.sampled_from([("<", np.less), ("<=", np.less_equal), ("==", np.equal),
                         ("!=", np.not_equal), (">", np.greater), (">=", np.greater_equal)])


@st.composite
def comparisons(draw):
    (tt, tf), (ct, cf), c = draw(_terms), draw(_cmps), draw(ints(-3, 30))
    return (f"{tt} {ct} {c}", lambda q, k: cf(tf(q, k), c))


@st.composite
def conditions(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        return draw(comparisons())
    kind = draw(st.sampled_from(["and", "or", "not"]))
    if kind == "not":
        t, f = draw(conditions(depth=depth - 1))
        return (f"not ({t})", lambda q, k: ~f(q, k))
    (ta, fa), (tb, fb) = draw(conditions(depth=depth - 1)), draw(conditions(depth=depth - 1))
    op = np.logical_and if kind == "and" else np.logical_or
    return (f"({ta}) {kind} ({tb})", lambda q, k: op(fa(q, k), fb(q, k)))


@st.composite
def leaves(draw):
    if draw(ints(0, 9)) == 0:
        text, fn = draw(conditions())
        return ("where", text, fn)
    name = draw(st.sampled_from(sorted(PRIMS)))
    return ("prim", name, draw(PRIMS[name][0]))


def _extend(children):
    return st.one_of(
        st.tuples(st.sampled_from(["|", "&", "-"]), children, children),
        st.tuples(st.just("~"), children),
    )


trees = st.recursive(leaves(), _extend, max_leaves=6)


def text(tree) -> str:
    kind = tree[0]
    if kind == "prim":
        _, name, params = tree
        return name if not params else f"{name}({', '.join(str(p) for p in params)})"
    if kind == "where":
        return f"where({tree[1]})"
    if kind == "~":
        return f"~({text(tree[1])})"
    return f"({text(tree[1])}) {kind} ({text(tree[2])})"


def oracle(tree, q, k) -> np.ndarray:
    kind = tree[0]
    if kind == "prim":
        _, name, params = tree
        return np.broadcast_to(PRIMS[name][1](q, k, *params), np.broadcast(q, k).shape)
    if kind == "where":
        return np.broadcast_to(tree[2](q, k), np.broadcast(q, k).shape)
    if kind == "~":
        return ~oracle(tree[1], q, k)
    a, b = oracle(tree[1], q, k), oracle(tree[2], q, k)
    return {"|": a | b, "&": a & b, "-": a & ~b}[kind]


def oracle_mask(tree, M: int, N: int) -> np.ndarray:
    q = np.arange(M, dtype=np.int64)[:, None] + (N - M)
    k = np.arange(N, dtype=np.int64)[None, :]
    return oracle(tree, q, k)
