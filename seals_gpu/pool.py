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
        """Add ``neighbors`` (any order, may repeat) that are not labeled; return the new ids.

        Every value is an id (negative ones included): drop missing neighbour slots before calling, by
        their similarity (see :meth:`NeighborCache.lookup`), never by the id's value.

        O(|new| log |pool| + |pool|): the new ids are inserted at their sorted places (one memmove of the
        pool), never re-sorted with it.
        """
        nb = sorted_unique(np.asarray(neighbors, dtype=np.int64).ravel())
        nb = nb[~_isin_sorted(nb, labeled_sorted)]
        new = nb[~_isin_sorted(nb, self.ids)]
        if new.size:
            self.ids = np.insert(self.ids, np.searchsorted(self.ids, new), new)
        return new

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Drop ``ids`` (just labeled) from the pool; return those that were in it."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.ids.size == 0 or ids.size == 0:
            return ids[:0]
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        hit = self.ids[pos] == ids
        if hit.any():
            self.ids = np.delete(self.ids, np.unique(pos[hit]))
        return ids[hit]

    def __len__(self) -> int:
        return int(self.ids.size)


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` of a 1-D int64 array by a plain sort and a neighbour comparison.

    numpy 2.3+ routes ``np.unique`` through a hash table, measured ~30x slower than ``np.sort`` on 10k
    int64 ids; sorted queries also make the ``searchsorted`` membership tests that follow ~6x faster.
    """
    x = np.sort(x)
    if x.size > 1:
        x = x[np.concatenate(([True], x[1:] != x[:-1]))]
    return x


def _isin_sorted(x: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    """``np.isin(x, sorted_ref)`` for a sorted reference, by binary search (O(n log m))."""
    if sorted_ref.size == 0 or x.size == 0:
        return np.zeros(x.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ref, x), sorted_ref.size - 1)
    return sorted_ref[pos] == x


def isin_sorted(x: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    return _isin_sorted(np.asarray(x, dtype=np.int64), sorted_ref)


class NeighborCache:
    """k-nearest-neighbour rows of the ids looked up so far, fetched in batches and kept for the run.

    Storage is append-only: ``(capacity, k)`` tables of neighbour ids (int64) and similarities (float32),
    grown by doubling, plus the sorted array of cached ids and each one's row. A slot holds a neighbour iff
    its similarity is finite; missing slots hold ``-inf`` / ``-1`` (and -1 is also a legal id, so read
    validity from the similarity). A lookup of many ids is a ``searchsorted`` and a row gather, with no
    per-id Python work.
    """

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self._keys = np.empty(0, dtype=np.int64)  # sorted cached ids
        self._rows = np.empty(0, dtype=np.int64)  # their rows in the tables
        self._I = np.empty((0, self.k), dtype=np.int64)
        self._D = np.empty((0, self.k), dtype=np.float32)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """The distinct ``ids`` not cached yet (sorted)."""
        ids = sorted_unique(np.asarray(ids, dtype=np.int64).ravel())
        return ids[~_isin_sorted(ids, self._keys)]

    def add(self, ids: np.ndarray, D: np.ndarray, I: np.ndarray) -> None:
        """Cache the rows ``(D[j], I[j])`` (width >= k is cut to k) of distinct, not yet cached ``ids``.

        A slot whose similarity is not finite is a missing neighbour, whatever its id; it is stored as
        ``-inf`` / ``-1``."""
        ids = np.asarray(ids, dtype=np.int64)
        n = ids.size
        if n == 0:
            return
        I = np.asarray(I, dtype=np.int64)[:, : self.k]
        D = np.asarray(D, dtype=np.float32)[:, : self.k]
        if I.ndim != 2 or I.shape[0] != n or D.shape != I.shape:
            raise ValueError(f"neighbour rows D {D.shape} and I {I.shape} must both be ({n}, k) for {n} ids")
        if I.shape[1] < self.k:  # fewer neighbours than k: pad
            pad = self.k - I.shape[1]
            I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
            D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
        if self._n + n > self._I.shape[0]:
            cap = max(self._n + n, 2 * self._I.shape[0], 1024)
            for name in ("_I", "_D"):
                old = getattr(self, name)
                grown = np.empty((cap, self.k), dtype=old.dtype)
                grown[: self._n] = old[: self._n]
                setattr(self, name, grown)
        found = np.isfinite(D)
        self._I[self._n : self._n + n] = np.where(found, I, -1)
        self._D[self._n : self._n + n] = np.where(found, D, -np.inf)
        rows = np.arange(self._n, self._n + n, dtype=np.int64)
        self._n += n
        keys = np.concatenate([self._keys, ids])
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._rows = np.concatenate([self._rows, rows])[order]

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(D (n, k) float32, I (n, k) int64)`` of cached ``ids`` (any order, repeats allowed); a slot is a
        neighbour iff its ``D`` is finite.

        Raises:
            KeyError: an id that is not cached.
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size == 0:
            return np.empty((0, self.k), np.float32), np.empty((0, self.k), np.int64)
        if self._keys.size == 0:
            raise KeyError(f"ids {ids[:5].tolist()} are not in the neighbour cache")
        pos = np.minimum(np.searchsorted(self._keys, ids), self._keys.size - 1)
        ok = self._keys[pos] == ids
        if not ok.all():
            raise KeyError(f"ids {ids[~ok][:5].tolist()} are not in the neighbour cache")
        r = self._rows[pos]
        return self._D[r], self._I[r]


def to_csr(pools: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, offsets)`` of a list of per-unit id arrays."""
    offsets = np.zeros(len(pools) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([p.size for p in pools])
    ids = np.concatenate(pools) if pools else np.empty(0, dtype=np.int64)
    return ids.astype(np.int64, copy=False), offsets
