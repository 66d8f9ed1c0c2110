"""The kernel cache: hits across processes, corruption, interrupted publishes, key
stability (faults and attacks: test_cache_faults.py)."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import attngen
from attngen.runtime import cache
from attngen.runtime.key import cache_key

CHILD = """
import sys, torch, attngen
kern = attngen.compile(sys.argv[1], head_dim=16, dtype=torch.float32, heads=2, device="cpu")
print("rendered" if kern.rendered else "hit", kern.key)
"""


def _compile_in_new_process(pattern: str, cache_dir: Path, **popen):
    env = dict(os.environ, ATTNGEN_CACHE_DIR=str(cache_dir), TRITON_INTERPRET="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, pattern], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_second_process_hits_the_cache(tmp_path):
    first = _compile_in_new_process("causal & local(17)", tmp_path).communicate()[0].split()
    second = _compile_in_new_process("causal & local(17)", tmp_path).communicate()[0].split()
    assert first[0] == "rendered" and second == ["hit", first[1]]
    other = _compile_in_new_process("local(18)", tmp_path).communicate()[0].split()
    assert other[0] == "rendered" and other[1] != first[1]


@pytest.mark.usefixtures("interpreter")
def test_a_flipped_byte_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path))
    key = "f" * 64
    built = []

    def build():
        built.append(1)
        return "print('kernel')\n", {"pattern": "test"}

    entry = cache.get_or_build(key, build)
    assert entry.rendered and cache.verify(entry.path) is None
    data = bytearray((entry.path / "kernel.py").read_bytes())
    data[3] ^= 0x01
    (entry.path / "kernel.py").write_bytes(bytes(data))
    assert "checksum" in cache.verify(entry.path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = cache.get_or_build(key, build)
    assert again.rendered and len(built) == 2
    assert any("corrupt" in str(w.message) for w in caught)
    assert cache.verify(again.path) is None
    assert any(p.name.startswith(".corrupt-") for p in tmp_path.iterdir())


def test_an_interrupted_publish_never_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path))
    key = "e" * 64
    # A writer killed mid-publish leaves only a dot-named temporary directory behind...
    partial = tmp_path / f".tmp-{key[:16]}-dead"
    partial.mkdir(parents=True)
    (partial / "kernel.py").write_text("half a kern")
    # ...or, if it died after the rename but its files were damaged, a failing checksum.
    (tmp_path / key).mkdir()
    (tmp_path / key / "kernel.py").write_text("print(1)")
    assert cache.verify(tmp_path / key) is not None
    assert cache.entries() == [tmp_path / key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entry = cache.get_or_build(key, lambda: ("print(2)\n", {}))
    assert entry.rendered and (entry.path / "kernel.py").read_text() == "print(2)\n"


def test_cache_key_is_stable_and_sensitive():
    base = dict(pattern_key="a" * 64, head_group=(0, 0), head_dim=64, dtype=torch.bfloat16,
                capability="sm_90", options={"fused_loops": False})
    assert cache_key(**base) == cache_key(**base)
    for change in [dict(pattern_key="b" * 64), dict(head_group=(0, 1)), dict(head_dim=128),
                   dict(dtype=torch.float16), dict(capability="interpreter"),
                   dict(options={"fused_loops": True})]:
        assert cache_key(**{**base, **change}) != cache_key(**base)
    code = ("import torch; from attngen.runtime.key import cache_key; print(cache_key('a'*64, "
            "(0, 0), 64, torch.bfloat16, 'sm_90', {'fused_loops': False}))")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONHASHSEED=s), check=True).stdout.strip()
            for s in ("1", "2", "3")}
    assert keys == {cache_key(**base)}


@pytest.mark.usefixtures("interpreter")
def test_warm_compile_is_an_in_process_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "c"))
    a = attngen.compile("local(33)", head_dim=16, dtype=torch.float32, heads=2, device="cpu")
    for p in (tmp_path / "c").iterdir():  # the disk is not consulted again
        if p.is_dir():
            os.rename(p, tmp_path / f"moved-{p.name}")
    b = attngen.compile("local(33)", head_dim=16, dtype=torch.float32, heads=2, device="cpu")
    assert a is b


def test_cache_cli_ls_verify_clear(tmp_path, monkeypatch, capsys):
    from attngen.cli import main

    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path))
    cache.get_or_build("d" * 64, lambda: ("print(3)\n", {"pattern": "local(3)"}))
    assert main(["cache", "ls"]) == 0 and "local(3)" in capsys.readouterr().out
    assert main(["cache", "verify"]) == 0 and "1 ok" in capsys.readouterr().out
    (tmp_path / ("d" * 64) / "kernel.py").write_text("tampered")
    assert main(["cache", "verify"]) == 1 and "checksum" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert cache.entries() == []
