"""Where each batch row's tokens lie in the key/value cache: per-row key ranges instead of an
M×N mask.

transformers asks the attention implementation's *mask function* for a mask once per
forward. attngen registers `key_ranges` there: it returns a `KeyRanges` (a few scalars and
HF's own 2-D padding mask, O(B·N) bits), never a 4-D tensor. Each batch row b holds its real
tokens at cache positions starts[b] … ends[b] − 1 (left padding before them, right padding
after); the queries of this forward are cache positions q_start … q_start + M − 1. The
kernels run every row in its own frame (positions counted from starts[b]), so a padded row
gives what the row alone would; query rows outside the row's range are padding and give 0.

On the kernel path a row's real tokens must be one contiguous run (left or right padding,
as tokenizers and `generate` make them); holes inside a row are refused where the host
reads the ranges (prefill) and are not checked in a decode step, which never synchronises.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KeyRanges:
    """The compact mask that reaches `attention` (see the module docstring)."""

    batch: int
    q_length: int
    q_start: int | torch.Tensor  # cache position of the first query (a tensor under graphs)
    padding: torch.Tensor | None  # HF's 2-D mask [B, ≥ q_start + M] (True = a real token)
    _host: tuple | None = field(default=None, repr=False)
    # generate() may build the mask ahead of the forward and pass it back in as the
    # forward's attention_mask; transformers then takes anything with 4 dimensions as
    # already prepared
    ndim = 4

    @property
    def end(self) -> int | torch.Tensor:
        """One past the newest query's cache position."""
        return self.q_start + self.q_length

    def device_ranges(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(starts, ends) int32 [B] on `device`, computed there (no host synchronisation)."""
        B = self.batch
        end = self.end
        if isinstance(end, torch.Tensor):
            ends = end.to(device=device, dtype=torch.int32).reshape(-1)[:1].expand(B)
        else:
            ends = torch.full((B,), int(end), dtype=torch.int32, device=device)
        if self.padding is None:
            return torch.zeros(B, dtype=torch.int32, device=device), ends.contiguous()
        real = self.padding.to(device=device, dtype=torch.int32)
        width = real.shape[1]
        starts = real.argmax(1).to(torch.int32)  # first real token (argmax: first maximum)
        last = width - 1 - real.flip(1).argmax(1).to(torch.int32)  # last real token
        return starts, torch.minimum(ends, last + 1).contiguous()

    def host_ranges(self) -> tuple[list[int], list[int], int]:
        """(starts, ends, q_start) as Python ints: one host synchronisation per forward,
        shared by every layer. Raises ValueError for a row whose real tokens have holes."""
        if self._host is None:
            device = self.padding.device if self.padding is not None else "cpu"
            starts, ends = self.device_ranges(device)
            q_start = int(self.q_start)
            if self.padding is not None:
                real = self.padding[:, :q_start + self.q_length].to(torch.int32).sum(1)
                holes = (real != (ends - starts).clamp(min=0)).nonzero().flatten().tolist()
                if holes:
                    raise ValueError(
                        f"batch rows {holes} have padding between real tokens; attngen's "
                        "kernels take one run of tokens per row (left or right padding): "
                        "use hf.apply(..., backend='masks') for such masks")
            self._host = (starts.tolist(), ends.tolist(), q_start)
        return self._host

    def is_dense(self, key_length: int) -> bool:
        """True when every row holds the whole key tensor (no padding, no spare cache)."""
        if self.padding is not None:
            return False
        return isinstance(self.end, int) and self.end == key_length


def key_ranges(batch_size: int, kv_length: int | None = None, attention_mask=None,
               q_length: int | None = None, q_offset=None, cache_position=None,
               **_) -> KeyRanges:
    """transformers' mask-interface function for attngen: the `KeyRanges` of this forward.
    Takes both calling conventions (`q_length`/`q_offset`, and the older `cache_position`)."""
    if isinstance(attention_mask, KeyRanges):  # prepared by generate() for this forward
        return attention_mask
    if cache_position is not None and q_length is None:
        q_length = int(cache_position.shape[0])
        q_offset = cache_position[0]
    if q_length is None:
        raise TypeError("the mask function needs q_length or cache_position")
    q_start = 0 if q_offset is None else q_offset
    if isinstance(q_start, torch.Tensor) and not torch.compiler.is_compiling() and (
            q_start.device.type == "cpu"):
        q_start = int(q_start)
    padding = None if attention_mask is None else attention_mask.to(torch.bool)
    return KeyRanges(batch_size, int(q_length), q_start, padding)
