"""Exact classes of blocks that interval bounds could not decide, by bisection.

Each undecided block is split into four sub-boxes; bounds are taken again on each, and a
block is settled as soon as one sub-box is proved all-allowed and another all-forbidden
(PARTIAL), or when every sub-box agrees. Boxes of at most SMALL × SMALL elements are
evaluated exactly. Work concentrates on the edges of the allowed set, so a window or a
2D neighbourhood costs O(edge), not O(area).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attngen.lower.runs import EMPTY, FULL, PARTIAL

SMALL = 8
CHUNK = 1 << 21  # elements evaluated at once


def refine(bounds_of: Callable, evaluate: Callable, qa, qb, ka, kb) -> np.ndarray:
    """Classes of boxes [qa, qb] × [ka, kb] (inclusive, absolute positions).

    bounds_of(qa, qb, ka, kb) → (must, may) per box; evaluate(rows, cols) → bool array."""
    n = len(qa)
    has_true = np.zeros(n, dtype=bool)
    has_false = np.zeros(n, dtype=bool)
    owner = np.arange(n)
    boxes = [np.asarray(x, dtype=np.int64) for x in (qa, qb, ka, kb)]
    while len(owner):
        bqa, bqb, bka, bkb = boxes
        must, may = bounds_of(bqa, bqb, bka, bkb)
        must = np.broadcast_to(must, owner.shape)
        may = np.broadcast_to(may, owner.shape)
        np.logical_or.at(has_true, owner[must], True)
        np.logical_or.at(has_false, owner[~may], True)
        open_ = may & ~must & ~(has_true[owner] & has_false[owner])
        small = open_ & ((bqb - bqa + 1) <= SMALL) & ((bkb - bka + 1) <= SMALL)
        if small.any():
            t, f = _elementwise(evaluate, bqa[small], bqb[small], bka[small], bkb[small])
            np.logical_or.at(has_true, owner[small][t], True)
            np.logical_or.at(has_false, owner[small][f], True)
        split = open_ & ~small
        owner, boxes = _split(owner[split], *(b[split] for b in boxes))
        keep = ~(has_true[owner] & has_false[owner])
        owner, boxes = owner[keep], [b[keep] for b in boxes]
    return np.where(has_true & has_false, PARTIAL, np.where(has_true, FULL, EMPTY)).astype(
        np.uint8)


def _split(owner, qa, qb, ka, kb):
    """Halve each box along both axes (an axis of length 1 is not split)."""
    qm, km = (qa + qb) // 2, (ka + kb) // 2
    parts = []
    for q0, q1 in ((qa, qm), (qm + 1, qb)):
        for k0, k1 in ((ka, km), (km + 1, kb)):
            ok = (q0 <= q1) & (k0 <= k1)
            parts.append((owner[ok], q0[ok] if np.ndim(q0) else q0, q1[ok], k0[ok], k1[ok]))
    owner = np.concatenate([p[0] for p in parts])
    return owner, [np.concatenate([p[i] for p in parts]) for i in range(1, 5)]


def _elementwise(evaluate, qa, qb, ka, kb):
    """(any allowed, any forbidden) per box of at most SMALL × SMALL elements."""
    t_all, f_all = [], []
    step = max(1, CHUNK // (SMALL * SMALL))
    di = np.arange(SMALL)[None, :, None]
    dj = np.arange(SMALL)[None, None, :]
    for s in range(0, len(qa), step):
        a, b, c, d = (x[s:s + step, None, None] for x in (qa, qb, ka, kb))
        rows, cols = a + di, c + dj
        valid = (rows <= b) & (cols <= d)
        allowed = evaluate(np.minimum(rows, b), np.minimum(cols, d))
        t_all.append((allowed & valid).any(axis=(1, 2)))
        f_all.append((~allowed & valid).any(axis=(1, 2)))
    return np.concatenate(t_all), np.concatenate(f_all)
