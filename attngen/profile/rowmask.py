"""A head's mask a chunk of query rows at a time, so no head's M×N mask is ever stored.

    rows = RowMask(node, q, k, scale, M, N)      # estimates the dynamic parts once
    mask = rows(positions)                       # bool [B or 1, len(positions), N]

Static parts come from the pattern's predicate evaluated on index tensors
(`attngen.codegen.torch_predicate`, the same predicate as `Pattern.mask`), on the device
of the positions; dynamic primitives from the run-time estimators
(`attngen.runtime.dynamic`: vertical_slash's picked keys and diagonals, block_topk's and
block_cover's picked g-blocks), estimated once from all of q and k (q [B, M, D], k [B, N, D],
one batch element per head) and read back per row chunk.
"""
from __future__ import annotations

import functools

import torch

from attngen.codegen.torch_predicate import combine, predicate_fn
from attngen.ir.node import Node
from attngen.runtime.dynamic import block_picks, parameters, vertical_slash_sets


@functools.lru_cache(maxsize=256)
def _predicate(node: Node, M: int, N: int):
    return predicate_fn(node, M, N)


class RowMask:
    def __init__(self, node: Node, q: torch.Tensor | None, k: torch.Tensor | None,
                 scale: float, M: int, N: int):
        self.node, self.M, self.N = node, M, N
        self._picks: dict[Node, tuple] = {}
        if node.is_dynamic:
            if q is None or k is None:
                raise ValueError(f"`{node.text}` is dynamic: its mask needs q and k")
            self._estimate(node, q, k, scale)

    def _estimate(self, node: Node, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        if not node.is_dynamic or node in self._picks:
            return
        if node.op != "prim":
            for child in node.children:
                self._estimate(child, q, k, scale)
            return
        params = parameters(node, self.M, self.N)
        if node.name == "vertical_slash":
            keys, offsets = vertical_slash_sets(q, k, int(params[0]), int(params[1]), scale)
            vert = torch.zeros(q.shape[0], self.N, dtype=torch.bool, device=q.device)
            diag = torch.zeros_like(vert).scatter_(1, offsets, True)
            self._picks[node] = ("vertical_slash", vert.scatter_(1, keys, True), diag)
        elif node.name in ("block_topk", "block_cover"):
            picked = block_picks(q, k, node.name, params, scale)
            self._picks[node] = ("block", picked, int(params[1]))
        else:
            raise NotImplementedError(f"no estimate for `{node.text}`")

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """bool [B or 1, len(positions), N] at these absolute query positions (row i of the
        bottom-right aligned M×N mask is position i + N − M)."""
        return self._rows(self.node, positions)

    def _rows(self, node: Node, pos: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(self.N, device=pos.device)
        if not node.is_dynamic:
            return _predicate(node, self.M, self.N)(pos[:, None], cols[None, :])[None]
        if node.op == "prim":
            return self._dynamic_rows(node, pos, cols)
        parts = [self._rows(c, pos) for c in node.children]
        return combine(node, parts)

    def _dynamic_rows(self, node: Node, pos: torch.Tensor, cols: torch.Tensor
                      ) -> torch.Tensor:
        kind, picks, extra = self._picks[node]
        causal = (cols[None, :] <= pos[:, None]) & (pos >= 0)[:, None]  # [C, N]
        if kind == "vertical_slash":  # k <= q and (vert[k] or diag[q - k])
            offset = (pos[:, None] - cols[None, :]).clamp(min=0)
            return (extra[:, offset] | picks[:, None, :]) & causal
        g = extra
        return picks[:, (pos // g).clamp(min=0)][:, :, cols // g] & causal
