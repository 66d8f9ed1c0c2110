"""A pattern's predicate as a torch function of (q_pos, k_pos): FlexAttention's mask_mod
and exact allowed-pair counts on the GPU use it, so no M×N mask is ever stored."""
from __future__ import annotations

import types

import torch

from attngen.codegen.printer import Printer
from attngen.ir.arith import M, N, k, q
from attngen.ir.node import Node
from attngen.ir.primitives import doc


def _t(x, like):
    # torch.full, not as_tensor: a fill on the device, where as_tensor copies from the host
    # (not allowed while a CUDA graph is being captured)
    return x if isinstance(x, torch.Tensor) else torch.full((), x, device=like.device)


def _pair(a, b):
    ref = a if isinstance(a, torch.Tensor) else b
    return _t(a, ref), _t(b, ref)


# What the printed text calls, for lib="torch": scalars and tensors mix freely.
_SHIM = types.SimpleNamespace(
    minimum=lambda a, b: torch.minimum(*_pair(a, b)),
    maximum=lambda a, b: torch.maximum(*_pair(a, b)),
    where=lambda c, a, b: torch.where(c, *_pair(a, b)),
    abs=torch.abs,
    exp2=lambda x: torch.exp2(x),
    floor=torch.floor,
)


def _bitlen(x):
    n = torch.zeros_like(x)
    for i in range(31):
        n = n + (x >= (1 << i)).to(x.dtype)
    return n


_NAMESPACE = {
    "torch": _SHIM,
    "_floordiv": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "_mod": lambda a, b: torch.remainder(a, b),
    "_bitlen": _bitlen,
    "_ffloor": lambda x: torch.floor(x).to(torch.int64),
    "True": True,
    "False": False,
}


def combine(node: Node, parts: list[torch.Tensor]) -> torch.Tensor:
    """The boolean mask of an `or` / `and` / `not` node from its children's masks (which
    broadcast against each other)."""
    if node.op == "or":
        return torch.stack(torch.broadcast_tensors(*parts)).any(0)
    if node.op == "and":
        return torch.stack(torch.broadcast_tensors(*parts)).all(0)
    if node.op == "not":
        return ~parts[0]
    raise ValueError(f"unexpected node `{node.text}`")


def predicate_source(node: Node) -> str:
    printer = Printer({q: "q_pos", k: "k_pos", N: "N", M: "M"}, "torch",
                      {doc: "DOC[{}]"})
    return printer(node.predicate)


def raw_predicate_fn(node: Node, M_val: int, N_val: int,
                     doc_ids: torch.Tensor | None = None):
    """f(q_pos, k_pos) -> the printed predicate as is: a bool tensor of whatever shape its
    terms broadcast to, or a Python bool for a constant."""
    body = predicate_source(node)
    namespace = dict(_NAMESPACE, N=N_val, M=M_val, DOC=doc_ids)
    return eval(f"lambda q_pos, k_pos: {body}", namespace)


def predicate_fn(node: Node, M_val: int, N_val: int, doc_ids: torch.Tensor | None = None):
    """f(q_pos, k_pos) -> bool tensor, with N and M bound."""
    fn = raw_predicate_fn(node, M_val, N_val, doc_ids)
    return lambda qp, kp: torch.broadcast_to(_t(fn(qp, kp), qp),
                                             torch.broadcast_shapes(qp.shape, kp.shape))


def mask_mod(nodes: list[Node], head_index: list[int], M_val: int, N_val: int,
             doc_ids: torch.Tensor | None = None, device=None):
    """A FlexAttention mask_mod: per head, that head's predicate (bottom-right aligned).
    `device`: where the head → pattern table lives (the attention's device)."""
    fns = [predicate_fn(n, M_val, N_val, doc_ids) for n in nodes]
    offset = N_val - M_val
    if len(fns) == 1:
        f = fns[0]
        return lambda b, h, q_idx, kv_idx: f(q_idx + offset, kv_idx)
    table = torch.tensor(head_index, device=device)

    def mod(b, h, q_idx, kv_idx):
        out = fns[0](q_idx + offset, kv_idx)
        for i, f in enumerate(fns[1:], start=1):
            out = torch.where(table[h] == i, f(q_idx + offset, kv_idx), out)
        return out

    return mod


def count_allowed(node: Node, M_val: int, N_val: int, device, rows_per_chunk: int = 1024,
                  doc_ids: torch.Tensor | None = None) -> int:
    """Exact number of allowed (q, k) pairs, evaluated a chunk of query rows at a time."""
    f = predicate_fn(node, M_val, N_val, doc_ids)
    cols = torch.arange(N_val, device=device)[None, :]
    total = 0
    for r0 in range(0, M_val, rows_per_chunk):
        rows = torch.arange(r0, min(M_val, r0 + rows_per_chunk), device=device)[:, None]
        total += int(f(rows + (N_val - M_val), cols).sum())
    return total
