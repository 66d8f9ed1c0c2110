"""Golden files of rendered kernels: a template or lowering change shows up in review.
Regenerate with UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py."""
import os
from pathlib import Path

import pytest

import attngen
from attngen.codegen import KernelSpec, render

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "a_shape": ("causal & (sink(128) | local(4096))", 4),
    "mixture_table": ("heads { 0, 1: causal & (sink(4) | local(64)); *: causal & strided(8) }", 4),
}


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_source_matches_golden(name, backward):
    text, heads = CASES[name]
    source = render(KernelSpec.build(attngen.parse(text), heads), key="KEY", version="VERSION",
                    backward=backward)
    path = GOLDEN / (f"{name}_backward.py" if backward else f"{name}.py")
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(source)
    assert source == path.read_text(), f"{path} is stale: rerun with UPDATE_GOLDEN=1 and review"
    compile(source, str(path), "exec")  # the generated module is valid Python
