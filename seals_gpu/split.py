"""The train/test split as the driver sees it, answered where the rows live.

A run needs from the split: its sizes, which of some ids are train or test rows (the positives of each
concept, seed ids, a round's neighbours), and uniform draws of train ids (seed negatives, the probe, All-mode
random). None of that needs the split's id lists in the driver: every shard knows which of its rows are test
rows (:class:`ShardSplit`), and :class:`Split` routes each question to the shards that own the ids.

Shards own disjoint id ranges in order (the index manifest checks it), so one side's ids (train or test), the
shards' sorted parts one after the other, are that side's globally sorted order: rank ``r`` of the train side
is rank ``r - before[s]`` of shard ``s``'s train ids, ``before`` the train counts of the shards before it.
Draws by rank therefore give the same ids as indexing one sorted array, however the store is sharded.

Codes: :data:`ABSENT` (0, not in the store), :data:`TRAIN` (1), :data:`TEST` (2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

ABSENT, TRAIN, TEST = 0, 1, 2
CODES_CHUNK = 1 << 18  # ids per routed call of Split.codes

# call(method, {shard: args}) -> {shard: result}: runs a ShardSplit method on the shards named
ShardCall = Callable[[str, dict[int, tuple[Any, ...]]], dict[int, Any]]


class ShardSplit:
    """One shard's split: its sorted ids and which of them are test rows.

    Args:
        ids: the shard's sorted int64 ids.
        is_test: bool per row, True for a test row.
    """

    def __init__(self, ids: np.ndarray, is_test: np.ndarray):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.is_test = np.asarray(is_test, dtype=bool)
        if self.is_test.shape != self.ids.shape:
            raise ValueError(f"is_test has shape {self.is_test.shape}, ids {self.ids.shape}; give one per id")
        self._positions: dict[bool, np.ndarray] = {}

    def counts(self) -> tuple[int, int]:
        """``(train rows, test rows)``."""
        n_test = int(np.count_nonzero(self.is_test))
        return int(self.ids.size) - n_test, n_test

    def codes(self, ids: np.ndarray) -> np.ndarray:
        """int8 code of each id: TRAIN, TEST, or ABSENT where this shard does not hold it."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(ids.shape, dtype=np.int8)
        if not self.ids.size or not ids.size:
            return out
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        found = self.ids[pos] == ids
        out[found] = np.where(self.is_test[pos[found]], TEST, TRAIN)
        return out

    def rows(self, test: bool) -> np.ndarray:
        """Row positions of the train (or test) side, computed once."""
        if test not in self._positions:
            mask = self.is_test if test else ~self.is_test
            rows = np.flatnonzero(mask)
            self._positions[test] = rows.astype(np.int32) if self.ids.size < 2**31 else rows
        return self._positions[test]

    def take(self, test: bool, ranks: np.ndarray) -> np.ndarray:
        """The ids at ``ranks`` (0-based, within this shard) of its sorted train (or test) ids."""
        return self.ids[self.rows(test)[np.asarray(ranks, dtype=np.int64)]]

    def side_ids(self, test: bool) -> np.ndarray:
        """This shard's sorted train (or test) ids."""
        return self.ids[self.rows(test)]


class Side:
    """One side (train or test) of a :class:`Split`: its size, membership, ids by rank, and (for whole-pool
    work only) the full sorted list. ``take`` and ``size`` make it usable where a sorted id array was."""

    def __init__(self, split: Split, test: bool):
        self._split = split
        self._test = test

    @property
    def size(self) -> int:
        return int(self._split.counts[:, 1 if self._test else 0].sum())

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Bool per id: on this side of the split."""
        return self._split.codes(ids) == (TEST if self._test else TRAIN)

    def take(self, ranks: np.ndarray) -> np.ndarray:
        """The ids at ``ranks`` of this side's sorted ids (like ``sorted_ids[ranks]``), in the order given."""
        return self._split.take(self._test, ranks)

    def all(self) -> np.ndarray:
        """Every id of this side, sorted. 8 bytes per row in the caller: whole-pool work only (All mode's
        listing strategies, every row's neighbours, full supervision)."""
        return self._split.side_ids(self._test)


class Split:
    """The train/test split of a sharded collection, answered by its shards.

    Args:
        id_min, id_max: each shard's id range (disjoint, in increasing order; an empty shard has
            ``id_min > id_max``).
        counts: (shards, 2) int64: each shard's train and test row counts (or a function giving them,
            asked the first time a size is needed).
        call: runs a :class:`ShardSplit` method on several shards (in parallel where they are remote).
    """

    def __init__(
        self,
        id_min: np.ndarray,
        id_max: np.ndarray,
        counts: np.ndarray | Callable[[], np.ndarray],
        call: ShardCall,
    ):
        self.id_min = np.asarray(id_min, dtype=np.int64)
        self.id_max = np.asarray(id_max, dtype=np.int64)
        self._counts = counts
        self._call = call
        self.train = Side(self, test=False)
        self.test = Side(self, test=True)

    @property
    def counts(self) -> np.ndarray:
        """(shards, 2) int64: each shard's train and test row counts."""
        if callable(self._counts):
            self._counts = self._counts()
        return np.asarray(self._counts, dtype=np.int64).reshape(-1, 2)

    @classmethod
    def of_parts(cls, parts: list[ShardSplit]) -> Split:
        """A split over shards held in this process."""
        id_min = [int(p.ids[0]) if p.ids.size else 1 for p in parts]
        id_max = [int(p.ids[-1]) if p.ids.size else 0 for p in parts]
        counts = np.array([p.counts() for p in parts], dtype=np.int64).reshape(-1, 2)

        def call(method: str, args_of: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
            return {s: getattr(parts[s], method)(*a) for s, a in args_of.items()}

        return cls(id_min, id_max, counts, call)

    def _owner(self, ids: np.ndarray) -> np.ndarray:
        """The shard whose id range holds each id; ``n_shards`` where none does (empty shards hold none)."""
        full = np.flatnonzero(self.id_min <= self.id_max)
        j = np.searchsorted(self.id_max[full], ids, side="left")
        inside = j < full.size
        inside[inside] &= ids[inside] >= self.id_min[full[j[inside]]]
        return np.where(
            inside, full[np.minimum(j, max(full.size - 1, 0))] if full.size else 0, self.id_max.size
        )

    def codes(self, ids: np.ndarray) -> np.ndarray:
        """int8 code per id (ABSENT, TRAIN, TEST), one call to each shard that owns some of them per chunk of
        :data:`CODES_CHUNK` ids (the routing's temporaries stay bounded however many ids are asked)."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.ravel()
        out = np.zeros(flat.size, dtype=np.int8)
        for c in range(0, flat.size, CODES_CHUNK):
            part = flat[c : c + CODES_CHUNK]
            owner = self._owner(part)
            at = {s: np.flatnonzero(owner == s) for s in np.unique(owner).tolist() if s < self.id_max.size}
            res = self._call("codes", {s: (part[pos],) for s, pos in at.items()})
            for s, pos in at.items():
                out[c + pos] = res[s]
        return out.reshape(ids.shape)

    def take(self, test: bool, ranks: np.ndarray) -> np.ndarray:
        """Ids at global ``ranks`` of one side's sorted ids, in the order given."""
        ranks = np.asarray(ranks, dtype=np.int64).ravel()
        col = self.counts[:, 1 if test else 0]
        n = int(col.sum())
        if ranks.size and (ranks.min() < 0 or ranks.max() >= n):
            bad = int(ranks[(ranks < 0) | (ranks >= n)][0])
            raise IndexError(f"rank {bad} is outside the {n} {'test' if test else 'train'} ids")
        before = np.concatenate([[0], np.cumsum(col)])
        shard = np.searchsorted(before, ranks, side="right") - 1  # an empty shard never owns a rank
        out = np.empty(ranks.size, dtype=np.int64)
        at = {s: np.flatnonzero(shard == s) for s in np.unique(shard).tolist()}
        res = self._call("take", {s: (test, ranks[pos] - before[s]) for s, pos in at.items()})
        for s, pos in at.items():
            out[pos] = res[s]
        return out

    def side_ids(self, test: bool) -> np.ndarray:
        """One side's ids, sorted (each shard's sorted part, shard after shard)."""
        res = self._call("side_ids", {s: (test,) for s in range(self.counts.shape[0])})
        parts = [np.asarray(res[s], dtype=np.int64) for s in sorted(res)]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


def shard_test_ids(store_path: str, fingerprint: str | None, ids: np.ndarray) -> np.ndarray:
    """The test ids among one shard's sorted ``ids``, read by the shard itself from its store: computed from
    the ids alone when the store has no ``split`` column (the hash split), else the store's test ids in the
    shard's id range (row groups outside it skipped). ``fingerprint``: the store the index was built from;
    another store is refused."""
    from .errors import IndexError_
    from .pool import isin_sorted
    from .store import Store, hash_test_mask

    store = Store(store_path)
    if fingerprint is not None and store.fingerprint != fingerprint:
        raise IndexError_(
            f"store {store_path} has fingerprint {store.fingerprint}, but the index was built from "
            f"{fingerprint}; rebuild the index from this store"
        )
    ids = np.asarray(ids, dtype=np.int64)
    if not ids.size:
        return np.empty(0, np.int64)
    if not store.has_split:
        return ids[hash_test_mask(ids)]
    test = store.test_ids_between(int(ids[0]), int(ids[-1]))
    return test[isin_sorted(test, ids)]


def train_only_split(train_ids: np.ndarray) -> Split:
    """A one-shard split holding only the sorted ``train_ids``: for callers that have the list (small tools,
    benchmarks), so they ask the same questions as a run asks its backend's split."""
    ids = np.asarray(train_ids, dtype=np.int64)
    return Split.of_parts([ShardSplit(ids, np.zeros(ids.size, dtype=bool))])


def split_codes(split: Split, groups: list[np.ndarray]) -> list[np.ndarray]:
    """:meth:`Split.codes` of several id arrays in one question to the shards; one code array per group."""
    if not groups:
        return []
    flat = np.concatenate([np.asarray(g, dtype=np.int64).ravel() for g in groups])
    codes = split.codes(flat)
    return np.split(codes, np.cumsum([np.asarray(g).size for g in groups])[:-1])


def store_split(store: Any) -> Split:
    """The split of a store read from the store itself, for checks made before any backend exists
    (``--concepts-sample``, ``--seed-ids``): :meth:`Split.codes` is one streaming pass over the ids (and
    ``split`` column) per call, memory one batch plus the ids asked. Sizes, draws by rank and full listings
    need a backend's split (refused here)."""
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max

    def counts() -> np.ndarray:
        raise NotImplementedError(
            "a store's own split answers membership only; its sizes come from a backend"
        )

    def codes(ids: np.ndarray) -> np.ndarray:
        q, inv = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        got = np.zeros(q.size, dtype=np.int8)
        if q.size:
            for b in store.iter_batches(embeddings=False, split=True):
                pos = np.minimum(np.searchsorted(q, b.ids), q.size - 1)
                hit = q[pos] == b.ids
                got[pos[hit]] = np.where(b.split[hit], TEST, TRAIN)
        return got[inv.ravel()]

    def call(method: str, args_of: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        if method != "codes":
            raise NotImplementedError(f"a store's own split answers membership only, not {method!r}")
        return {s: codes(*a) for s, a in args_of.items()}

    return Split(np.array([lo]), np.array([hi]), counts, call)
