"""The candidate patterns a head may get: parameter grids over the bundled library.

    for c in candidates(): print(c.family, c.pattern)

Every candidate is a library definition called with grid parameters, so plan.json holds
the same canonical text `attngen show` prints. Static candidates are costed exactly from
their layout (`Pattern.density`); dynamic ones (vertical_slash, block_topk) by the keys
their estimate actually picked on the calibration data.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from attngen import library
from attngen.dsl import load_text
from attngen.ir.pattern import Pattern


@dataclass(frozen=True)
class Candidate:
    family: str  # dense, a_shape, tri_shape, local, moa, vertical_slash, block_topk, …
    pattern: Pattern

    @property
    def text(self) -> str:
        return str(self.pattern)

    @property
    def dynamic(self) -> bool:
        return self.pattern.is_dynamic


def library_call(stem: str, call: str) -> Pattern:
    """`call` (e.g. "a_shape(64, 256)") evaluated against the bundled file `stem`.attn."""
    path = library.files()[stem]
    return load_text(path.read_text() + "\n" + call, file=str(path))


# (family, library file, calls): the grids, sized for 1K-8K-token contexts. tri_shape is
# A-shape whose last 64 query rows (the question, and every decoding step) see all keys
# (MInference's Tri-shape).
GRID = [
    ("dense", "duo", ["duo_retrieval()"]),
    ("a_shape", "streaming", [f"a_shape(64, {w})" for w in (64, 128, 256, 512, 1024, 1536)]),
    ("tri_shape", "streaming", [f"tri_shape(64, {w}, 64)" for w in (128, 256, 512, 1024)]),
    ("local", "sparse_transformer", [f"strided_local({w})" for w in (256, 1024)]),
    ("moa", "moa", [f"moa({a}, {b}, 0)" for a, b in
                    ((0, 0.125), (0, 0.25), (0, 0.5), (0, 0.75), (256, 0.125), (256, 0.25))]),
    ("vertical_slash", "minference",
     [f"vertical_and_slash({v}, {s})" for v, s in ((32, 128), (64, 256), (128, 512),
                                                   (128, 1024))]),
    ("block_topk", "minference", [f"block_sparse({t}, 64)" for t in (4, 8, 16)]),
    ("strided", "sparse_transformer", [f"strided_pattern({n})" for n in (64, 128)]),
]


@functools.cache
def candidates(families: tuple[str, ...] | None = None) -> tuple[Candidate, ...]:
    """The candidate grid (optionally only some families), deduplicated by canonical text."""
    found: dict[str, Candidate] = {}
    for family, stem, calls in GRID:
        if families is not None and family not in families:
            continue
        for call in calls:
            p = library_call(stem, call)
            found.setdefault(str(p), Candidate(family, p))
    return tuple(found.values())


FAMILIES = tuple(family for family, _, _ in GRID)
