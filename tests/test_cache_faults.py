"""Faults the kernel cache must survive: planted or edited code, unsafe or unset roots,
`clear` next to other files, read-only and full disks, lock timeouts, concurrent and killed
builders, a cache deleted under a live kernel, converted models kept apart."""
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import stat
import sys
import tempfile
import types
import warnings
from pathlib import Path

import pytest
import torch
from filelock import FileLock

import attngen
from attngen.cli import main
from attngen.codegen.render import render
from attngen.env import cache_dir, cache_key_file, models_dir
from attngen.runtime import cache, compiler
from attngen.runtime.launch import _load_module

KEY = "a" * 64
VERSION = attngen.__version__
FORK = multiprocessing.get_context("fork")


@pytest.fixture
def root(tmp_path, monkeypatch):
    r = tmp_path / "cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(r))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(cache, "_warned", set())
    return r


def _fake_build(text: str = "VALUE = 1\n"):
    built = []

    def build():
        built.append(1)
        return text, {"pattern": "fake"}

    return build, built


def _planted(marker: Path) -> bytes:
    return f"open({str(marker)!r}, 'w').write('ran')\nVALUE = 2\n".encode()


def _plant(entry: Path, code: bytes) -> None:
    """What an attacker with write access to the cache does: new code, checksum to match."""
    (entry / "kernel.py").write_bytes(code)
    meta = json.loads((entry / "meta.json").read_text())
    meta["sha256"] = hashlib.sha256(code).hexdigest()
    (entry / "meta.json").write_text(json.dumps(meta))


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught]


# -- code execution ----------------------------------------------------------------------
def test_an_edited_kernel_with_its_checksum_recomputed_is_never_executed(root, tmp_path,
                                                                         capsys):
    marker = tmp_path / "marker"
    build, built = _fake_build()
    entry = cache.get_or_build(KEY, build)
    _plant(entry.path, _planted(marker))
    assert main(["cache", "verify"]) == 1 and "not signed" in capsys.readouterr().out
    again, caught = _caught(lambda: cache.get_or_build(KEY, build))
    module = _load_module(again.source, "m", again.path)
    assert not marker.exists() and module.VALUE == 1
    assert again.rendered and len(built) == 2 and len(caught) == 1 and "corrupt" in caught[0]
    assert any(p.name.startswith(".corrupt-") for p in root.iterdir())
    assert cache.verify(root / KEY) is None


def test_a_planted_entry_is_never_executed(root, tmp_path):
    marker = tmp_path / "marker"
    root.mkdir()
    code = _planted(marker)
    (root / KEY).mkdir()
    (root / KEY / "kernel.py").write_bytes(code)
    (root / KEY / "meta.json").write_text(json.dumps({
        "sha256": hashlib.sha256(code).hexdigest(), "hmac": "0" * 64, "created": "now"}))
    build, built = _fake_build()
    entry, caught = _caught(lambda: cache.get_or_build(KEY, build))
    assert _load_module(entry.source, "m", entry.path).VALUE == 1 and not marker.exists()
    assert len(caught) == 1 and built == [1]


def test_compile_never_runs_an_edited_kernel(root, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setattr(compiler, "_KERNELS", {})
    kern = attngen.compile("local(5)", head_dim=16, dtype=torch.float32, heads=1, device="cpu")
    _plant(kern.path, _planted(marker) + kern.source.encode())
    monkeypatch.setattr(compiler, "_KERNELS", {})
    again, caught = _caught(lambda: attngen.compile("local(5)", head_dim=16,
                                                    dtype=torch.float32, heads=1,
                                                    device="cpu").load())
    assert again.rendered and not marker.exists() and len(caught) == 1


class _Planted:
    """A pickle that runs code when loaded: what a planted plan.pickle would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_an_edited_plan_is_never_unpickled(root, tmp_path, monkeypatch):
    import pickle

    marker = tmp_path / "marker"
    monkeypatch.setattr(compiler, "_KERNELS", {})
    kern = attngen.compile("local(5)", head_dim=16, dtype=torch.float32, heads=1, device="cpu")
    assert (kern.path / cache.PLAN).is_file() and cache.verify(kern.path) is None
    (kern.path / cache.PLAN).write_bytes(pickle.dumps(_Planted(marker)))
    assert "plan.pickle is not signed" in cache.verify(kern.path)
    monkeypatch.setattr(compiler, "_KERNELS", {})
    again, caught = _caught(lambda: attngen.compile("local(5)", head_dim=16,
                                                    dtype=torch.float32, heads=1, device="cpu"))
    assert again.rendered and not marker.exists() and len(caught) == 1
    assert again.spec == kern.spec and cache.verify(again.path) is None


def test_a_warm_compile_takes_the_plan_from_the_cache_without_lowering(root, monkeypatch):
    monkeypatch.setattr(compiler, "_KERNELS", {})
    text = "heads { 0: causal & (sink(4) | local(64)); *: causal & (local(16) | strided(8)) }"
    first = attngen.compile(text, head_dim=16, dtype=torch.float32, heads=2, device="cpu")
    monkeypatch.setattr(compiler, "_KERNELS", {})

    def no_lowering(*args, **kwargs):
        raise AssertionError("lowered again on a cache hit")

    monkeypatch.setattr(compiler.KernelSpec, "build", no_lowering)
    again = attngen.compile(text, head_dim=16, dtype=torch.float32, heads=2, device="cpu")
    assert not again.rendered and again.spec == first.spec and again.spec is not first.spec
    assert [g.node for g in again.spec.groups] == [g.node for g in first.spec.groups]
    assert all(a is b for a, b in zip((g.node for g in again.spec.groups),
                                      (g.node for g in first.spec.groups)))  # interned
    # the cached plan holds no loops; completed, it renders the cached source again
    assert not again.spec.loops and render(again.spec.complete(), again.key, VERSION) == \
        again.source
    q, k, v = (torch.randn(1, 2, 37, 16) for _ in range(3))
    ref = attngen.attention(q, k, v, text, backend="reference")
    assert (again(q, k, v) - ref).abs().max() <= 1e-4


def test_the_key_file_lives_outside_the_cache_and_is_private(root, tmp_path, monkeypatch):
    key_file = tmp_path / "config" / "attngen" / "cache.key"
    monkeypatch.setenv("ATTNGEN_CACHE_KEY_FILE", str(key_file))
    monkeypatch.setattr(cache, "_SECRETS", {})
    cache.get_or_build(KEY, _fake_build()[0])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and root not in key_file.parents
    monkeypatch.setenv("ATTNGEN_CACHE_KEY_FILE", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cache_key_file() == tmp_path / "xdg" / "attngen" / "cache.key"


def test_a_key_file_others_can_read_is_refused(root, tmp_path, monkeypatch, capsys):
    key_file = tmp_path / "cache.key"
    key_file.write_text("k" * 64)
    key_file.chmod(0o644)
    monkeypatch.setenv("ATTNGEN_CACHE_KEY_FILE", str(key_file))
    monkeypatch.setattr(cache, "_SECRETS", {})
    build, _ = _fake_build()
    entry, caught = _caught(lambda: cache.get_or_build(KEY, build))
    assert entry.path is None and entry.source == b"VALUE = 1\n"
    assert len(caught) == 1 and "chmod 600" in caught[0]
    assert main(["cache", "verify"]) == 1 and "chmod 600" in capsys.readouterr().err


# -- roots others can write ------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_root_others_can_write_is_refused(root, mode, capsys):
    root.mkdir()
    root.chmod(mode)
    build, built = _fake_build()
    entry, caught = _caught(lambda: cache.get_or_build(KEY, build))
    assert entry.path is None and built == [1] and list(root.iterdir()) == []
    assert len(caught) == 1 and "writable by other users" in caught[0]
    for action in ("ls", "verify", "clear"):
        assert main(["cache", action]) == 1
        assert "writable by other users" in capsys.readouterr().err


def test_a_sticky_root_of_ones_own_is_accepted(root):
    root.mkdir()
    root.chmod(0o1777)
    assert cache.get_or_build(KEY, _fake_build()[0]).path == root / KEY


def test_a_root_of_another_user_is_refused(root, monkeypatch):
    if os.getuid() == 0:
        root.mkdir()
        os.chown(root, 4242, -1)
    else:  # "/" belongs to root; refused before anything is written
        monkeypatch.setenv("ATTNGEN_CACHE_DIR", "/")
    entry, caught = _caught(lambda: cache.get_or_build(KEY, _fake_build()[0]))
    assert entry.path is None and "another user" in caught[0]


def test_a_symlinked_root_works(root, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    root.symlink_to(real)
    build, built = _fake_build()
    assert cache.get_or_build(KEY, build).rendered
    assert not cache.get_or_build(KEY, build).rendered and built == [1]
    assert main(["cache", "clear"]) == 0 and "removed 1 entries" in capsys.readouterr().out
    assert root.is_symlink() and not (real / KEY).exists()


# -- clear -----------------------------------------------------------------------------------
def test_an_empty_cache_variable_means_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for value in ("", "  "):
        monkeypatch.setenv("ATTNGEN_CACHE_DIR", value)
        assert cache_dir() == tmp_path / "home" / ".cache" / "attngen"


def test_clear_with_an_empty_variable_keeps_the_working_directory(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "keep").write_text("mine")
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", "")
    assert main(["cache", "clear"]) == 0
    assert (scratch / "keep").read_text() == "mine"


@pytest.mark.parametrize("where", ["cwd", "home"])
def test_clear_refuses_a_root_that_looks_unset(tmp_path, monkeypatch, capsys, where):
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home if where == "cwd" else tmp_path)
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", "." if where == "cwd" else str(home))
    assert main(["cache", "clear"]) == 1
    assert "refusing to clear" in capsys.readouterr().err
    assert (home / "keep").exists()


def test_clear_refuses_a_directory_attngen_never_used(root, capsys):
    (root / "mydata").mkdir(parents=True)
    (root / "mydata" / "notes.txt").write_text("mine")
    assert main(["cache", "clear"]) == 1 and "refusing" in capsys.readouterr().err
    assert (root / "mydata" / "notes.txt").exists()


def test_clear_removes_only_what_attngen_wrote(root, capsys):
    (root / "mydata").mkdir(parents=True)
    (root / "mydata" / "notes.txt").write_text("mine")
    (root / "notes.txt").write_text("mine")
    (root / ("b" * 64)).mkdir()  # named like an entry, but no meta.json: not attngen's
    (root / ("b" * 64) / "data").write_text("mine")
    cache.get_or_build(KEY, _fake_build()[0])
    (root / ".tmp-dead").mkdir()
    (root / ".corrupt-x").mkdir()
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 entries" in out and "mydata" in out and "notes.txt" in out
    left = sorted(p.name for p in root.iterdir())
    assert left == sorted(["b" * 64, "mydata", "notes.txt", cache.TAG])
    assert (root / "mydata" / "notes.txt").read_text() == "mine"


# -- meta.json that parses but is wrong ------------------------------------------------------
@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "null", "{}"])
def test_a_meta_json_that_is_not_an_entry_record_is_corrupt(root, meta, capsys):
    build, built = _fake_build()
    cache.get_or_build(KEY, build)
    (root / KEY / "meta.json").write_text(meta)
    assert main(["cache", "ls"]) == 0 and "corrupt" in capsys.readouterr().out
    assert main(["cache", "verify"]) == 1 and "1 corrupt" in capsys.readouterr().out
    entry, caught = _caught(lambda: cache.get_or_build(KEY, build))
    assert entry.rendered and len(built) == 2 and len(caught) == 1
    assert cache.verify(entry.path) is None


def test_compile_rebuilds_an_entry_whose_created_is_null(root, monkeypatch, capsys):
    monkeypatch.setattr(compiler, "_KERNELS", {})
    kern = attngen.compile("local(6)", head_dim=16, dtype=torch.float32, heads=1, device="cpu")
    meta = json.loads((kern.path / "meta.json").read_text())
    (kern.path / "meta.json").write_text(json.dumps({**meta, "created": None}))
    assert main(["cache", "ls"]) == 0 and "corrupt" in capsys.readouterr().out
    monkeypatch.setattr(compiler, "_KERNELS", {})
    again, caught = _caught(lambda: attngen.compile("local(6)", head_dim=16,
                                                    dtype=torch.float32, heads=1, device="cpu"))
    assert again.rendered and len(caught) == 1


# -- when the disk cannot be used ------------------------------------------------------------
def test_a_cache_deleted_after_compile_does_not_break_the_kernel(root, monkeypatch):
    monkeypatch.setattr(compiler, "_KERNELS", {})
    kern = attngen.compile("causal & local(7)", head_dim=16, dtype=torch.float32, heads=1,
                           device="cpu")
    shutil.rmtree(root)
    q, k, v = torch.randn(3, 1, 1, 20, 16).unbind(0)
    ref = attngen.attention(q, k, v, "causal & local(7)", backend="reference")
    assert torch.allclose(kern(q, k, v), ref, atol=1e-5)


def _read_only(monkeypatch, root: Path) -> None:
    """No directory or file can be created under `root` (a read-only mount; the suite runs
    as root, which file modes do not stop)."""
    def guard(real):
        def call(path, *args, **kwargs):
            if Path(os.fsdecode(path)).is_relative_to(root):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "mkdir", guard(os.mkdir))
    monkeypatch.setattr(os, "open", guard(os.open))
    monkeypatch.setattr(cache, "_fsync_write", guard(cache._fsync_write))


def test_a_read_only_root_serves_its_entries_and_builds_the_rest_in_memory(root, monkeypatch):
    build, built = _fake_build()
    cache.get_or_build(KEY, build)
    before = sorted(root.rglob("*"))
    _read_only(monkeypatch, root)
    assert not cache.get_or_build(KEY, build).rendered
    entry, caught = _caught(lambda: cache.get_or_build("c" * 64, build))
    assert entry.path is None and entry.source == b"VALUE = 1\n" and len(caught) == 1
    monkeypatch.setattr(compiler, "_KERNELS", {})
    kern, caught = _caught(lambda: attngen.compile("local(9)", head_dim=16,
                                                   dtype=torch.float32, heads=1, device="cpu"))
    assert kern.path is None and caught == []  # warned once already
    q, k, v = torch.randn(3, 1, 1, 13, 16).unbind(0)
    ref = attngen.attention(q, k, v, "local(9)", backend="reference")
    assert torch.allclose(kern(q, k, v), ref, atol=1e-5)
    assert sorted(root.rglob("*")) == before


def test_a_full_disk_builds_in_memory_and_leaves_nothing(root, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache, "_fsync_write", full)
    build, built = _fake_build()
    entry, caught = _caught(lambda: cache.get_or_build(KEY, build))
    assert entry.path is None and entry.source == b"VALUE = 1\n" and len(caught) == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert not (root / KEY).exists()


def test_a_lock_timeout_builds_in_memory_and_leaves_nothing(root, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_LOCK_TIMEOUT", "0.1")
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    cache.get_or_build("c" * 64, _fake_build()[0])  # creates the root and .locks
    build, built = _fake_build()
    with FileLock(str(root / ".locks" / f"{KEY}.lock")):
        entry, caught = _caught(lambda: cache.get_or_build(KEY, build))
    assert entry.path is None and built == [1] and len(caught) == 1
    assert list(private_tmp.iterdir()) == [] and not (root / KEY).exists()


# -- concurrent and killed builders ----------------------------------------------------------
def _build_in_child(key: str, renders: str, go, out) -> None:
    def build():
        with open(renders, "a") as f:
            f.write("x")
        return "VALUE = 3\n", {}

    go.wait()
    try:
        entry = cache.get_or_build(key, build)
        out.put((entry.rendered, entry.source, str(entry.path)))
    except BaseException as e:  # reported, not hidden: the parent asserts on it
        out.put(repr(e))


def test_eight_processes_building_one_key_render_once(root, tmp_path):
    renders = tmp_path / "renders"
    go, out = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_build_in_child, args=(KEY, str(renders), go, out))
             for _ in range(8)]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(r, tuple) for r in results), results
    assert renders.read_text() == "x"
    assert sorted(r[0] for r in results) == [False] * 7 + [True]
    assert {r[1:] for r in results} == {(b"VALUE = 3\n", str(root / KEY))}


def _die_at(stage: str, key: str) -> None:
    def write(path, data, real=cache._fsync_write):
        real(path, data)
        if path.name == stage:
            os.kill(os.getpid(), signal.SIGKILL)

    def rename(src, dst, real=os.rename):
        if stage == "rename":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    cache._fsync_write = write
    os.rename = rename
    cache.get_or_build(key, lambda: ("VALUE = 4\n", {}))
    os._exit(0)


@pytest.mark.parametrize("stage", ["kernel.py", "meta.json", "rename"])
def test_a_builder_killed_mid_publish_leaves_nothing_that_loads(root, stage):
    child = FORK.Process(target=_die_at, args=(stage, KEY))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    assert not (root / KEY).exists() and cache.entries() == []
    build, built = _fake_build()
    entry = cache.get_or_build(KEY, build)
    assert entry.rendered and built == [1] and cache.verify(entry.path) is None
    cache.clear()
    assert sorted(p.name for p in root.iterdir()) == [cache.TAG]


# -- converted models ------------------------------------------------------------------------
def _fake_transformers(monkeypatch) -> None:
    """Just enough of transformers for load_model's conversion to write a model folder."""
    class Saved:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "config.json").write_text("{}")
            (Path(folder) / "model.safetensors").write_bytes(b"w" * 1000)

    class Model(Saved):
        config = types.SimpleNamespace(quantization_config=None)

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        @classmethod
        def from_config(cls, config, **kwargs):
            return cls()

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

        def eval(self):
            return self

        def to(self, *args, **kwargs):
            return self

    fake = types.ModuleType("transformers")
    fake.AutoModelForCausalLM, fake.AutoTokenizer = Model, Model
    monkeypatch.setitem(sys.modules, "transformers", fake)


def test_converted_models_live_outside_the_kernel_cache(root, tmp_path, monkeypatch, capsys):
    from attngen.profile import model

    monkeypatch.setenv("ATTNGEN_MODELS_DIR", str(tmp_path / "models"))
    gguf = tmp_path / "pkg" / "smol.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"gguf")
    monkeypatch.setattr(model, "smollm2_gguf", lambda: gguf)
    _fake_transformers(monkeypatch)
    cache.get_or_build(KEY, _fake_build()[0])
    model.load_model()
    saved = models_dir() / "smol"
    assert (saved / "model.safetensors").exists() and root not in saved.parents
    assert main(["cache", "verify"]) == 0
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert str(models_dir()) in out and "1 converted models" in out and "smol" in out
    assert main(["cache", "clear"]) == 0 and "--models" in capsys.readouterr().out
    assert (saved / "model.safetensors").exists() and cache.entries() == []
    assert main(["cache", "clear", "--models"]) == 0
    assert not saved.exists()


def test_a_failing_build_is_reported_not_retried_in_memory(root):
    calls = []

    def build():
        calls.append(1)
        raise FileNotFoundError("template missing")

    with pytest.raises(FileNotFoundError, match="template missing"):
        cache.get_or_build(KEY, build)
    assert calls == [1]
