import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu.errors import StoreError
from seals_gpu.store import Store, StoreWriter, hash_test_mask, write_store

from .conftest import clustered


def test_round_trip_normalises_and_keeps_ids(tmp_path):
    ids, x, labels = clustered(1000, 8, seed=3)
    s = write_store(tmp_path / "s", ids, x, labels=labels, rows_per_file=300)
    assert s.num_rows == 1000 and s.dim == 8 and len(s.files) == 4
    got_ids = np.concatenate([b.ids for b in s.iter_batches(batch_rows=128)])
    got_x = np.concatenate([b.embeddings for b in s.iter_batches(batch_rows=128)])
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got_x, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got_x, axis=1), 1.0, rtol=1e-5)


def test_take_returns_requested_order_and_rejects_unknown(tmp_path):
    ids, x, _ = clustered(500, 4, seed=4)
    s = write_store(tmp_path / "s", ids, x)
    want = ids[[7, 3, 400, 7]]
    got = s.take(want)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(got, xn[[7, 3, 400, 7]], rtol=1e-6)
    with pytest.raises(StoreError, match="not in store"):
        s.take([ids[0], 5])


def test_hash_split_is_deterministic_and_about_twenty_percent(tmp_path):
    ids = np.arange(100_000, dtype=np.int64) * 13
    m = hash_test_mask(ids)
    assert 0.19 < m.mean() < 0.21
    np.testing.assert_array_equal(m, hash_test_mask(ids[::-1])[::-1])
    s = write_store(tmp_path / "s", ids[:1000], np.random.default_rng(0).normal(size=(1000, 4)))
    got_ids, test = s.read_split()
    np.testing.assert_array_equal(test, hash_test_mask(got_ids))


def test_split_column_is_used(tmp_path):
    ids, x, _ = clustered(200, 4)
    split = np.where(np.arange(200) < 50, "test", "train")
    s = write_store(tmp_path / "s", ids, x, split=split)
    got_ids, test = s.read_split()
    assert test.sum() == 50 and set(got_ids[test]) == set(ids[:50])


def test_concept_counts_and_positives(tmp_path):
    ids, x, labels = clustered(1000, 8, n_concepts=2)
    s = write_store(tmp_path / "s", ids, x, labels=labels)
    counts = s.concept_counts()
    for c in (0, 1):
        expect = sorted(int(i) for i, lab in zip(ids, labels) if c in lab)
        assert counts[c] == len(expect)
        np.testing.assert_array_equal(s.concept_positives([c])[c], expect)
    info = s.info()
    assert (
        info["rows"] == 1000
        and info["concepts"] == 2
        and sum(h["concepts"] for h in info["prevalence_histogram"]) == 2
    )


def test_string_labels_and_resolve(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3))
    s = write_store(tmp_path / "s", np.arange(5), x, labels=[["cat"], [], ["dog", "cat"], [], ["dog"]])
    assert s.label_kind == "str"
    assert s.resolve_concepts(["dog"]) == ["dog"]
    assert s.concept_counts() == {"cat": 2, "dog": 2}


def test_streaming_writer_bounded_batches(tmp_path):
    with StoreWriter(tmp_path / "s", dim=4, rows_per_file=250) as w:
        for k in range(4):
            w.write(np.arange(k * 100, (k + 1) * 100), np.ones((100, 4)) + k)
    s = Store(tmp_path / "s")
    assert s.num_rows == 400 and len(s.files) == 2


# ---------------------------------------------------------------- validation errors
def _write_raw(path, table):
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")


def _emb(rows, d=3):
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(rows, np.float32).ravel()), d)


def test_missing_id_column(tmp_path):
    _write_raw(tmp_path / "s", pa.table({"embedding": _emb(np.ones((2, 3)))}))
    with pytest.raises(StoreError, match=r"part-0.parquet: missing column 'id'"):
        Store(tmp_path / "s")


def test_missing_embedding_column(tmp_path):
    _write_raw(tmp_path / "s", pa.table({"id": pa.array([1, 2], pa.int64())}))
    with pytest.raises(StoreError, match="missing column 'embedding'"):
        Store(tmp_path / "s")


def test_wrong_id_type(tmp_path):
    _write_raw(tmp_path / "s", pa.table({"id": pa.array(["a", "b"]), "embedding": _emb(np.ones((2, 3)))}))
    with pytest.raises(StoreError, match="column 'id' has type string, expected int64"):
        Store(tmp_path / "s")


def test_wrong_embedding_type(tmp_path):
    _write_raw(tmp_path / "s", pa.table({"id": pa.array([1]), "embedding": pa.array(["x"])}))
    with pytest.raises(StoreError, match="column 'embedding' has type string"):
        Store(tmp_path / "s")


def test_mixed_dimensions_across_files(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    pq.write_table(pa.table({"id": pa.array([1]), "embedding": _emb(np.ones((1, 3)))}), d / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([2]), "embedding": _emb(np.ones((1, 4)), 4)}), d / "b.parquet")
    with pytest.raises(StoreError, match=r"b.parquet: embeddings have dimension 4, but .*a.parquet has 3"):
        Store(d)


def test_variable_length_list_embeddings(tmp_path):
    t = pa.table({"id": pa.array([1, 2]), "embedding": pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]])})
    _write_raw(tmp_path / "s", t)
    s = Store(tmp_path / "s")
    with pytest.raises(StoreError, match="row 1 has an embedding of length 2, expected 3"):
        list(s.iter_batches())


def test_nan_in_vectors(tmp_path):
    x = np.ones((3, 3), np.float32)
    x[1, 2] = np.nan
    _write_raw(tmp_path / "s", pa.table({"id": pa.array([5, 6, 7]), "embedding": _emb(x)}))
    with pytest.raises(StoreError, match="embedding of id 6 contains NaN or inf"):
        Store(tmp_path / "s").validate()
    with pytest.raises(StoreError, match="id 6 contains NaN"):
        write_store(tmp_path / "w", np.array([5, 6, 7]), x)
    assert not (tmp_path / "w").exists()


def test_inf_in_vectors(tmp_path):
    x = np.ones((2, 3), np.float32)
    x[0, 0] = np.inf
    with pytest.raises(StoreError, match="NaN or inf"):
        write_store(tmp_path / "w", np.array([1, 2]), x)


def test_duplicate_ids(tmp_path):
    _write_raw(tmp_path / "s", pa.table({"id": pa.array([1, 2, 1]), "embedding": _emb(np.ones((3, 3)))}))
    with pytest.raises(StoreError, match="id 1 appears more than once"):
        Store(tmp_path / "s").validate()
    with pytest.raises(StoreError, match="id 1 appears more than once"):
        write_store(tmp_path / "w", np.array([1, 2, 1]), np.ones((3, 3)))
    assert not (tmp_path / "w").exists(), "a failed write must leave nothing behind"


def test_empty_store(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(StoreError, match="holds no .parquet files; it is empty"):
        Store(tmp_path / "e")
    _write_raw(tmp_path / "z", pa.table({"id": pa.array([], pa.int64()), "embedding": _emb(np.ones((0, 3)))}))
    with pytest.raises(StoreError, match="hold no rows; it is empty"):
        Store(tmp_path / "z")


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope")


def test_corrupt_parquet(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StoreError, match="not a readable Parquet file"):
        Store(d)


def test_truncated_parquet(tmp_path):
    ids, x, _ = clustered(2000, 8)
    write_store(tmp_path / "s", ids, x)
    f = next((tmp_path / "s").glob("*.parquet"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="part-00000.parquet"):
        Store(tmp_path / "s")


def test_zero_vector_rejected(tmp_path):
    with pytest.raises(StoreError, match="all-zero vector"):
        write_store(tmp_path / "w", np.array([1, 2]), np.array([[0.0, 0.0], [1.0, 0.0]]))


def test_bad_labels_type(tmp_path):
    t = pa.table({"id": pa.array([1]), "embedding": _emb(np.ones((1, 3))), "labels": pa.array([1.5])})
    _write_raw(tmp_path / "s", t)
    with pytest.raises(StoreError, match="column 'labels' has type double"):
        Store(tmp_path / "s")


def test_bad_split_value(tmp_path):
    t = pa.table({"id": pa.array([1]), "embedding": _emb(np.ones((1, 3))), "split": pa.array(["validation"])})
    _write_raw(tmp_path / "s", t)
    with pytest.raises(StoreError, match="split 'validation'; expected 'train' or 'test'"):
        Store(tmp_path / "s").read_split()


def test_writer_refuses_existing(tmp_path):
    ids, x, _ = clustered(10, 3)
    write_store(tmp_path / "s", ids, x)
    with pytest.raises(StoreError, match="already exists"):
        write_store(tmp_path / "s", ids, x)
    write_store(tmp_path / "s", ids[:5], x[:5], overwrite=True)
    assert Store(tmp_path / "s").num_rows == 5


def test_fingerprint_changes_with_content(tmp_path):
    ids, x, _ = clustered(100, 3)
    a = write_store(tmp_path / "a", ids, x).fingerprint
    b = write_store(tmp_path / "b", ids, x).fingerprint
    c = write_store(tmp_path / "c", ids, x * 0 + 1 + np.arange(3)).fingerprint
    assert a == b and a != c
