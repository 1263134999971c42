import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seals_gpu.errors import IndexError_, StoreError
from seals_gpu.index import IndexSpec, LocalIndex, build_index, merge_neighbors, open_index
from seals_gpu.store import write_store

from .conftest import clustered


@pytest.fixture(scope="module")
def store50k(tmp_path_factory):
    ids, x, labels = clustered(50_000, 32, seed=5)
    return write_store(tmp_path_factory.mktemp("s") / "store", ids, x, labels=labels)


def _exact(store, xq, k, exclude=None):
    ids = store.read_ids()
    xb = store.take(ids)
    D, I = faiss.knn(xq, xb, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    gid = ids[I]
    out = []
    for r in range(len(xq)):
        row = [g for g in gid[r] if exclude is None or g != exclude[r]]
        out.append(row[:k])
    return np.array(out)


def test_flat_matches_faiss_exact_and_excludes_self(small_store, tmp_path):
    idx = build_index(small_store, tmp_path / "i", IndexSpec(kind="flat"))
    ids = small_store.read_ids()[:50]
    xq = idx.vectors(ids)
    D, I = idx.search(xq, 10, exclude_ids=ids)
    assert not (I == ids[:, None]).any()
    ref = _exact(small_store, xq, 10, exclude=ids)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, ref)])
    assert overlap > 0.99  # only exact ties may order differently
    assert (np.diff(D, axis=1) <= 1e-7).all(), "similarities must be sorted descending"
    np.testing.assert_allclose(D[:, 0], np.einsum("qd,qd->q", xq, idx.vectors(I[:, 0])), rtol=1e-5)


def test_ivfpq_rerank_recall_at_100(store50k, tmp_path):
    flat = build_index(store50k, tmp_path / "flat", IndexSpec(kind="flat"))
    ivf = build_index(
        store50k, tmp_path / "ivf", IndexSpec(kind="ivfpq", nlist=256, pq_m=16, nprobe=24, rerank=4)
    )
    q = store50k.read_ids()[::250]
    xq = flat.vectors(q)
    _, I0 = flat.search(xq, 100, exclude_ids=q)
    _, I1 = ivf.search(xq, 100, exclude_ids=q)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(I0, I1)])
    assert recall >= 0.9, recall
    # save/load gives identical results
    again = open_index(tmp_path / "ivf")
    D2, I2 = again.search(xq, 100, exclude_ids=q)
    np.testing.assert_array_equal(I1, I2)


def test_sharded_flat_equals_single(small_store, tmp_path):
    one = build_index(small_store, tmp_path / "one", IndexSpec(kind="flat"))
    for n in (2, 3, 4):
        many = build_index(small_store, tmp_path / f"s{n}", IndexSpec(kind="flat", shards=n))
        assert len(many.shards) == n
        q = small_store.read_ids()[::37]
        xq = one.vectors(q)
        D0, I0 = one.search(xq, 20, exclude_ids=q)
        D1, I1 = many.search(xq, 20, exclude_ids=q)
        np.testing.assert_array_equal(I0, I1)
        np.testing.assert_array_equal(D0, D1)
        np.testing.assert_array_equal(many.vectors(q), one.vectors(q))


def test_in_memory_equals_built(small_store, tmp_path):
    built = build_index(small_store, tmp_path / "i", IndexSpec(kind="flat"))
    mem = LocalIndex.in_memory(small_store)
    q = small_store.read_ids()[:40]
    np.testing.assert_array_equal(built.search(built.vectors(q), 15)[1], mem.search(mem.vectors(q), 15)[1])


def test_fingerprint_mismatch_refused(small_store, tmp_path):
    idx = build_index(small_store, tmp_path / "i", IndexSpec(kind="flat"))
    ids, x, _ = clustered(500, 16, seed=9)
    other = write_store(tmp_path / "other", ids, x)
    with pytest.raises(IndexError_, match="was built from a store with fingerprint"):
        idx.check_store(other)
    idx.check_store(small_store)


def test_truncated_index_file(small_store, tmp_path):
    build_index(small_store, tmp_path / "i", IndexSpec(kind="ivfpq", nlist=16, pq_m=4, nprobe=4))
    f = tmp_path / "i" / "shard-00000" / "index.faiss"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(IndexError_, match="corrupt or truncated"):
        open_index(tmp_path / "i")


def test_truncated_vectors_file(small_store, tmp_path):
    build_index(small_store, tmp_path / "i", IndexSpec(kind="flat"))
    f = tmp_path / "i" / "shard-00000" / "vectors.npy"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(IndexError_, match="corrupt or truncated"):
        open_index(tmp_path / "i")


def test_missing_manifest_and_bad_params(small_store, tmp_path):
    with pytest.raises(IndexError_, match="does not exist"):
        open_index(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(IndexError_, match="manifest.json is missing"):
        open_index(tmp_path / "half")
    with pytest.raises(IndexError_, match="must divide the dimension 16"):
        build_index(small_store, tmp_path / "x", IndexSpec(kind="ivfpq", nlist=16, pq_m=5))
    assert not (tmp_path / "x").exists()
    with pytest.raises(IndexError_, match="unknown"):
        build_index(small_store, tmp_path / "y", IndexSpec(kind="hnsw"))


def test_unknown_ids_in_vectors(small_store, tmp_path):
    idx = build_index(small_store, tmp_path / "i", IndexSpec(kind="flat", shards=2))
    with pytest.raises(IndexError_, match=r"ids \[3\] are not in"):
        idx.vectors(np.array([3]))


def test_store_error_propagates(tmp_path):
    with pytest.raises(StoreError):
        build_index(tmp_path / "missing", tmp_path / "i")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 10), st.integers(0, 10_000))
def test_merge_neighbors_is_global_topk_and_order_free(nshards, per, k, seed):
    rng = np.random.default_rng(seed)
    nq = 3
    # distinct ids across shards; coarse sims so ties are common
    all_ids = rng.permutation(1000)[: nshards * per].reshape(nshards, per)
    sims = rng.integers(0, 5, size=(nshards, nq, per)).astype(np.float32) / 4
    parts = []
    for s in range(nshards):
        I = np.broadcast_to(all_ids[s], (nq, per)).copy()
        parts.append((sims[s], I))
    D, I = merge_neighbors(parts, k)
    D2, I2 = merge_neighbors(parts[::-1], k)
    np.testing.assert_array_equal(I, I2)
    for q in range(nq):
        cand = sorted((-sims[s, q, j], int(all_ids[s, j])) for s in range(nshards) for j in range(per))[:k]
        expect = [i for _, i in cand] + [-1] * (k - len(cand))
        assert I[q].tolist() == expect


@pytest.mark.parametrize("spacing", [1, 2, 3, 1000])  # dense (lookup table) and sparse (binary search) ids
def test_shard_positions_match_a_dict_and_reject_unknown_ids(spacing):
    from seals_gpu.index.shard import IndexShard

    rng = np.random.default_rng(spacing)
    n = 500
    ids = np.sort(rng.choice(n * spacing, size=n, replace=False)).astype(np.int64) + 40
    shard = IndexShard(ids, np.zeros((n, 4), np.float32), kind="flat")
    where = {int(i): r for r, i in enumerate(ids)}
    q = rng.choice(ids, size=2000)
    assert shard.positions(q).tolist() == [where[int(i)] for i in q]
    assert shard.positions(q.reshape(40, 50)).shape == (40, 50)
    assert (shard._position_table() is not None) == (spacing <= 2)
    if spacing == 1:  # also the contiguous case: ids[0], ids[0] + 1, ...
        run = IndexShard(np.arange(40, 40 + n, dtype=np.int64), np.zeros((n, 4), np.float32), kind="flat")
        assert run._position_table().size == 0
        assert run.positions(np.array([40, 41 + n - 2, 100])).tolist() == [0, n - 1, 60]
        for bad in ([39], [40 + n]):
            with pytest.raises(IndexError_, match=r"are not in this index"):
                run.positions(np.array(bad))
    missing = np.setdiff1d(np.arange(ids[0] - 3, ids[-1] + 4), ids)[:3]
    for bad in (missing, np.array([-5]), np.array([ids[-1] + 10**12])):
        with pytest.raises(IndexError_, match=r"are not in this index"):
            shard.positions(np.r_[q[:4], bad])
    empty = IndexShard(np.empty(0, np.int64), np.zeros((0, 4), np.float32), kind="flat")
    assert empty.positions(np.empty(0, np.int64)).size == 0
    with pytest.raises(IndexError_, match="not in this index"):
        empty.positions(np.array([1]))


def test_ivf_training_sample_defaults_are_capped():
    from seals_gpu.index.build import TRAIN_SIZE_CAP

    small = IndexSpec(kind="ivfpq").resolve(200_000, 64)
    assert small["train_size"] == max(65_536, 64 * small["nlist"])
    big = IndexSpec(kind="ivfpq").resolve(10**7, 128)
    assert big["nlist"] == 16_384 and big["train_size"] == TRAIN_SIZE_CAP
    assert IndexSpec(kind="ivfpq", train_size=20_000).resolve(10**7, 128)["train_size"] == 20_000
    with pytest.raises(IndexError_, match="--train-size 5000 is fewer training vectors than --nlist 16384"):
        IndexSpec(kind="ivfpq", train_size=5000).resolve(10**7, 128)  # k-means would fail after the read
    assert IndexSpec(kind="ivfpq", nlist=64).resolve(1000, 8)["train_size"] == 1000  # never above n


def test_exact_scores_are_float64_dot_products_whatever_the_chunking():
    from seals_gpu.index.shard import exact_scores

    rng = np.random.default_rng(9)
    V = rng.normal(size=(300, 24)).astype(np.float32)
    xq = rng.normal(size=(13, 24)).astype(np.float32)
    pos = rng.integers(-1, 300, size=(13, 40))
    want = np.where(
        pos >= 0,
        np.einsum("qkd,qd->qk", V[np.maximum(pos, 0)].astype(np.float64), xq.astype(np.float64)),
        -np.inf,
    ).astype(np.float32)
    for chunk in (None, 1, 5, 13, 100):
        got = exact_scores(xq, V, pos, chunk)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_merge_decides_a_near_tie_at_the_kth_place_on_float64_scores() -> None:
    """Shards' float32 similarities differ in the last bit; at a merged k-th place closer than TIE_EPS to
    the next, the rescore decides (float64), so the ids do not depend on the sharding."""
    from seals_gpu.index.merge import TIE_EPS, merge_neighbors, rescorer

    rng = np.random.default_rng(3)
    d = 16
    q = rng.normal(size=(1, d)).astype(np.float32)
    q /= np.linalg.norm(q)
    base = rng.normal(size=d)
    base -= (base @ q[0]) * q[0]
    vecs = {}
    for i, s in zip((10, 11, 12), (0.9, 0.5, 0.5 + 2e-7), strict=True):  # 11 and 12 nearly tie; 12 is ahead
        v = s * q[0] + np.sqrt(1 - s * s) * base / np.linalg.norm(base)
        vecs[i] = v.astype(np.float32)
    exact = {i: float(np.dot(q[0].astype(np.float64), v.astype(np.float64))) for i, v in vecs.items()}
    assert exact[12] > exact[11] and abs(exact[12] - exact[11]) < TIE_EPS
    # shard A says 11 is at 0.5 + 1e-6 (rounding went its way); shard B has 10 and 12 with 12 a hair lower
    part_a = (np.array([[exact[11] + 1e-6]], np.float32), np.array([[11]], np.int64))
    part_b = (np.array([[exact[10], exact[12] - 1e-7]], np.float32), np.array([[10, 12]], np.int64))
    D, I = merge_neighbors([part_a, part_b], 2)
    assert I.tolist() == [[10, 11]]  # float32 values alone pick 11
    D, I = merge_neighbors(
        [part_a, part_b], 2, rescorer(q, lambda ids: np.stack([vecs[int(i)] for i in ids]))
    )
    assert I.tolist() == [[10, 12]]
    assert D[0, 1] == np.float32(exact[12])
