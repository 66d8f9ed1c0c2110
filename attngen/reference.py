"""Dense PyTorch attention with the exact mask: the oracle every attngen kernel is tested against.

    import attngen
    from attngen.reference import attention
    out, lse = attention(q, k, v, "causal & (sink(4) | local(16))", return_lse=True)

This is plain masked softmax attention written with ordinary torch ops, so it is
differentiable in q, k and v and runs on any device (it is also the CPU backend of
`attngen.attention`). It follows DESIGN.md §2 and §6:

- q `[B, Hq, M, D]`, k and v `[B, Hkv, N, D]` (v may have its own last dim), `Hq % Hkv == 0`;
  query head h reads kv head `h // (Hq // Hkv)`. K/V are never repeated for GQA: each kv
  head's group of query heads is multiplied against that one kv head.
- Queries are bottom-right aligned: row i sits at absolute position `i + N - M`.
- Arithmetic is fp32 (fp64 if any input is fp64) whatever the input dtype; the output is
  cast back to q.dtype; the log-sum-exp is natural-log fp32 `[B, Hq, M]`.
- A row with no allowed key gives output exactly 0 and LSE exactly -inf, and no NaN
  appears in the forward or the backward pass (the softmax max is detached and replaced by
  0 on such rows; the normaliser is replaced by 1 there).
- A non-finite value in q, k or v reaches only the rows that may attend to that query or
  key (a masked score is never multiplied into the output): a row that may attend to a
  key whose row of v is non-finite gives NaN, every other row is what it would be with
  that value replaced. doc_ids must be integers (float ids are refused).

The M×N mask is never built. The allowed set is the elementwise predicate of the
pattern, evaluated exactly by `attngen.ir.pattern.evaluate_node` for one chunk of
`chunk_rows` query rows at a time, once per distinct head pattern (a `heads { … }`
mixture gives each head its own node; identical nodes share one evaluation). So a
32K-token check needs O(chunk_rows · N) memory for the mask, not O(M · N).

The matrix products run on fixed tiles of `min(64, M)` query rows (the last tile may be
shorter). Tiles do not depend on `chunk_rows`, so the result is bitwise the same for every
chunk size: BLAS libraries (MKL, cuBLAS) may round a row differently depending on how many
rows share its product, and fixing the tiles removes that dependence.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from attngen.dsl import parse
from attngen.ir.node import Node
from attngen.ir.pattern import Pattern, evaluate_node

__all__ = ["attention"]

TILE_ROWS = 64  # query rows per matrix product; independent of chunk_rows (see module doc)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              pattern: Pattern | str | None = None, *, mask: torch.Tensor | None = None,
              scale: float | None = None, return_lse: bool = False, doc_ids=None,
              chunk_rows: int = 1024, kv_heads_pattern: int | None = None,
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention, the reference semantics of attngen.

    Args:
        q, k, v: `[B, Hq, M, D]`, `[B, Hkv, N, D]`, `[B, Hkv, N, Dv]`; `Hq % Hkv == 0`.
        pattern: an `attngen.Pattern` or DSL text. With neither `pattern` nor `mask`,
            every key is allowed.
        mask: instead of a pattern, a precomputed boolean mask `[Hq or 1, M, N]`
            (True = allowed), in bottom-right aligned row order like `pattern.mask`.
        scale: softmax scale; defaults to `1/sqrt(D)`.
        return_lse: also return the natural-log log-sum-exp, fp32 `[B, Hq, M]`.
        doc_ids: int tensor or array `[N]` for patterns that use `document`.
        chunk_rows: query rows whose mask is evaluated at once (rounded up to whole
            tiles of `min(64, M)` rows). Bounds memory; never changes the result.
        kv_heads_pattern: how many KV heads the indices of a `kv_heads { … }` pattern
            refer to; defaults to Hkv. Set it when K/V were already repeated for GQA
            (e.g. by a Hugging Face model) but the pattern names the model's KV heads.

    Returns:
        The output `[B, Hq, M, Dv]` in q.dtype, or `(output, lse)` with `return_lse`.

    >>> q = k = v = torch.randn(1, 2, 8, 16)
    >>> attention(q, k, v, "causal").shape
    torch.Size([1, 2, 8, 16])
    """
    B, Hq, Hkv, M, N, D = _check_shapes(q, k, v)
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    G, Dv = Hq // Hkv, v.shape[-1]
    if M == 0 or N == 0:  # nothing to attend to: the empty-row convention for every row
        out = torch.zeros(B, Hq, M, Dv, dtype=q.dtype, device=q.device)
        lse = torch.full((B, Hq, M), -math.inf, dtype=torch.float32, device=q.device)
        return (out, lse) if return_lse else out
    allowed = _mask_source(pattern, mask, Hq, Hkv, M, N, doc_ids, kv_heads_pattern,
                           q.device)

    cdtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else torch.float32
    qc, kc, vc = q.to(cdtype), k.to(cdtype), v.to(cdtype)
    # A non-finite value in a row of V reaches only the rows that may attend to that key:
    # the product p·V runs on V with those values zeroed (a masked p = 0 times NaN would
    # otherwise poison every row), and the rows that see such a key become NaN.
    finite = torch.isfinite(vc)
    bad = None
    if not bool(finite.all()):
        bad = ~finite.all(-1)  # [B, Hkv, N]
        vc = torch.where(finite, vc, torch.zeros((), dtype=cdtype, device=vc.device))
    tile = min(TILE_ROWS, M)
    chunk = -(-chunk_rows // tile) * tile
    # Without autograd, tiles go straight into preallocated results: many small long-lived
    # tensors between the large short-lived ones fragment the heap (measured: 2.4 GB vs
    # 0.3 GB at N=16K). With autograd, the tiles are concatenated at the end.
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    out = None if grad else torch.empty(B, Hq, M, Dv, dtype=cdtype, device=q.device)
    lse = None if grad else torch.empty(B, Hq, M, dtype=cdtype, device=q.device)
    outs: list[list[torch.Tensor]] = [[] for _ in range(Hkv)]
    lses: list[list[torch.Tensor]] = [[] for _ in range(Hkv)]
    for c0 in range(0, M, chunk):
        c1 = min(c0 + chunk, M)
        group_masks = allowed(c0, c1)  # kv head → bool [G or 1, c1 - c0, N] or None
        for g in range(Hkv):
            k_g, v_g = kc[:, g], vc[:, g]  # [B, N, D], [B, N, Dv]
            heads = slice(g * G, (g + 1) * G)
            for t0 in range(c0, c1, tile):
                t1 = min(t0 + tile, c1)
                m_t = None if group_masks is None else group_masks[g][:, t0 - c0:t1 - c0]
                o, l = _tile(qc[:, heads, t0:t1], k_g, v_g, m_t, scale,
                             None if bad is None else bad[:, g])
                if grad:
                    outs[g].append(o)
                    lses[g].append(l)
                else:
                    out[:, heads, t0:t1] = o
                    lse[:, heads, t0:t1] = l
    if grad:
        out = torch.cat([torch.cat(o, dim=2) for o in outs], dim=1)
        lse = torch.cat([torch.cat(l, dim=2) for l in lses], dim=1)
    out = out.to(q.dtype)
    return (out, lse.to(torch.float32)) if return_lse else out


def _tile(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
          scale: float, bad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One tile of rows for the G query heads of one kv head: q `[B, G, T, D]`,
    k `[B, N, D]`, v `[B, N, Dv]`, allowed `[G or 1, T, N]` or None (all keys); bad `[B, N]`
    or None: keys whose row of v was non-finite (v holds zeros there); rows that may
    attend to one give NaN."""
    B, G, T, D = q.shape
    s = torch.matmul(q.reshape(B, G * T, D), k.transpose(-1, -2)).view(B, G, T, -1) * scale
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    m = s.amax(dim=-1, keepdim=True).detach()  # the shift cancels exactly: no gradient needed
    empty = torch.isneginf(m)  # rows with no allowed key
    m = m.masked_fill(empty, 0.0)
    e = torch.exp(s - m)  # exactly 0 at masked keys, everywhere on empty rows
    denom = e.sum(dim=-1, keepdim=True)
    safe = torch.where(empty, torch.ones_like(denom), denom)
    o = torch.matmul(e.view(B, G * T, -1), v).view(B, G, T, -1) / safe
    o = o.masked_fill(empty, 0.0)
    if bad is not None:
        hit = bad[:, None, None, :] if allowed is None else bad[:, None, None, :] & allowed
        o = o.masked_fill(hit.any(-1, keepdim=True), math.nan)
    lse = torch.where(empty, torch.full_like(m, -math.inf), m + torch.log(safe))
    return o, lse.squeeze(-1)


def _mask_source(pattern, mask, Hq: int, Hkv: int, M: int, N: int, doc_ids,
                 kv_heads_pattern: int | None, device: torch.device):
    """A function (r0, r1) → per kv head a bool `[G or 1, r1 - r0, N]` mask, or None."""
    G = Hq // Hkv
    if pattern is not None and mask is not None:
        raise ValueError("pass either a pattern or a precomputed mask, not both")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.dim() != 3 or mask.shape[0] not in (1, Hq) or tuple(mask.shape[1:]) != (M, N):
            raise ValueError(f"mask must have shape [{Hq} or 1, {M}, {N}] ([Hq or 1, M, N]), "
                             f"got {list(mask.shape)}")
        if mask.shape[0] == 1:
            return lambda r0, r1: [mask[:, r0:r1].to(device)] * Hkv
        return lambda r0, r1: [mask[g * G:(g + 1) * G, r0:r1].to(device) for g in range(Hkv)]
    if pattern is None:
        return lambda r0, r1: None

    if isinstance(pattern, str):
        pattern = parse(pattern)
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be an attngen.Pattern or DSL text, "
                        f"got {type(pattern).__name__}")
    if pattern.is_dynamic:
        raise NotImplementedError(
            f"the reference does not run dynamic patterns yet: {pattern} picks its keys at "
            f"run time (DESIGN.md §5); pass the selected keys as a precomputed `mask`")
    pattern.check(M, N)
    if kv_heads_pattern is None:
        kv_heads_pattern = Hkv
    if (not isinstance(kv_heads_pattern, int) or kv_heads_pattern < 1
            or Hq % kv_heads_pattern):
        raise ValueError(f"kv_heads_pattern must be a positive divisor of Hq={Hq}, "
                         f"got {kv_heads_pattern!r}")
    nodes = pattern.head_nodes(Hq, kv_heads_pattern)
    if doc_ids is not None:
        doc_ids = np.asarray(doc_ids.detach().cpu() if isinstance(doc_ids, torch.Tensor)
                             else doc_ids)
        if doc_ids.dtype.kind not in "iu":  # 0.0 and 0.5 are not one document
            raise TypeError(f"doc_ids must hold integers, got {doc_ids.dtype}")
        if doc_ids.shape != (N,):
            raise ValueError(f"doc_ids must have shape [N] = [{N}], got {list(doc_ids.shape)}")
    cols = np.arange(N, dtype=np.int64)[None, :]

    def chunk(r0: int, r1: int) -> list[torch.Tensor]:
        rows = np.arange(r0, r1, dtype=np.int64)[:, None] + (N - M)  # absolute positions
        cache: dict[Node, torch.Tensor] = {}
        for node in nodes:
            if node not in cache:
                a = evaluate_node(node, rows, cols, M, N, doc_ids)
                cache[node] = torch.from_numpy(np.array(a, dtype=bool)).to(device)
        groups = []
        for g in range(Hkv):
            heads = nodes[g * G:(g + 1) * G]
            if all(n is heads[0] for n in heads):
                groups.append(cache[heads[0]][None])  # one mask broadcast over the group
            else:
                groups.append(torch.stack([cache[n] for n in heads]))
        return groups

    return chunk


def _check_shapes(q, k, v) -> tuple[int, int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            shape = "[B, Hq, M, D]" if name == "q" else "[B, Hkv, N, D]"
            raise ValueError(f"{name} must have rank 4 {shape}, got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, M, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    Hkv, N = k.shape[1], k.shape[2]
    if tuple(v.shape[1:3]) != (Hkv, N):
        raise ValueError(f"k and v must agree on [Hkv, N]: k {list(k.shape)}, v {list(v.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of kv heads Hkv={Hkv}")
    if k.shape[3] != D:
        raise ValueError(f"head dim of q ({D}) and k ({k.shape[3]}) must match")
    return B, Hq, Hkv, M, N, D
