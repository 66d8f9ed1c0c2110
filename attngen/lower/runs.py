"""Block classifications held as runs: per query-block row, maximal spans of kv blocks that
share a class. EMPTY is implicit (not stored), so memory is O(non-empty runs).

Classes: 0 EMPTY, 1 PARTIAL, 2 FULL, 3 UNKNOWN. UNKNOWN comes from combining two PARTIAL
blocks (P | P may be FULL, P & P may be EMPTY); it is resolved exactly at the end by
evaluating the elements of just those blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY, PARTIAL, FULL, UNKNOWN = 0, 1, 2, 3

# Truth tables over (left class, right class); U behaves as "could be anything in range".
OR = np.array([[0, 1, 2, 3], [1, 3, 2, 3], [2, 2, 2, 2], [3, 3, 2, 3]], dtype=np.uint8)
AND = np.array([[0, 0, 0, 0], [0, 3, 1, 3], [0, 1, 2, 3], [0, 3, 3, 3]], dtype=np.uint8)
# region & ~x: the left operand marks the region (any non-empty class), the right is negated.
AND_NOT = np.array([[0, 0, 0, 0], [2, 1, 0, 3], [2, 1, 0, 3], [2, 1, 0, 3]], dtype=np.uint8)


@dataclass(frozen=True)
class Runs:
    rows: int  # number of query blocks
    cols: int  # number of kv blocks
    row: np.ndarray    # int64, sorted with start
    start: np.ndarray  # int64, first kv block of the run
    stop: np.ndarray   # int64, one past the last
    cls: np.ndarray    # uint8 class of every block of the run

    @staticmethod
    def build(rows: int, cols: int, row, start, stop, cls) -> Runs:
        row, start, stop, cls = np.broadcast_arrays(
            np.asarray(row, dtype=np.int64), np.asarray(start, dtype=np.int64),
            np.asarray(stop, dtype=np.int64), np.asarray(cls, dtype=np.uint8))
        row, start, stop, cls = row.ravel(), start.ravel(), stop.ravel(), cls.ravel()
        start, stop = np.clip(start, 0, cols), np.clip(stop, 0, cols)
        keep = (stop > start) & (cls != EMPTY)
        row, start, stop, cls = row[keep], start[keep], stop[keep], cls[keep]
        order = np.lexsort((start, row))
        return Runs(rows, cols, row[order], start[order], stop[order], cls[order])

    @staticmethod
    def everything(rows: int, cols: int) -> Runs:
        return Runs.build(rows, cols, np.arange(rows), 0, cols, FULL)

    @staticmethod
    def from_blocks(rows: int, cols: int, row, col, cls) -> Runs:
        return Runs.build(rows, cols, row, col, np.asarray(col) + 1, cls).coalesce()

    def _keys(self, pos: np.ndarray) -> np.ndarray:
        return self.row * (self.cols + 1) + pos

    def coalesce(self) -> Runs:
        """Merge touching runs of the same class in the same row."""
        if len(self.row) < 2:
            return self
        joins = (self.row[1:] == self.row[:-1]) & (self.start[1:] == self.stop[:-1]) & \
                (self.cls[1:] == self.cls[:-1])
        first = np.concatenate([[True], ~joins])
        last = np.concatenate([~joins, [True]])
        return Runs(self.rows, self.cols, self.row[first], self.start[first], self.stop[last],
                    self.cls[first])

    def class_at(self, keys: np.ndarray) -> np.ndarray:
        """Class of the blocks at flat keys row*(cols+1)+col."""
        starts = self._keys(self.start)
        idx = np.searchsorted(starts, keys, side="right") - 1
        safe = np.maximum(idx, 0)
        inside = (idx >= 0) & (self._keys(self.stop)[safe] > keys) if len(starts) else \
            np.zeros(keys.shape, dtype=bool)
        return np.where(inside, self.cls[safe] if len(starts) else 0, EMPTY).astype(np.uint8)

    def combine(self, other: Runs, table: np.ndarray) -> Runs:
        """Elementwise `table[self, other]` over all blocks, in O(runs log runs)."""
        width = self.cols + 1
        bounds = np.sort(np.concatenate([
            self._keys(self.start), self._keys(self.stop),
            other._keys(other.start), other._keys(other.stop)]))
        if len(bounds):  # dedupe the sorted keys (np.unique's hashing is slower here)
            bounds = bounds[np.concatenate([[True], bounds[1:] != bounds[:-1]])]
        if len(bounds) < 2:
            return Runs.build(self.rows, self.cols, [], [], [], [])
        lo, hi = bounds[:-1], bounds[1:]
        same_row = (lo // width) == (hi // width)
        lo, hi = lo[same_row], hi[same_row]
        cls = table[self.class_at(lo), other.class_at(lo)]
        return Runs.build(self.rows, self.cols, lo // width, lo % width, hi % width,
                          cls).coalesce()

    def restrict(self, region: Runs) -> Runs:
        return region.combine(self, _REGION_AND)

    def nonempty(self) -> Runs:
        return Runs(self.rows, self.cols, self.row, self.start, self.stop,
                    np.full_like(self.cls, FULL))

    def blocks(self, cls: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expand runs (optionally of one class) to (row, col, class) per block."""
        sel = slice(None) if cls is None else self.cls == cls
        row, start, stop, c = self.row[sel], self.start[sel], self.stop[sel], self.cls[sel]
        lengths = stop - start
        total = int(lengths.sum())
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        col = np.arange(total, dtype=np.int64) - offsets + np.repeat(start, lengths)
        return np.repeat(row, lengths), col, np.repeat(c, lengths)


# Restricting x to a region keeps x's class inside the region and EMPTY outside.
_REGION_AND = np.array([[0, 0, 0, 0], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]], dtype=np.uint8)
