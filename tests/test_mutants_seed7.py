"""Tests from the survivors of seed 7 (``make mutate-sample SAMPLE=40 SAMPLE_SEED=7 MUTATE=store``, session
13) and of the whole-module run of ``pool`` beside it, each stated as the property a user relies on; the
docstrings name the mutants they kill."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu.errors import StoreError
from seals_gpu.pool import NeighborCache
from seals_gpu.store import Store, write_store

from .conftest import unit_rows as _unit

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# ------------------------------------------------------------------------------------------------- store
def test_a_row_group_without_id_statistics_may_hold_any_int64_id(tmp_path) -> None:
    """A Parquet file written without column statistics (some writers skip them) cannot say which ids its
    row groups hold, so each one's range is the whole int64 range, exactly, and lookups still find ids at
    both ends of it (kills ``Store.id_ranges`` mutant 11: the upper end past int64)."""
    root = tmp_path / "s"
    root.mkdir()
    ids = np.array([INT64_MIN, -3, 0, 5, INT64_MAX], dtype=np.int64)
    x = _unit(5, 4, seed=7)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), 4)
    table = pa.table({"id": pa.array(ids), "embedding": emb})
    pq.write_table(table, root / "part-0.parquet", row_group_size=2, write_statistics=False)
    store = Store(root)
    assert store.id_ranges(0) == [(INT64_MIN, INT64_MAX)] * 3
    assert all(type(a) is int and type(z) is int for a, z in store.id_ranges(0))
    assert store.row_groups_with(0, np.array([INT64_MAX], dtype=np.int64)) == [0, 1, 2]
    np.testing.assert_allclose(store.take(ids[[4, 0]]), x[[4, 0]], rtol=1e-6, atol=1e-7)


def test_the_dimension_is_read_from_the_first_embedding_that_is_not_null(tmp_path) -> None:
    """Variable-length list embeddings carry no dimension in the schema: it is read from the first non-null
    row, so a null first row does not make the store unreadable with a wrong reason; the null itself is
    refused when rows are read, naming its row (kills ``Store._first_list_len`` mutant 5: rows read two at
    a time, so the second row was never looked at)."""
    root = tmp_path / "s"
    root.mkdir()
    emb = pa.array([None, [0.6, 0.8, 0.0]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "embedding": emb}), root / "a.parquet")
    store = Store(root)
    assert store.dim == 3
    with pytest.raises(StoreError, match=r"column 'embedding' has a null at row 0"):
        store.validate()


def test_info_names_the_store_it_describes(tmp_path) -> None:
    """``store info`` (and its JSON) reports the store's own path (kills ``Store.info`` mutant 53)."""
    store = write_store(tmp_path / "s", np.arange(6), _unit(6, 4))
    info = store.info()
    assert info["path"] == str(store.path)
    assert info["path"].endswith("s")


def test_concept_names_keyed_by_strings_for_an_int_store_are_refused_saying_int64(tmp_path) -> None:
    """A ``_concepts.parquet`` keyed by strings beside int64 labels is refused, the message saying which kind
    the store's labels are (kills ``Store.concept_names`` mutant 57: 'string' said for an int store)."""
    store = write_store(tmp_path / "s", np.arange(4), _unit(4, 4), labels=[[1], [2], [], [1]])
    names = pa.table({"concept_id": pa.array(["a", "b"]), "name": pa.array(["cat", "dog"])})
    pq.write_table(names, store.path / "_concepts.parquet")
    with pytest.raises(StoreError, match=r"the store's labels are int64 concept ids; rewrite it"):
        Store(store.path).concept_names()


@pytest.mark.parametrize("token", [str(INT64_MIN - 1), str(-(3**40)), str(2**63)])
def test_concept_ids_outside_int64_are_unknown_concepts(tmp_path, token: str) -> None:
    """Labels are int64, so an int token outside that range can name no concept: refused as unknown with
    the hint, on both ends of the range (kills ``Store.resolve_concepts`` mutant 53: the lower end moved to
    -(3**63))."""
    store = write_store(tmp_path / "s", np.arange(4), _unit(4, 4), labels=[[1], [2], [], [1]])
    with pytest.raises(StoreError, match=rf"^unknown concept '{token}'; list the store's concepts"):
        store.resolve_concepts([token])
    assert store.resolve_concepts([str(INT64_MIN), str(INT64_MAX)]) == [INT64_MIN, INT64_MAX]


# -------------------------------------------------------------------------------------------------- pool
def _cache_near_2_62() -> tuple[NeighborCache, np.ndarray]:
    """A neighbour cache of ids 2**62 + 0..9: consecutive ids that float64 cannot tell apart."""
    ids = np.arange(10, dtype=np.int64) + 2**62
    cache = NeighborCache(3)
    D = np.tile(np.float32([0.9, 0.8, 0.7]), (10, 1))
    I = np.stack([ids + 1, ids + 2, ids + 3], axis=1)
    cache.add(ids, D, I)
    return cache, ids


@pytest.mark.parametrize("dtype", [np.uint64, np.int64, object])
def test_neighbor_cache_lookup_is_exact_for_ids_in_any_integer_dtype(dtype) -> None:
    """Ids handed over as uint64 (an Arrow column) or Python ints are looked up exactly, also past 2**53
    where float64 rounds neighbouring ids together (kills ``NeighborCache.lookup`` mutants 3 and 5: the
    ids not cast to int64, so numpy compared them as float64 and reported cached ids as missing)."""
    cache, ids = _cache_near_2_62()
    want = ids[[7, 1, 8]]
    D, I = cache.lookup(np.array([int(v) for v in want], dtype=dtype))
    assert I.dtype == np.int64 and D.dtype == np.float32
    np.testing.assert_array_equal(I[:, 0], want + 1)


def test_neighbor_cache_names_at_most_five_missing_ids() -> None:
    """A lookup of ids that were never cached raises a KeyError naming the first five of them, not the
    whole list (kills ``NeighborCache.lookup`` mutant 38)."""
    cache, ids = _cache_near_2_62()
    missing = [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(KeyError, match=r"ids \[1, 2, 3, 4, 5\] are not in the neighbour cache"):
        cache.lookup(np.concatenate([ids[:2], missing]))


def test_neighbor_cache_stores_a_similarity_float32_cannot_hold_as_a_missing_slot() -> None:
    """Similarities are kept as float32 and a slot whose similarity is not finite is stored as missing
    (-inf / -1): a float64 similarity past float32's range (1e39) becomes -inf / -1, not +inf beside a real
    id (kills ``NeighborCache.add`` mutants 16 and 18: the finiteness test made on the float64 input)."""
    cache = NeighborCache(3)
    D = np.array([[0.9, 1e39, 0.5]], dtype=np.float64)
    cache.add(np.array([7]), D, np.array([[11, 12, 13]]))
    D_got, I_got = cache.lookup(np.array([7]))
    assert D_got.dtype == np.float32
    assert I_got.tolist() == [[11, -1, 13]]
    assert D_got[0, 1] == -np.inf and np.allclose(D_got[0, [0, 2]], [0.9, 0.5])


def test_neighbor_cache_grows_geometrically_one_id_at_a_time() -> None:
    """Adding ids one at a time (the driver adds each round's new labels) is amortised O(1): the first tables
    hold 1,024 rows and then double, so 3,000 adds reallocate them three times, and they never hold more than
    twice the cached rows past the first 1,024 (kills ``NeighborCache.add`` mutants 63 and 68, which grew
    the tables by exactly what was needed, so every add past the first capacity copied them all; 64, which
    started from one row and doubled a dozen times; and 67, which tripled them)."""
    cache = NeighborCache(2)
    reallocations, table = 0, cache._I
    for i in range(3000):
        cache.add(np.array([i]), np.float32([[0.5, 0.25]]), np.array([[i + 1, i + 2]]))
        if cache._I is not table:
            reallocations, table = reallocations + 1, cache._I
        assert cache._I.shape[0] <= 2 * max(len(cache), 1024)
    assert reallocations <= 4
    D, I = cache.lookup(np.array([2999, 0, 1500]))
    assert I[:, 0].tolist() == [3000, 1, 1501]


def test_a_concept_without_positives_gets_an_empty_int64_id_array(tmp_path) -> None:
    """``concept_positives`` answers int64 ids for every concept asked, an empty int64 array for one that no
    row holds (ids are int64 everywhere; kills ``Store.concept_positives`` mutant 42: float64 for those)."""
    store = write_store(tmp_path / "s", np.arange(4) - 2, _unit(4, 4), labels=[[1], [2], [], [1]])
    pos = store.concept_positives([1, 99])
    assert pos[1].dtype == np.int64 and pos[1].tolist() == [-2, 1]
    assert pos[99].dtype == np.int64 and pos[99].size == 0
