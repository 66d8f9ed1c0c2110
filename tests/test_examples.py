"""Every script in examples/ runs to completion (as a user would run it, from another cwd)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert {"quickstart.py", "library_tour.py"} <= {p.name for p in EXAMPLES}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, \
        f"{script.name}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert result.stdout.strip()
    assert len(script.read_text().splitlines()) < 80, "examples stay short (STYLE.md)"
