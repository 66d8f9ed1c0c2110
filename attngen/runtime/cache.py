"""Content-addressed kernel cache on disk: `<root>/<key>/kernel.py` + `meta.json`, and
for forward kernels `plan.pickle` (the kernel plan, so a new process skips lowering).

Publishing writes every file into a temporary directory inside the root, fsyncs, writes
meta.json last (sha256 and HMAC of kernel.py), and renames the directory into place; if
another process won the race, its entry is used. The HMAC is made with a per-user secret
kept outside the cache (env.cache_key_file), so whoever can write the cache cannot make
an entry this user will run. Readers read kernel.py once, check it, and hand out exactly
those bytes (the loader executes them, never the file); plan.pickle is signed and checked
the same way before anyone unpickles it (unpickling runs code). A bad entry is moved aside
(".corrupt-…"), reported once, and rebuilt. A per-key file lock keeps two processes from
rendering the same key. When the cache cannot be used (a root writable by others, a
read-only or full disk, a lock held too long) the kernel is built in memory instead.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from attngen.env import cache_dir, cache_key_file, lock_timeout_s, models_dir

KEY = re.compile(r"[0-9a-f]{64}")
TAG = "CACHEDIR.TAG"  # https://bford.info/cachedir/: marks the root as attngen's
TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
            "# attngen's kernel cache; `attngen cache clear` removes its entries.\n")
_OWN_DOT_DIRS = (".locks", ".tmp-", ".corrupt-")


class CacheError(OSError):
    """The cache root or the signing key cannot be trusted (or `clear` refuses a root)."""


@dataclass(frozen=True)
class Entry:
    path: Path | None  # directory holding kernel.py and meta.json; None: built in memory
    rendered: bool     # whether this process rendered it
    source: bytes = field(repr=False, default=b"")  # the checked kernel.py: what is executed
    plan: bytes | None = field(repr=False, default=None)  # the checked plan.pickle, if any


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# -- the signing key ---------------------------------------------------------------------
_SECRETS: dict[Path, bytes] = {}


def _create_secret(path: Path) -> None:
    """Write a fresh key to `path` (mode 0600) unless another process got there first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{time.time_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another process made
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _secret() -> bytes:
    path = cache_key_file()
    if path not in _SECRETS:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            _create_secret(path)
            f = open(path, "rb")
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CacheError(f"cache key {path} is not a regular file")
            if st.st_uid != os.getuid():
                raise CacheError(f"cache key {path} belongs to another user (uid {st.st_uid})")
            if st.st_mode & 0o077:
                raise CacheError(f"cache key {path} is accessible to other users (mode "
                                 f"{stat.S_IMODE(st.st_mode):o}): run `chmod 600 {path}`, or "
                                 "delete it to make a new one (cached kernels get rebuilt)")
            key = f.read()
        if len(key) < 32:
            raise CacheError(f"cache key {path} is too short ({len(key)} bytes): delete it "
                             "to make a new one (cached kernels get rebuilt)")
        _SECRETS[path] = key
    return _SECRETS[path]


def check_key() -> None:
    """Raise CacheError if the signing key cannot be used (made here if missing)."""
    _secret()


def _mac(secret: bytes, key: str, data: bytes) -> str:
    return hmac.new(secret, key.encode() + b"\0" + data, hashlib.sha256).hexdigest()


# -- the root ----------------------------------------------------------------------------
def check_root(root: Path) -> None:
    """Raise CacheError unless `root` (or, for a symlink, its target) is a directory that
    only this user can write: any other writer could plant or swap entries."""
    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"cache root {root} is not a directory")
    if st.st_uid != os.getuid():
        raise CacheError(f"cache root {root} belongs to another user (uid {st.st_uid}); set "
                         "ATTNGEN_CACHE_DIR to a directory of your own")
    # group/other-writable is refused unless sticky (others may add, never rename or delete)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise CacheError(f"cache root {root} is writable by other users (mode "
                         f"{stat.S_IMODE(st.st_mode):o}): run `chmod go-w {root}`, or set "
                         "ATTNGEN_CACHE_DIR to a directory of your own")


def _shared_place(path: Path) -> str | None:
    """What `path` is if it is a directory that must never be emptied or tagged."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "the file system root"
    if resolved == Path.home().resolve():
        return "the home directory"
    if resolved == Path.cwd().resolve():
        return "the working directory"
    return None


def _prepare_root() -> Path:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_root(root)
    tag = root / TAG
    if not tag.exists() and _shared_place(root) is None:
        try:
            _fsync_write(tag, TAG_TEXT.encode())
        except OSError:  # a read-only root still serves the entries it has
            pass
    return root


# -- entries -----------------------------------------------------------------------------
def _meta_problem(meta: object) -> str | None:
    if not isinstance(meta, dict):
        return f"meta.json holds a {type(meta).__name__}, not an object"
    if "hmac" not in meta:
        return "unsigned (written by an older attngen, or not by attngen)"
    for name in ("sha256", "hmac", "created"):
        if not isinstance(meta.get(name), str):
            return f"meta.json has no valid {name!r}"
    return None


PLAN = "plan.pickle"


def _read_checked(entry: Path, secret: bytes) -> tuple[bytes | None, bytes | None, str | None]:
    """(kernel.py's bytes, plan.pickle's bytes or None, None) if the entry is whole and
    signed with `secret`, else (None, None, what is wrong). The bytes are read once: they
    are what gets executed or unpickled."""
    try:
        meta = json.loads((entry / "meta.json").read_bytes())
        data = (entry / "kernel.py").read_bytes()
        plan = (entry / PLAN).read_bytes() if isinstance(meta, dict) and "plan_hmac" in meta \
            else None
    except (OSError, ValueError) as e:
        return None, None, f"unreadable: {e}"
    problem = _meta_problem(meta)
    if problem is not None:
        return None, None, problem
    if meta["sha256"] != _sha(data):
        return None, None, "kernel.py does not match the checksum in meta.json"
    if not hmac.compare_digest(meta["hmac"], _mac(secret, entry.name, data)):
        return None, None, ("kernel.py is not signed with this user's cache key (edited or "
                            "planted; never executed)")
    if plan is not None and not (isinstance(meta["plan_hmac"], str) and hmac.compare_digest(
            meta["plan_hmac"], _mac(secret, f"{entry.name}/{PLAN}", plan))):
        return None, None, (f"{PLAN} is not signed with this user's cache key (edited or "
                            "planted; never unpickled)")
    return data, plan, None


def verify(entry: Path) -> str | None:
    """None if the entry is whole and signed by this user's key, else what is wrong."""
    return _read_checked(entry, _secret())[2]


def read_meta(entry: Path) -> dict | None:
    """The entry's meta.json if it is an object, else None (for listing only: unchecked)."""
    try:
        meta = json.loads((entry / "meta.json").read_bytes())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


_warned: set[str] = set()


def _warn_once(topic: str, message: str) -> None:
    if topic not in _warned:
        _warned.add(topic)
        warnings.warn(message, stacklevel=4)


def _quarantine(entry: Path, why: str) -> None:
    _warn_once(f"corrupt:{entry}", f"attngen: cache entry {entry} is corrupt ({why}); "
               "moved aside and rebuilt")
    target = entry.parent / f".corrupt-{entry.name}-{time.time_ns()}"
    try:
        entry.rename(target)
    except OSError:
        shutil.rmtree(entry, ignore_errors=True)


def _checked_entry(entry: Path, secret: bytes) -> tuple[bytes, bytes | None] | None:
    """The checked (source, plan) of an existing entry; a bad one is quarantined (None)."""
    if not os.path.lexists(entry):
        return None
    data, plan, problem = _read_checked(entry, secret)
    if data is None:
        _quarantine(entry, problem)
        return None
    return data, plan


def _publish(root: Path, key: str, data: bytes, meta: dict, secret: bytes,
             plan: bytes | None = None) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root))
    try:
        _fsync_write(tmp / "kernel.py", data)
        if plan is not None:
            _fsync_write(tmp / PLAN, plan)
            meta = {**meta, "plan_hmac": _mac(secret, f"{key}/{PLAN}", plan)}
        meta = {**meta, "sha256": _sha(data), "hmac": _mac(secret, key, data),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _fsync_write(tmp / "meta.json", json.dumps(meta, indent=2).encode())
        final = root / key
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            # another writer published first: the caller runs its own bytes all the same
            shutil.rmtree(tmp, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


Build = Callable[[], "tuple[str, dict] | tuple[str, dict, bytes]"]


def _in_memory(key: str, build: Build) -> Entry:
    source, _, *plan = build()
    return Entry(None, True, source.encode(), plan[0] if plan else None)


def get_or_build(key: str, build: Build) -> Entry:
    """The cache entry for `key`, rendering it with `build()` → (source, meta) or (source,
    meta, plan bytes) if needed. Falls back to an in-memory build (with one warning) when
    the cache cannot be used."""
    if not KEY.fullmatch(key):
        raise ValueError(f"cache key must be 64 hex digits, got {key!r}")
    try:
        root = _prepare_root()
        secret = _secret()
    except OSError as e:
        _warn_once(f"unusable:{cache_dir()}", f"attngen: kernel cache not used ({e}); "
                   "building kernels in memory")
        return _in_memory(key, build)
    entry = root / key
    found = _checked_entry(entry, secret)
    if found is not None:
        return Entry(entry, False, *found)
    lock = FileLock(str(root / ".locks" / f"{key}.lock"))
    try:
        (root / ".locks").mkdir(exist_ok=True)
        lock.acquire(timeout=lock_timeout_s())
    except Timeout:
        _warn_once(f"timeout:{root}", f"attngen: another process has held the cache lock for "
                   f"{key[:16]} over {lock_timeout_s():g} s; building in memory")
        return _in_memory(key, build)
    except OSError as e:  # .locks or the lock file cannot be made (a read-only root)
        _warn_once(f"unwritable:{root}", f"attngen: cannot write the kernel cache {root} "
                   f"({e}); kernels are built in memory")
        return _in_memory(key, build)
    try:
        found = _checked_entry(entry, secret)  # built while we waited
        if found is not None:
            return Entry(entry, False, *found)
        source, meta, *extra = build()
        data, plan = source.encode(), (extra[0] if extra else None)
        try:
            return Entry(_publish(root, key, data, meta, secret, plan), True, data, plan)
        except OSError as e:
            _warn_once(f"unwritable:{root}", f"attngen: cannot write the kernel cache {root} "
                       f"({e}); kernels are built in memory")
            return Entry(None, True, data, plan)
    finally:
        lock.release()


# -- listing and clearing ------------------------------------------------------------------
def _is_entry(p: Path) -> bool:
    return bool(KEY.fullmatch(p.name)) and p.is_dir() and not p.is_symlink()


def _is_ours(p: Path) -> bool:
    """Whether attngen wrote `p` (a child of the root): an entry with its meta.json, the
    root's tag, or one of attngen's dot-directories."""
    if p.name == TAG:
        return True
    if p.is_symlink():
        return False
    if p.name.startswith(".corrupt-"):
        return True
    if p.name == ".locks" or p.name.startswith(".tmp-"):
        return p.is_dir()
    return _is_entry(p) and (p / "meta.json").is_file()


def root() -> Path:
    """The cache root, checked (CacheError if others could write it)."""
    r = cache_dir()
    if r.exists():
        check_root(r)
    return r


def entries() -> list[Path]:
    """Entry directories (named by a key; whole or not) under the checked root."""
    r = root()
    if not r.exists():
        return []
    return sorted(p for p in r.iterdir() if _is_entry(p))


def foreign() -> list[Path]:
    """What lies in the root that attngen did not write (`clear` leaves it)."""
    r = root()
    if not r.exists():
        return []
    return sorted(p for p in r.iterdir() if not _is_ours(p))


@dataclass(frozen=True)
class Cleared:
    removed: int       # entries removed
    left: list[Path]   # what attngen did not write, left in place


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def clear() -> Cleared:
    """Remove every entry and dot-directory attngen wrote under the root; leave the rest.
    Refuses (CacheError) a root that looks unset, or that attngen never used while it holds
    files attngen did not write."""
    r = cache_dir()
    place = _shared_place(r)
    if place is not None:
        raise CacheError(f"refusing to clear {r}: it is {place}; set ATTNGEN_CACHE_DIR to "
                         "the kernel cache directory itself")
    if not r.exists():
        return Cleared(0, [])
    left = foreign()
    if left and not (r / TAG).is_file():
        raise CacheError(f"refusing to clear {r}: attngen has not used it as its cache (no "
                         f"{TAG}) and it holds files attngen did not write, such as "
                         f"{left[0].name}")
    ours = [p for p in r.iterdir() if _is_ours(p) and p.name != TAG]
    removed = sum(1 for p in ours if _is_entry(p))
    for p in ours:
        _remove(p)
    return Cleared(removed, left)


# -- converted models (kept apart from kernels) --------------------------------------------
def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def models() -> list[tuple[Path, int]]:
    """(folder, bytes) of each converted model in models_dir()."""
    d = models_dir()
    if not d.is_dir():
        return []
    return [(p, _size(p)) for p in sorted(d.iterdir())
            if p.is_dir() and not p.is_symlink() and (p / "config.json").is_file()]


def clear_models() -> int:
    """Remove the converted models attngen saved (folders with a config.json); their bytes."""
    d = models_dir()
    place = _shared_place(d)
    if place is not None:
        raise CacheError(f"refusing to clear models in {d}: it is {place}; set "
                         "ATTNGEN_MODELS_DIR to the models directory itself")
    freed = 0
    for p, size in models():
        shutil.rmtree(p)
        freed += size
    return freed
