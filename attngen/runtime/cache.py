"""Content-addressed kernel cache on disk: `<root>/<key>/kernel.py` + `meta.json`.

Publishing writes every file into a temporary directory inside the root, fsyncs, writes
meta.json last (it holds the sha256 of kernel.py), and renames the directory into place;
if another process won the race, its entry is used. Readers verify the checksum; a corrupt
entry is moved aside (".corrupt-…"), reported once, and rebuilt. A per-key file lock keeps
two processes from rendering the same key; after a lock timeout a process builds privately
rather than hang.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from attngen.runtime.env import cache_dir, lock_timeout_s


@dataclass(frozen=True)
class Entry:
    path: Path       # directory holding kernel.py and meta.json
    rendered: bool   # whether this process rendered it


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def verify(entry: Path) -> str | None:
    """None if the entry is whole, else what is wrong with it."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        source = (entry / "kernel.py").read_bytes()
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    if meta.get("sha256") != _sha(source):
        return "kernel.py does not match the checksum in meta.json"
    return None


_warned: set[str] = set()


def _quarantine(entry: Path, why: str) -> None:
    if entry.name not in _warned:
        warnings.warn(f"attngen: cache entry {entry} is corrupt ({why}); rebuilding it",
                      stacklevel=3)
        _warned.add(entry.name)
    target = entry.parent / f".corrupt-{entry.name}-{time.time_ns()}"
    try:
        entry.rename(target)
    except OSError:
        shutil.rmtree(entry, ignore_errors=True)


def _publish(root: Path, key: str, source: str, meta: dict) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root))
    data = source.encode()
    _fsync_write(tmp / "kernel.py", data)
    meta = {**meta, "sha256": _sha(data), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _fsync_write(tmp / "meta.json", json.dumps(meta, indent=2).encode())
    final = root / key
    try:
        os.rename(tmp, final)
    except OSError:  # another writer published first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def get_or_build(key: str, build: Callable[[], tuple[str, dict]]) -> Entry:
    """The cache entry for `key`, rendering it with `build()` → (source, meta) if needed."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    if entry.exists():
        problem = verify(entry)
        if problem is None:
            return Entry(entry, False)
        _quarantine(entry, problem)
    locks = root / ".locks"
    locks.mkdir(exist_ok=True)
    try:
        with FileLock(str(locks / f"{key}.lock"), timeout=lock_timeout_s()):
            if entry.exists() and verify(entry) is None:  # built while we waited
                return Entry(entry, False)
            source, meta = build()
            return Entry(_publish(root, key, source, meta), True)
    except Timeout:
        private = Path(tempfile.mkdtemp(prefix="attngen-private-"))
        source, meta = build()
        (private / "kernel.py").write_text(source)
        (private / "meta.json").write_text(json.dumps(meta))
        return Entry(private, True)


def entries() -> list[Path]:
    root = cache_dir()
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def clear() -> int:
    root = cache_dir()
    n = len(entries())
    if root.exists():
        shutil.rmtree(root)
    return n
