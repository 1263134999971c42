"""Tests from the survivors of seed 9 (``make mutate-sample SAMPLE=20 SAMPLE_SEED=9 MUTATE="scoring split
index.shard"``, session 14), each stated as the property a user relies on; the docstrings name the mutants
they kill."""

from __future__ import annotations

import numpy as np

from seals_gpu.index.shard import IndexShard
from seals_gpu.split import ShardSplit

from .conftest import unit_rows as _unit


def test_a_shard_streams_float32_blocks_whatever_dtype_it_was_built_from() -> None:
    """All-mode scoring streams a shard's vectors block by block: the blocks are float32 (half the memory
    and transfer of float64) with the ids beside them, even for a shard built from float64 vectors
    (kills ``IndexShard.iter_vectors`` mutant 16)."""
    x = _unit(10, 4, seed=9).astype(np.float64)
    ids = np.arange(10, dtype=np.int64) * 3 - 7
    shard = IndexShard.build(ids, x, kind="flat")
    blocks = list(shard.iter_vectors(block_rows=4))
    assert [b[0].tolist() for b in blocks] == [ids[:4].tolist(), ids[4:8].tolist(), ids[8:].tolist()]
    assert all(b[1].dtype == np.float32 and b[1].flags.c_contiguous for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), x.astype(np.float32))


def test_a_dense_shard_builds_its_id_to_row_table_once() -> None:
    """A shard whose ids are dense but not contiguous maps ids to rows through a table built on the first
    lookup and kept: later lookups reuse it instead of rebuilding an array as long as the id span each
    time (kills ``IndexShard._position_table`` mutant 1)."""
    ids = np.array([100, 101, 103, 104, 106, 107], dtype=np.int64)
    shard = IndexShard.build(ids, _unit(6, 4, seed=9), kind="flat")
    np.testing.assert_array_equal(shard.positions(np.array([107, 100, 103])), [5, 0, 2])
    table = shard._position_table()
    assert table is not None and table.size == 8
    np.testing.assert_array_equal(shard.positions(np.array([104, 106])), [3, 4])
    assert shard._position_table() is table


def test_a_split_keeps_each_sides_rows_as_int32_below_2_31_rows() -> None:
    """A shard's train and test rows are kept as int32 (4 bytes a row, half of int64 across a billion-row
    split) whenever the shard has fewer than 2**31 rows, and computed once (kills ``ShardSplit.rows``
    mutant 13: int64 from 62 rows up)."""
    ids = np.arange(100, dtype=np.int64) * 5
    is_test = np.arange(100) % 4 == 0
    split = ShardSplit(ids, is_test)
    for test in (False, True):
        rows = split.rows(test)
        assert rows.dtype == np.int32
        np.testing.assert_array_equal(rows, np.flatnonzero(is_test == test))
        assert split.rows(test) is rows
        np.testing.assert_array_equal(
            split.take(test, np.array([0, 2])), ids[np.flatnonzero(is_test == test)[[0, 2]]]
        )
