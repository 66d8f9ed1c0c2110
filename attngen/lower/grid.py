"""Block geometry: M queries (bottom-right aligned) × N keys cut into BM × BN tiles."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    M: int
    N: int
    BM: int
    BN: int

    @property
    def offset(self) -> int:
        """Absolute position of query row 0 (bottom-right alignment)."""
        return self.N - self.M

    @property
    def QB(self) -> int:
        return -(-self.M // self.BM)

    @property
    def KB(self) -> int:
        return -(-self.N // self.BN)

    def q_bounds(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last absolute query position of query blocks m."""
        return m * self.BM + self.offset, np.minimum((m + 1) * self.BM, self.M) - 1 + self.offset

    def k_bounds(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return j * self.BN, np.minimum((j + 1) * self.BN, self.N) - 1

    def area(self, m: np.ndarray, j: np.ndarray) -> np.ndarray:
        qa, qb = self.q_bounds(m)
        ka, kb = self.k_bounds(j)
        return (qb - qa + 1) * (kb - ka + 1)
