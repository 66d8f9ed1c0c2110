"""What the forward, backward and decode launches share: the block configuration, the
loader of generated modules, the argument helpers, and `Compiled`, what backward.py and
derived.py read of a kernel. Apart from kernel.py so that those two, which kernel.py uses,
never import it."""
from __future__ import annotations

import hashlib
import linecache
import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from attngen.env import interpreting
from attngen.ir.pattern import Pattern
from attngen.lower.kernel_plan import KernelSpec


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    warps: int
    stages: int


class Compiled(Protocol):
    """The parts of a runtime.kernel.Kernel that its backward and derived modules use."""

    spec: KernelSpec
    key: str
    tables: dict

    @property
    def pattern(self) -> Pattern: ...

    def _tables(self, M: int, N: int, cfg: Config, device, doc_ids): ...


def _load_module(source: bytes, name: str, where: Path | None) -> types.ModuleType:
    """Execute `source`, the kernel.py bytes the cache checked, as module `name`; the file
    is never read again. Its text goes to linecache under a name no file has, so that
    Triton's @jit, which reads a function's source through inspect, sees these bytes."""
    origin = f"<attngen {hashlib.sha256(source).hexdigest()[:16]} {where or 'in memory'}>"
    text = source.decode()
    linecache.cache[origin] = (len(text), None, text.splitlines(keepends=True), origin)
    module = types.ModuleType(name)
    module.__file__ = origin
    exec(compile(source, origin, "exec"), module.__dict__)
    return module


def table_key(M: int, N: int, cfg: Config, device, doc_ids) -> tuple:
    """What a kernel's block tables depend on: the shape, the block sizes, the device and
    the documents' contents."""
    doc_key = None if doc_ids is None else hash(doc_ids.cpu().numpy().tobytes())
    return (M, N, cfg.block_m, cfg.block_n, str(device), doc_key)


def doc_tensor(doc_ids, device) -> torch.Tensor:
    """The kernels' DOC argument: the ids as int64 (compared exactly, never truncated), or a
    placeholder."""
    if doc_ids is None:
        return torch.zeros(1, dtype=torch.int64, device=device)
    return doc_ids.to(device=device, dtype=torch.int64)


def signed(q: torch.Tensor, scale: float | None) -> tuple[torch.Tensor, float, float]:
    """(q', scale', sign) with scale · q·k = scale' · q'·k and scale' > 0: the kernels'
    online softmax takes the row maximum of unscaled scores and masks with -inf before
    scaling, which needs a positive scale. A zero or negative scale (rare) costs one copy of
    q: q' = 0·q or −q, exact in every dtype. The gradient of q is sign · the gradient of q'
    (that of k is unchanged)."""
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if s > 0:
        return q, s, 1.0
    if s == 0:
        return q * 0, 1.0, 0.0
    return -q, -s, -1.0


def upcast(q: torch.Tensor) -> bool:
    """bfloat16 under the interpreter: NumPy has no bfloat16, so the kernels would read its
    bits wrongly; the launch runs in fp32 and casts the results back."""
    return q.dtype == torch.bfloat16 and interpreting()
