"""`import attngen` is light (issue 18, first call): its public names load on first use."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import attngen

HEAVY = ("torch", "sympy", "networkx", "jinja2", "triton", "numpy")


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def test_import_attngen_pulls_no_heavy_module():
    loaded = _modules_after("import attngen; attngen.__version__")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    # the first use imports what it needs
    assert {"sympy", "torch"} <= _modules_after("import attngen; attngen.parse('causal')")


def test_density_loads_the_layout_stage_on_first_use():
    # Pattern.density counts from lower's layout, which registers itself when it loads
    for code in ("import attngen; p = attngen.parse('local(8)')",
                 "from attngen.dsl import parse; p = parse('local(8)')"):
        out = subprocess.run([sys.executable, "-c", f"{code}; print(p.density(64, 64))"],
                             capture_output=True, text=True, check=True).stdout
        assert abs(float(out) - (8 * 64 - 28) / (64 * 65 / 2)) < 1e-12, code


def test_every_public_name_is_its_defining_module_s_object():
    for name, module in attngen._EXPORTS.items():
        assert getattr(attngen, name) is getattr(importlib.import_module(module), name), name
    assert sorted(attngen.__all__) == sorted(attngen._EXPORTS) and "lower" in dir(attngen)


def test_a_subpackage_import_leaves_the_function_of_its_name():
    import attngen.lower.grid  # sets attngen.lower to the subpackage, normally

    assert callable(attngen.lower) and attngen.lower.__name__ == "lower"
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(attngen, "no_such_name")  # noqa: B009
