"""The wheel ships the package, the pattern library and the templates (DESIGN §1).

Build the wheel from a copy of the sources (so the checkout gets no build/ or egg-info),
install it into a fresh venv that sees the site-packages of this interpreter (torch and the
other dependencies, no network), and use it from a directory outside the repository.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "attngen", "patterns", "templates"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")

CHECK = textwrap.dedent("""
    import importlib.resources, json, sys
    import attngen
    from attngen import library
    from attngen.bench import model as bench_model
    p = attngen.load("streaming")
    lay = attngen.layout(p, 4096, 4096, block=128)
    plan = attngen.lower(p, 4096, 4096, block=128)
    templates = importlib.resources.files("attngen.templates")
    print(json.dumps({
        "file": attngen.__file__,
        "patterns": sorted(library.files()),
        "pattern_dir": str(library.files()["streaming"].parent),
        "streaming": str(p),
        "density": lay.density(),
        "strategy": plan.groups[0].terms[0].strategy,
        "templates": templates.is_dir(),
        "plan": str(bench_model.plan_file(None)),
    }))
""")


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.mark.slow
def test_wheel_installs_and_ships_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=IGNORE)
        else:
            shutil.copy2(path, src / name)

    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
          str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("attngen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    stems = sorted(p.stem for p in (ROOT / "patterns").glob("*.attn"))
    subpackages = sorted(str(p.parent.relative_to(ROOT).as_posix())
                         for p in (ROOT / "attngen").glob("*/__init__.py"))
    for required in ["attngen/__init__.py", "attngen/cli.py", "attngen/__main__.py",
                     "attngen/templates/__init__.py", "attngen/patterns/__init__.py",
                     *(f"attngen/patterns/{s}.attn" for s in stems),
                     *(f"attngen/patterns/plans/{p.name}"
                       for p in (ROOT / "patterns" / "plans").glob("*.json")),
                     *(f"{sub}/__init__.py" for sub in subpackages)]:
        assert required in names, (f"{required} is missing from {wheel.name}: a new package "
                                   "must be listed in pyproject.toml [tool.setuptools] packages")
    templates = sorted(p.name for p in (ROOT / "templates").glob("*.j2"))
    for name in templates:
        assert f"attngen/templates/{name}" in names, f"template {name} is not in the wheel"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         cwd=tmp_path)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # --system-site-packages reaches the *base* interpreter's packages only; when the tests
    # themselves run in a venv, its site-packages (torch, …) are added with a .pth file.
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp_path).stdout.strip()
    (Path(purelib) / "_parent_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # The venv borrows this interpreter's pip (system site-packages) and installs into itself.
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
         cwd=tmp_path)

    work = tmp_path / "elsewhere"  # not the repository: nothing can come from the checkout
    work.mkdir()
    got = json.loads(_run([str(py), "-c", CHECK], cwd=work).stdout.strip().splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(venv.resolve()), got["file"]
    assert not Path(got["file"]).resolve().is_relative_to(ROOT), got["file"]
    assert Path(got["pattern_dir"]).resolve().is_relative_to(venv.resolve())
    assert got["patterns"] == stems
    assert got["streaming"] == "causal & (local(3968) | sink(128))"
    assert got["density"] == 1.0 and got["strategy"] == "ranges"
    assert got["templates"]
    assert Path(got["plan"]).resolve().is_relative_to(venv.resolve()), got["plan"]

    # The console script and `python -m attngen` are both installed and work.
    script = venv / ("Scripts/attngen.exe" if os.name == "nt" else "bin/attngen")
    out = _run([str(script), "show", "streaming", "--n", "1024"], cwd=work).stdout
    assert "causal & (local(3968) | sink(128))" in out and "ranges" in out
    out = _run([str(py), "-m", "attngen", "--version"], cwd=work).stdout
    assert "attngen" in out
