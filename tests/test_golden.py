"""Golden files of rendered kernels: a template or lowering change shows up in review.
Regenerate with UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py."""
import os
from pathlib import Path

import pytest

import attngen
from attngen.codegen import render
from attngen.lower.kernel_plan import KernelSpec

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "a_shape": ("causal & (sink(128) | local(4096))", 4),
    "mixture_table": ("heads { 0, 1: causal & (sink(4) | local(64)); *: causal & strided(8) }", 4),
    "dynamic": ("heads { 0: sink(64) | vertical_slash(1000, 6096); *: block_topk(8, 64) }", 2),
}


# decode renders only plans whose parts are all ranges (so no dynamic pattern)
KINDS = [(name, kind) for name in sorted(CASES) for kind in ("forward", "backward")
         ] + [("a_shape", "decode")]


@pytest.mark.parametrize("name, kind", KINDS)
def test_rendered_source_matches_golden(name, kind):
    text, heads = CASES[name]
    spec = KernelSpec.build(attngen.parse(text), heads)
    if kind == "backward":
        spec = spec.complete(transposed=True)
    source = render(spec, key="KEY", version="VERSION", kind=kind)
    path = GOLDEN / (f"{name}.py" if kind == "forward" else f"{name}_{kind}.py")
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(source)
    assert source == path.read_text(), f"{path} is stale: rerun with UPDATE_GOLDEN=1 and review"
    compile(source, str(path), "exec")  # the generated module is valid Python
