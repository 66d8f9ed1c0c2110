"""A compiled kernel: the generated module, its launch, its tables and its tuning."""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy
import torch

from attngen.env import autotune, interpreting
from attngen.ir.node import walk
from attngen.ir.pattern import Pattern
from attngen.lower.atoms import atoms_of, numeric
from attngen.lower.bounds import int32_escape
from attngen.lower.cost import ranges_rows
from attngen.lower.grid import Grid
from attngen.lower.kernel_plan import KernelSpec
from attngen.lower.layout import layout
from attngen.runtime import backward, dynamic
from attngen.runtime.checks import check_inputs, check_row_span
from attngen.runtime.launch import Config, _load_module, doc_tensor, signed, table_key, upcast
from attngen.runtime.tables import block_classes, csr_of

# Hopper-aware search space (BLOCK_M, BLOCK_N, warps, stages); the interpreter uses the first
# of INTERPRETER_CONFIGS (small blocks exercise the block logic on small shapes).
GPU_CONFIGS = [(128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 4)]
INTERPRETER_CONFIGS = [(32, 32, 1, 1)]


def _bucket(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@dataclass
class Kernel:
    """`kernel(q, k, v)`: the same contract as `attngen.attention` for its pattern."""

    spec: KernelSpec
    key: str
    path: Path | None  # the cache entry; None when the cache could not be used
    head_dim: int
    dtype: torch.dtype
    rendered: bool
    code: bytes = field(default=b"", repr=False)  # the checked kernel.py: what load() runs
    tma: bool = False  # load K and V through tensor descriptors (CUDA, Triton >= 3.4)
    fallback: object = field(default=None, repr=False)  # () -> Kernel with plainer loops
    module: object = field(repr=False, default=None)
    tables: dict = field(default_factory=dict, repr=False)
    tuned: dict = field(default_factory=dict, repr=False)

    @property
    def pattern(self) -> Pattern:
        return self.spec.pattern

    @property
    def source(self) -> str:
        return self.code.decode()

    def load(self) -> Kernel:
        if self.module is None:
            self.module = _load_module(self.code, f"attngen_kernel_{self.key[:16]}", self.path)
        return self

    # -- tables for table groups ------------------------------------------------------------
    def _tables(self, M: int, N: int, cfg: Config, device, doc_ids):
        """CSR rows per table group, partial then full: offsets [slots, 2, QB + 1] and one
        index array. Built on the GPU by dense evaluation there, from the analytic layout
        on the CPU (the interpreter's small shapes)."""
        key = table_key(M, N, cfg, device, doc_ids)
        if key not in self.tables:
            grid = Grid(M, N, cfg.block_m, cfg.block_n)
            offsets, indices, base = [], [], 0
            for g in (g for g in self.spec.groups if g.table_slot >= 0):
                for off, idx in _group_csr(g.table.node, grid, device, doc_ids):
                    offsets.append(off + base)
                    indices.append(idx)
                    base += len(idx)
            off = (torch.stack(offsets) if offsets
                   else torch.zeros((1, grid.QB + 1), dtype=torch.int32, device=device))
            idx = torch.cat(indices + [torch.zeros(1, dtype=torch.int32, device=device)])
            self.tables[key] = (off.to(torch.int32).contiguous(), idx.to(torch.int32))
        return self.tables[key]

    def _static_work(self, B: int, M: int, N: int, cfg: Config, tab_off) -> np.ndarray:
        """kv blocks each (query block, batch·head) visits in its static parts: [QB, BH]."""
        key = ("work", B, M, N, cfg.block_m, cfg.block_n)
        if key not in self.tables:
            grid = Grid(M, N, cfg.block_m, cfg.block_n)
            if any(g.table_slot >= 0 for g in self.spec.groups):  # [slots, 2, QB] → [slots, QB]
                counts = np.diff(tab_off.cpu().numpy().astype(np.int64), axis=-1)
                table_rows = counts.reshape(-1, 2, grid.QB).sum(1)
            per_group = {}
            for g in self.spec.groups:
                rows = np.zeros(grid.QB, dtype=np.int64)
                for part in g.identity:
                    if part.strategy == "ranges":
                        rows += ranges_rows(atoms_of(part.node, numeric(M, N)), grid)[0]
                    elif part.strategy == "table":
                        rows += table_rows[g.table_slot]
                per_group[g.index] = rows
            self.tables[key] = np.stack([per_group[x] for x in self.spec.head_group] * B,
                                        axis=1)
        return self.tables[key]

    def _schedule(self, B: int, M: int, N: int, cfg: Config, device, tab_off,
                  dyn: dynamic.Indices | None) -> torch.Tensor:
        """Program order of the identity pass: (query block, batch·head) pairs by decreasing
        kv blocks visited (longest first; ties keep row-major order), packed m·B·H + bh.
        Dynamic parts add their estimated blocks, so their order is made per call."""
        work = self._static_work(B, M, N, cfg, tab_off)
        if dyn is not None:
            key = ("work", B, M, N, cfg.block_m, cfg.block_n, str(device))
            if key not in self.tables:  # a host copy per call would wait for the device
                self.tables[key] = torch.from_numpy(work).to(device)
            total = self.tables[key] + dyn.work(Grid(M, N, cfg.block_m, cfg.block_n))
            return torch.argsort(-total.flatten(), stable=True).to(torch.int32)
        key = ("schedule", B, M, N, cfg.block_m, cfg.block_n, str(device))
        if key not in self.tables:
            order = np.argsort(-work.ravel(), kind="stable")
            self.tables[key] = torch.from_numpy(order.astype(np.int32)).to(device)
        return self.tables[key]

    # -- launch --------------------------------------------------------------------------
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 scale: float | None = None, return_lse: bool = False,
                 doc_ids: torch.Tensor | None = None):
        out, lse, _ = self.forward(q, k, v, scale, doc_ids)
        return (out, lse) if return_lse else out

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                scale: float | None = None, doc_ids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dynamic.Estimate | None]:
        """(out, lse, estimate): `estimate` is what a dynamic pattern picked for these
        inputs (None for static patterns); pass it to `backward`, which never estimates."""
        self.check(q, k, v, scale, doc_ids)
        if upcast(q):
            out, lse, est = self.forward(q.float(), k.float(), v.float(), scale, doc_ids)
            return out.to(q.dtype), lse, est
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        est = None
        if self.spec.dynamic:  # estimated from the caller's q and scale, whatever their sign
            self.load()
            sm_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
            est = dynamic.pick(self.spec.dynamic, q, k, sm_scale, self.module)
        q, scale, _ = signed(q, scale)
        cfg = self.config(q, k, v, doc_ids)
        while True:
            try:
                return self.launch(q, k, v, cfg, scale, doc_ids, est)
            except Exception as e:
                # a specialisation _tune never built (another EVEN_N, alignment, …) is
                # compiled here, at its first launch: fall back as _tune does, and retry
                if not compile_failure(e) or not self._fall_back():
                    raise
                _warn_once(self, e)

    def check(self, q, k, v, scale, doc_ids, M: int | None = None, N: int | None = None
              ) -> None:
        """The inputs' checks (runtime.checks), the compiled head count and head_dim, and
        the pattern's parameters at (M, N) (default: q's and k's lengths), evaluated once
        per (M, N): a parameter below its minimum raises the reference's PatternError."""
        check_inputs(q, k, v, scale=scale, doc_ids=doc_ids, needs_pattern=False)
        check_row_span(q=q, k=k, v=v)
        if not q.is_cuda and not interpreting():
            raise RuntimeError(
                "attngen kernels run on CUDA tensors; on the CPU, set TRITON_INTERPRET=1 "
                "before Triton is imported to run them in Triton's interpreter, or call "
                "attngen.attention(..., backend='reference') (what backend='auto' does on "
                "the CPU)")
        if q.shape[3] != self.head_dim or q.shape[1] != len(self.spec.head_group):
            raise ValueError(f"kernel compiled for {len(self.spec.head_group)} heads of dim "
                             f"{self.head_dim}, got {q.shape[1]} heads of dim {q.shape[3]}")
        if self.spec.uses_doc and doc_ids is None:
            raise ValueError(f"`{self.pattern}` needs doc_ids: one int per key position")
        self.check_lengths(q.shape[2] if M is None else M, k.shape[2] if N is None else N)

    def check_lengths(self, M: int, N: int) -> None:
        """The pattern's parameters at these lengths, and no `where` arithmetic that leaves
        int32 (the kernels' position type) for them; once per (M, N)."""
        key = ("checked", M, N)
        if key not in self.tables:
            self.pattern.check(M, N)
            for node in walk(self.pattern.node):
                escape = int32_escape(node.cond, M, N) if node.op == "where" else None
                if escape is not None:
                    raise ValueError(
                        f"`{node.text}`: {sympy.sstr(escape)} leaves the int32 range the "
                        f"kernels compute positions in at M={M}, N={N}; rewrite it with "
                        "smaller factors (for example divide the other side), or use "
                        "backend='reference'")
            self.tables[key] = True

    def launch(self, q, k, v, cfg: Config, scale, doc_ids, est=None):
        """(out, lse, estimate) with configuration cfg; a dynamic pattern estimates from q
        and scale unless given `est`."""
        self.load()
        B, H, M, D = q.shape
        HKV, N = k.shape[1], k.shape[2]
        out = torch.empty_like(q)
        lse = torch.empty((B, H, M), device=q.device, dtype=torch.float32)
        if str(q.device) not in self.tables:  # the head → group map, once per device
            self.tables[str(q.device)] = torch.tensor(self.spec.head_group, dtype=torch.int32,
                                                      device=q.device)
        head_group = self.tables[str(q.device)]
        tab_off, tab_idx = self._tables(M, N, cfg, q.device, doc_ids)
        doc = doc_tensor(doc_ids, q.device)
        v_bad = nonfinite_heads(v)
        QB = -(-M // cfg.block_m)
        grid = (QB, B * H)
        tile_d = _pow2(D)  # tiles are powers of two; a padded head_dim is masked
        sm_scale = float(scale if scale is not None else 1.0 / math.sqrt(D))
        if est is None and self.spec.dynamic:
            est = dynamic.pick(self.spec.dynamic, q, k, sm_scale, self.module)
        dyn = (dynamic.indices(self.spec.dynamic, est, B, H, M,
                               Grid(M, N, cfg.block_m, cfg.block_n))
               if est is not None else None)
        use_tma = self.tma and q.is_cuda and dyn is None  # dynamic loops gather by pointer
        if use_tma:
            from triton.tools.tensor_descriptor import TensorDescriptor

            kk, vv = (TensorDescriptor(t, list(t.shape), list(t.stride()),
                                       [1, 1, cfg.block_n, tile_d]) for t in (k, v))
        else:
            kk, vv = k, v
        strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                   v.stride(0), v.stride(1), v.stride(2))
        shape = dict(HEAD_DIM=tile_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                     EVEN_D=D == tile_d, num_warps=cfg.warps, num_stages=cfg.stages)
        passes = [None] * self.spec.identity_pass + list(self.spec.periods)
        # every pass but the last writes fp32, so a 16-bit output is rounded once
        scratch = (torch.empty(q.shape, device=q.device, dtype=torch.float32)
                   if len(passes) > 1 and out.dtype != torch.float32 else out)
        dyn_args = dyn.kernel_args() if dyn is not None else ()
        scheduled = len(self.spec.groups) > 1
        schedule = (self._schedule(B, M, N, cfg, q.device, tab_off, dyn) if scheduled
                    else head_group)
        for i, s in enumerate(passes):
            dest = out if i == len(passes) - 1 else scratch
            dest_strides = strides + (dest.stride(0), dest.stride(1), dest.stride(2))
            # two launches per pass, each head in one: GUARD=True runs the heads whose V
            # may hold a non-finite entry (v_bad) with the per-block test, GUARD=False the
            # rest without it; a program of the other kind returns at once
            for guard in (False, True):
                if s is None:
                    self.module.attn_fwd[grid](
                        q, kk, vv, dest, lse, head_group, tab_off, tab_idx, doc, schedule,
                        v_bad, *dyn_args, *dest_strides, H, HKV, M, N, QB, sm_scale, D,
                        EVEN_N=N % cfg.block_n == 0, USE_TMA=use_tma, SCHEDULED=scheduled,
                        GUARD=guard, **shape)
                    continue
                # residue classes mod s: about M/s queries and N/s keys each
                qb_class = _cdiv(_cdiv(M, s), cfg.block_m)
                getattr(self.module, f"attn_fwd_mod{s}")[(s * qb_class, B * H)](
                    q, k, v, dest, lse, head_group, doc, scratch, v_bad, *dest_strides,
                    scratch.stride(0), scratch.stride(1), scratch.stride(2), H, HKV, M, N,
                    qb_class, sm_scale, D, EVEN_N=N % s == 0 and (N // s) % cfg.block_n == 0,
                    MERGE=i > 0, GUARD=guard, **shape)
        return out, lse, est

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None = None,
                 scale: float | None = None, doc_ids: torch.Tensor | None = None,
                 estimate: dynamic.Estimate | None = None):
        """(dq, dk, dv) of this kernel's attention, from its forward's out and lse and the
        gradients of both (dlse may be None); runs the generated backward module. A dynamic
        pattern needs its forward's `estimate` (from `forward`): the backward reuses it."""
        self.check(q, k, v, scale, doc_ids)
        if self.spec.dynamic and estimate is None:
            raise ValueError(f"`{self.pattern}` is input-dependent: its backward needs the "
                             "estimate of its forward (kernel.forward returns it)")
        return backward.launch(self, q, k, v, out, lse, dout, dlse, scale, doc_ids,
                               estimate=estimate)

    # -- tuning --------------------------------------------------------------------------
    def config(self, q, k, v, doc_ids) -> Config:
        if interpreting() or not q.is_cuda:
            return Config(*INTERPRETER_CONFIGS[0])
        bucket = f"{_bucket(q.shape[2])}x{_bucket(k.shape[2])}"
        if bucket not in self.tuned:
            saved = self._saved_tuning().get(bucket)
            if saved:
                self.tma = self.tma and bool(saved[4] if len(saved) > 4 else True)
                self.tuned[bucket] = Config(*saved[:4])
            else:
                self.tuned[bucket] = self._tune(q, k, v, doc_ids, bucket)
        return self.tuned[bucket]

    def _saved_tuning(self) -> dict:
        if self.path is None:
            return {}
        try:
            saved = json.loads((self.path / "tuning.json").read_text())
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def _tune(self, q, k, v, doc_ids, bucket: str) -> Config:
        import triton.testing

        best, best_ms = None, float("inf")
        for c in GPU_CONFIGS:
            if best is not None and not autotune():
                break  # untimed: the first configuration that builds
            cfg = Config(*c)
            tile_d = _pow2(self.head_dim)
            if cfg.block_m * tile_d > 128 * 256 or cfg.block_n * tile_d > 128 * 256:
                continue
            try:
                ms = triton.testing.do_bench(lambda: self.launch(q, k, v, cfg, None, doc_ids),
                                             warmup=5, rep=20)
            except Exception:  # a config this device or compiler cannot build or run
                continue
            if ms < best_ms:
                best, best_ms = cfg, ms
        if best is None and self._fall_back():
            return self._tune(q, k, v, doc_ids, bucket)
        if best is None:
            raise RuntimeError(f"no kernel configuration compiled for `{self.pattern}`")
        if not autotune() or self.path is None:
            return best  # an untimed choice is not worth remembering
        saved = self._saved_tuning()
        saved[bucket] = [best.block_m, best.block_n, best.warps, best.stages, int(self.tma)]
        tmp = self.path / f".tuning-{os.getpid()}.json"
        try:
            tmp.write_text(json.dumps(saved, indent=2))
            os.replace(tmp, self.path / "tuning.json")
        except OSError:  # a read-only or full cache: the choice is not remembered
            tmp.unlink(missing_ok=True)
        return best

    def _fall_back(self) -> bool:
        """Switches this kernel to a plainer form when Triton cannot build the current one:
        pointer loads instead of tensor descriptors (Triton 3.6 fails to pipeline some
        descriptor loads; seen: head_dim 64), then the split-loop rendering of the same
        pattern (3.6's pipeliner rejects the fused loops at some shapes; seen: head_dim 64).
        False when there is nothing plainer left."""
        if self.tma:
            self.tma = False
            return True
        if self.fallback is None:
            return False
        plain = self.fallback()
        self.spec, self.key, self.path, self.module = plain.spec, plain.key, plain.path, None
        self.code = plain.code
        self.tma, self.fallback, self.tables = plain.tma, None, {}
        return True


def compile_failure(e: BaseException) -> bool:
    """Whether `e` is Triton failing to build (or load) a kernel: its front end, an MLIR pass
    (a RuntimeError from the pass manager), ptxas, or too many resources. Anything else,
    bad inputs or a failing launch, is not."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    return (isinstance(e, (CompilationError, PTXASError, OutOfResources))
            or (isinstance(e, RuntimeError) and "PassManager::run failed" in str(e)))


_WARNED: set[str] = set()


def _warn_once(kernel: Kernel, e: BaseException) -> None:
    """One warning per pattern that a launch-time compile failure switched to a plainer
    form."""
    text = str(kernel.pattern)
    if text not in _WARNED:
        _WARNED.add(text)
        last = (str(e).strip().splitlines() or [""])[-1][:200]
        warnings.warn(f"attngen: Triton could not compile a specialisation of `{text}` "
                      f"({type(e).__name__}: {last}); falling back to a plainer kernel "
                      "(pointer loads, then split loops; decode: the prefill kernel)",
                      RuntimeWarning, stacklevel=3)


def nonfinite_heads(v: torch.Tensor) -> torch.Tensor:
    """int8 [B, Hkv]: 1 where a head's V may hold a NaN or ±inf — its sum in fp32 is not
    finite (a NaN or inf entry always makes it so; an overflowing sum of finite values
    only sends that head through the exact per-block test). One reduction over V, so
    the kernels test blocks only for such heads."""
    total = torch.sum(v, dim=(2, 3), dtype=torch.float32)
    return (~torch.isfinite(total)).to(torch.int8).contiguous()


def _group_csr(node, grid: Grid, device, doc_ids):
    """[(offsets, indices) of the partial blocks, (…) of the full blocks] on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        doc = None if doc_ids is None else doc_ids.to(device=device, dtype=torch.int64)
        return [csr_of(c) for c in block_classes(node, grid, device, doc)]
    lay = layout(Pattern(node), grid.M, grid.N, block=(grid.BM, grid.BN), doc_ids=doc_ids)
    return [(torch.from_numpy(c.offsets.astype(np.int32)), torch.from_numpy(c.indices))
            for c in (lay.partial[0], lay.full[0])]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()
