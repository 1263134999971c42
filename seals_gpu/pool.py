"""Candidate pools: per unit, the sorted ids of the neighbours of its labeled set, minus the labeled ids.

For all units together the pools form one segmented (CSR) batch: ``offsets`` (U+1,) and ``ids``. All-mode
units have no materialised pool: their candidates are every unlabeled id, streamed by the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CandidatePool:
    """One unit's pool. ``ids`` sorted int64; never holds a labeled id; only grows (apart from ids that
    get labeled, which move to the labeled set)."""

    ids: np.ndarray

    @classmethod
    def empty(cls) -> CandidatePool:
        return cls(np.empty(0, dtype=np.int64))

    def grow(self, neighbors: np.ndarray, labeled_sorted: np.ndarray) -> np.ndarray:
        """Add ``neighbors`` (any order, may repeat, -1 ignored) that are not labeled; return the new ids."""
        nb = np.unique(np.asarray(neighbors, dtype=np.int64))
        nb = nb[nb >= 0]
        nb = nb[~_isin_sorted(nb, labeled_sorted)]
        new = nb[~_isin_sorted(nb, self.ids)]
        if new.size:
            self.ids = np.union1d(self.ids, new)
        return new

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Drop ``ids`` (just labeled) from the pool; return those that were in it."""
        ids = np.asarray(ids, dtype=np.int64)
        hit = _isin_sorted(ids, self.ids)
        if hit.any():
            self.ids = self.ids[~_isin_sorted(self.ids, np.sort(ids[hit]))]
        return ids[hit]

    def __len__(self) -> int:
        return int(self.ids.size)


def _isin_sorted(x: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    """``np.isin(x, sorted_ref)`` for a sorted reference, by binary search (O(n log m))."""
    if sorted_ref.size == 0 or x.size == 0:
        return np.zeros(x.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ref, x), sorted_ref.size - 1)
    return sorted_ref[pos] == x


def isin_sorted(x: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    return _isin_sorted(np.asarray(x, dtype=np.int64), sorted_ref)


def to_csr(pools: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, offsets)`` of a list of per-unit id arrays."""
    offsets = np.zeros(len(pools) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([p.size for p in pools])
    ids = np.concatenate(pools) if pools else np.empty(0, dtype=np.int64)
    return ids.astype(np.int64, copy=False), offsets
