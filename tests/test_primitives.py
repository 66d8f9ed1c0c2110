"""A primitive's boxes (ir/primitives.py) against its predicate, by brute force: `atoms`
are exactly the primitive, `hull` holds it; and the builders are the registry's."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import attngen
from attngen.ir.primitives import PRIMITIVES

M, N = 23, 19  # M > N: some queries precede every key (q < 0)


def _in_boxes(boxes: list[dict]) -> np.ndarray:
    q, k = np.arange(M)[:, None] + N - M, np.arange(N)[None, :]  # queries end with the keys
    values = {"d": q - k, "k": k, "q": q}
    inside = np.zeros((M, N), dtype=bool)
    for box in boxes:
        cell = np.ones((M, N), dtype=bool)
        for bound, limit in box.items():
            v = values[bound[0]]
            cell &= (v >= int(limit)) if bound.endswith("lo") else (v <= int(limit))
        inside |= cell
    return inside


def _params(name: str, draw) -> list[int]:
    spec = PRIMITIVES[name]
    count = draw(st.integers(1, 4)) if spec.variadic else len(spec.params)
    names = spec.params * count if spec.variadic else spec.params
    return [draw(st.integers(spec.minimum.get(p, 0), 9)) for p in names]


BOXED = sorted(n for n, s in PRIMITIVES.items() if s.atoms is not None or s.hull is not None)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(BOXED), st.data())
def test_atoms_are_the_primitive_and_the_hull_holds_it(name, data):
    spec = PRIMITIVES[name]
    params = _params(name, data.draw)
    text = f"{name}({', '.join(map(str, params))})" if spec.params else name
    allowed = attngen.parse(text).mask(M, N)[0].numpy()
    boxes = spec.boxes(*params)
    if boxes is not None:
        assert np.array_equal(_in_boxes(boxes), allowed), text
    hull = spec.hull_of(*params)
    if hull is not None:
        assert not (allowed & ~_in_boxes([hull])).any(), text


def test_every_static_primitive_with_closed_form_ranges_has_atoms():
    # the block lowering's ranges strategy reads them; a new affine primitive must add them
    assert {n for n, s in PRIMITIVES.items() if s.atoms is not None} == {
        "full", "causal", "local", "band", "sink", "rows", "columns"}


def test_builders_come_from_the_registry():
    for name in PRIMITIVES:
        builder = getattr(attngen, name)
        made = builder if isinstance(builder, attngen.Pattern) else builder(
            *[PRIMITIVES[name].minimum.get(p, 1) or 1 for p in PRIMITIVES[name].params])
        assert isinstance(made, attngen.Pattern), name
    assert set(PRIMITIVES) <= set(attngen.__all__)
