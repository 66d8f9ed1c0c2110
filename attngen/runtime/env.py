"""Every directory and environment variable attngen reads, in one place."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$ATTNGEN_CACHE_DIR, default ~/.cache/attngen."""
    return Path(os.environ.get("ATTNGEN_CACHE_DIR", Path.home() / ".cache" / "attngen"))


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
