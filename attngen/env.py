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


# -- work limits: checked before anything is built, so bad sizes fail fast and clearly --------
def _limit(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        value = int(text) if text.strip() else default
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"${name} must be at least 1, got {value}")
    return value


def max_pattern_chars() -> int:
    """Longest pattern text (or pattern file) parsed ($ATTNGEN_MAX_PATTERN_CHARS)."""
    return _limit("ATTNGEN_MAX_PATTERN_CHARS", 20_000)


def max_length() -> int:
    """Largest M or N a layout, plan or picture is built for ($ATTNGEN_MAX_LENGTH)."""
    return _limit("ATTNGEN_MAX_LENGTH", 1 << 24)


def max_blocks() -> int:
    """Most query blocks × kv blocks of one layout ($ATTNGEN_MAX_BLOCKS)."""
    return _limit("ATTNGEN_MAX_BLOCKS", 1 << 26)


def max_heads() -> int:
    """Most heads of a layout, mask or kernel, and the largest head index + 1 in
    `heads { … }` ($ATTNGEN_MAX_HEADS)."""
    return _limit("ATTNGEN_MAX_HEADS", 4096)


def max_mask_elements() -> int:
    """Most elements of a dense mask (heads × M × N) or dense block table (query blocks ×
    kv blocks of a picture, heads × query blocks × width of `layout --out`)
    ($ATTNGEN_MAX_MASK_ELEMENTS)."""
    return _limit("ATTNGEN_MAX_MASK_ELEMENTS", 1 << 27)
