"""Tests from the survivors of seed 6 (``make mutate-sample SAMPLE=20 SAMPLE_SEED=6``, session 12), each
stated as the property a user relies on; the docstrings name the mutants they kill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seals_gpu.store import write_store

from .conftest import unit_rows as _unit


# ------------------------------------------------------------------------------------------------- store
def test_take_finds_ids_in_files_after_one_that_holds_none_of_them(tmp_path) -> None:
    """``Store.take`` streams every file: ids in the first and third of three files come back in the order
    asked although the second file holds none of them (kills ``Store.take`` mutant 43: the scan stopped at
    the first batch without a wanted id)."""
    ids = np.arange(30, dtype=np.int64) * 7 - 50
    x = _unit(30, 4, seed=6)
    store = write_store(tmp_path / "s", ids, x, rows_per_file=10)
    assert len(store.files) == 3
    want = ids[[25, 2, 29, 0]]
    np.testing.assert_allclose(store.take(want), x[[25, 2, 29, 0]], rtol=1e-6, atol=1e-7)


def test_a_zero_row_given_to_a_store_writer_is_named_as_coming_from_write(tmp_path) -> None:
    """A row that cannot be l2-normalised is refused, the message saying where it came from (``write``) and
    which row; the store is not created (kills ``StoreWriter.write`` mutant 44: the place named wrongly)."""
    from seals_gpu.errors import StoreError
    from seals_gpu.store import StoreWriter

    x = _unit(3, 4)
    x[1] = 0.0
    with pytest.raises(StoreError, match=r"^write: row 1 is an all-zero vector"):
        with StoreWriter(tmp_path / "s", dim=4) as w:
            w.write(np.arange(3), x)
    assert not (tmp_path / "s").exists()


def test_a_file_without_the_labels_column_is_refused_naming_the_file_that_has_it(tmp_path) -> None:
    """Every file of a store has the same columns: a later file without ``labels`` is refused, naming it
    and the first file, which has them (kills ``Store.__init__`` mutant 133: the second file named as the
    one to compare with, which is the offending file itself here)."""
    import shutil

    from seals_gpu.errors import StoreError
    from seals_gpu.store import Store

    labeled = write_store(tmp_path / "a", np.arange(4), _unit(4, 4), labels=[["x"], [], [], ["x"]])
    plain = write_store(tmp_path / "b", np.arange(10, 14), _unit(4, 4, seed=1))
    (first,) = labeled.files
    shutil.copy(plain.files[0], tmp_path / "a" / "zz-more.parquet")
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "a")
    assert str(err.value) == f"{tmp_path / 'a' / 'zz-more.parquet'}: has no 'labels' column, unlike {first}"


# ----------------------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("emb_dtype", [torch.float32, torch.float16])
def test_the_dense_cpu_path_scores_in_the_asked_dtype(emb_dtype: torch.dtype) -> None:
    """The union-GEMM fast path (auto, on the CPU) computes in ``compute_dtype`` whatever the embeddings'
    dtype, like the per-row reference: float64 scores of float16 or float32 embeddings agree with the
    reference's to float64 round-off (kills ``_score_select_dense`` mutant 18: the rows left in the
    embeddings' dtype, which a float64 or float32 GEMM refuses)."""
    from seals_gpu import scoring

    from .test_scoring import overlapping_pools

    N, U = 3000, 6
    emb, rows, ids, off, W, bias, kind, ref = overlapping_pools(
        6, N, 16, U, span=1500, first=300, step=40, w_scale=10.0
    )
    emb = emb.to(emb_dtype)
    assert scoring._dense_profitable(rows, ids, off.numpy(), U, N) is not None, "the dense path must run"
    args = (emb, rows, ids, off, W, bias, kind, ref, 1.0, 25)
    fast = scoring.score_select(*args, backend="auto", compute_dtype=torch.float64)
    slow = scoring.score_select(*args, backend="torch", compute_dtype=torch.float64)
    assert torch.equal(fast.counts, slow.counts)
    assert torch.equal(fast.ids, slow.ids)
    assert torch.allclose(fast.scores.double(), slow.scores.double(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------- pool
def test_the_neighbour_cache_keeps_float32_similarities_as_it_grows() -> None:
    """Similarities are stored as float32 (half the memory of float64) from the first add through every
    growth of the tables (kills ``NeighborCache.__init__`` mutant 23: an empty float64 table, whose dtype
    every grown table copied)."""
    from seals_gpu.pool import NeighborCache

    cache = NeighborCache(2)
    for start in (0, 1000, 3000):  # 1000 and 2000 more rows: the tables grow twice
        n = 1000 if start == 0 else 2000 if start == 1000 else 5
        ids = np.arange(start, start + n, dtype=np.int64)
        cache.add(ids, np.full((n, 2), 0.5, np.float64), np.stack([ids + 1, ids + 2], axis=1))
        assert cache._D.dtype == np.float32
    D, I = cache.lookup(np.array([0, 2999, 3004]))
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert D.tolist() == [[0.5, 0.5]] * 3 and I[:, 0].tolist() == [1, 3000, 3005]


def test_a_lookup_in_an_empty_cache_names_the_first_five_ids() -> None:
    """(kills ``NeighborCache.lookup`` mutant 21: six ids named.)"""
    from seals_gpu.pool import NeighborCache

    with pytest.raises(KeyError, match=r"ids \[7, 8, 9, 10, 11\] are not in the neighbour cache"):
        NeighborCache(3).lookup(np.arange(7, 14))


# -------------------------------------------------------------------------------------------------- split
def test_split_codes_are_one_byte_per_id_in_the_shape_asked() -> None:
    """``Split.codes`` answers int8 codes (a byte per id: runs ask for millions), shaped like the ids, from
    every shard (kills ``Split.codes`` mutant 9: float64 codes, eight bytes per id)."""
    from seals_gpu.split import ABSENT, TEST, TRAIN, ShardSplit, Split

    split = Split.of_parts(
        [
            ShardSplit(np.array([1, 5, 9]), np.array([False, True, False])),
            ShardSplit(np.array([20, 30]), np.array([True, False])),
        ]
    )
    codes = split.codes(np.array([[9, 20], [7, 30], [1, 5]]))
    assert codes.dtype == np.int8
    assert codes.tolist() == [[TRAIN, TEST], [ABSENT, TRAIN], [TRAIN, TEST]]
    assert split.codes(np.empty(0, np.int64)).dtype == np.int8


def test_sorted_unique_drops_the_repeat_of_a_two_id_array() -> None:
    """(kills ``sorted_unique`` mutant 4: arrays of two ids left as they were, a repeated id included.)"""
    from seals_gpu.pool import sorted_unique

    for x, want in [([5, 5], [5]), ([9, 2], [2, 9]), ([7], [7]), ([], []), ([3, 1, 3], [1, 3])]:
        got = sorted_unique(np.array(x, dtype=np.int64))
        assert got.dtype == np.int64 and got.tolist() == want
