"""Every directory and environment variable attngen reads, in one place."""
from __future__ import annotations

import os
from pathlib import Path


def _dir_var(name: str, default: Path) -> Path:
    """The path in $name, or `default` when it is unset, empty or blank (an empty value is
    Path(""), the working directory: never what was meant)."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else default


def cache_dir() -> Path:
    """$ATTNGEN_CACHE_DIR, default ~/.cache/attngen: generated kernels only."""
    return _dir_var("ATTNGEN_CACHE_DIR", Path.home() / ".cache" / "attngen")


def cache_key_file() -> Path:
    """The per-user secret that signs cache entries, kept outside the cache so that whoever
    can write the cache cannot sign: $ATTNGEN_CACHE_KEY_FILE, default
    $XDG_CONFIG_HOME/attngen/cache.key (~/.config/attngen/cache.key)."""
    config = _dir_var("XDG_CONFIG_HOME", Path.home() / ".config")
    return _dir_var("ATTNGEN_CACHE_KEY_FILE", config / "attngen" / "cache.key")


def models_dir() -> Path:
    """$ATTNGEN_MODELS_DIR, default ~/.cache/attngen-models: converted models, apart from the
    kernel cache so that clearing kernels never deletes them."""
    return _dir_var("ATTNGEN_MODELS_DIR", Path.home() / ".cache" / "attngen-models")


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune() -> bool:
    """Whether the first call per shape bucket times the candidate configurations
    ($ATTNGEN_AUTOTUNE=0: use the first one, as correctness checks do to save build time)."""
    return os.environ.get("ATTNGEN_AUTOTUNE", "1") not in ("", "0")


def lock_timeout_s() -> float:
    """How long to wait for another process compiling the same key before compiling
    privately ($ATTNGEN_LOCK_TIMEOUT, seconds)."""
    return float(os.environ.get("ATTNGEN_LOCK_TIMEOUT", "120"))


def use_interpreter_without_gpu() -> bool:
    """On a machine without CUDA, run generated kernels through Triton's interpreter. Must run
    before the first kernel module is imported; returns whether the interpreter is on."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return interpreting()
