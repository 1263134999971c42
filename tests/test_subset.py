"""Searchers over the train rows (index/subset.py) and the planner that picks one."""

from __future__ import annotations

import numpy as np
import pytest

from seals_gpu.errors import ConfigError, IndexError_
from seals_gpu.index.subset import FlatSubset, IvfSubset, default_nlist
from seals_gpu.planner import expected_queries, plan_search

from .conftest import assert_same_neighbors, clustered


def _brute(ids, x, q, qid, k):
    """float64 brute force: top-k by cosine, ties by lower id, each query's own id excluded."""
    sims = q.astype(np.float64) @ x.astype(np.float64).T
    sims[qid[:, None] == ids[None, :]] = -np.inf
    order = np.lexsort((np.broadcast_to(ids, sims.shape), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1).astype(np.float32), ids[order]


@pytest.fixture(scope="module")
def data():
    ids, x, _ = clustered(4000, 24, seed=3)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10**15, size=ids.size, replace=False))  # big, sparse ids
    return ids, x


@pytest.mark.parametrize("step", [37, 3])  # a few queries (GEMM + top-k) / many (FAISS)
def test_flat_subset_equals_brute_force(data, step):
    ids, x = data
    sub = FlatSubset(ids, x)
    pick = np.arange(0, ids.size, step)
    D, I = sub.search(x[pick], 15, exclude_ids=ids[pick])
    D0, I0 = _brute(ids, x, x[pick], ids[pick], 15)
    assert_same_neighbors(D, I, D0, I0)
    assert not (I == ids[pick][:, None]).any()
    # a foreign query (not a member) keeps all k
    D1, I1 = sub.search(-x[:3], 5)
    assert (I1 >= 0).all() and I1.shape == (3, 5)


def test_ivf_with_every_list_is_exact_and_calibration_is_honest(data):
    ids, x = data
    ivf = IvfSubset.train(ids, x, nlist=32, seed=1)
    assert ivf.nlist == 32 and ivf.ntotal == ids.size
    pick = np.arange(0, ids.size, 41)
    D0, I0 = _brute(ids, x, x[pick], ids[pick], 12)
    D, I = ivf.search(x[pick], 12, exclude_ids=ids[pick], nprobe=32)
    assert_same_neighbors(D, I, D0, I0)
    # recall 1.0 calibrates to an exact search (possibly fewer lists than all, never a miss)
    assert ivf.calibrate_nprobe(12, target=1.0) == 1.0
    _, I1 = ivf.search(x[pick], 12, exclude_ids=ids[pick])
    hit = np.mean([np.intersect1d(a, b).size / 12 for a, b in zip(I1, I0, strict=True)])
    assert hit > 0.99
    # a lower target: fewer lists, and the measured recall on other queries is close to the promise
    r = ivf.calibrate_nprobe(12, target=0.8, n_queries=400)
    assert r >= 0.8 and ivf.nprobe < 32
    _, I2 = ivf.search(x[pick], 12, exclude_ids=ids[pick])
    held_out = np.mean([np.intersect1d(a, b).size / 12 for a, b in zip(I2, I0, strict=True)])
    assert held_out >= 0.75, held_out


def test_ivf_results_do_not_depend_on_the_batch(data):
    """A query's neighbour ids are the same alone, in a batch, and in another batch order."""
    ids, x = data
    ivf = IvfSubset.train(ids, x, nlist=16, nprobe=4, seed=2)
    pick = np.arange(5, ids.size, 97)
    _, I_all = ivf.search(x[pick], 10, exclude_ids=ids[pick])
    rev = pick[::-1]
    _, I_rev = ivf.search(x[rev], 10, exclude_ids=ids[rev])
    np.testing.assert_array_equal(I_rev[::-1], I_all)
    for j in (0, 7, len(pick) - 1):
        _, I_one = ivf.search(x[pick[j : j + 1]], 10, exclude_ids=ids[pick[j : j + 1]])
        np.testing.assert_array_equal(I_one[0], I_all[j])
    _, I_chunks = ivf.search(x[pick], 10, exclude_ids=ids[pick], q_chunk=7)
    np.testing.assert_array_equal(I_chunks, I_all)


def test_subset_errors_and_empty(data):
    ids, x = data
    sub = FlatSubset(ids[:0], x[:0])
    D, I = sub.search(x[:2], 3)
    assert (I == -1).all() and np.isneginf(D).all()
    with pytest.raises(IndexError_, match="at least 1"):
        FlatSubset(ids, x).search(x[:2], 0)
    with pytest.raises(IndexError_, match="shape"):
        FlatSubset(ids, x).search(x[:2, :5], 3)
    with pytest.raises(IndexError_, match="NaN"):
        FlatSubset(ids, x).search(np.full((1, x.shape[1]), np.nan, np.float32), 3)
    assert default_nlist(100) == 1 and default_nlist(65_767) == 128 and default_nlist(800_000) == 512
    tiny = IvfSubset.train(ids[:50], x[:50])
    assert tiny.nlist == 1 and tiny.search(x[:2], 3)[1].shape == (2, 3)


def test_planner_decisions():
    kw = dict(dim=384, seed_size=100, budget=2000, recall=0.95)
    small = plan_search(requested="auto", n_train=5_000, concepts_with_seals=3, seals_units=3, **kw)
    assert small.method == "flat" and "small" in small.reason
    big = plan_search(requested="auto", n_train=65_767, concepts_with_seals=20, seals_units=20, **kw)
    assert big.method == "ivf" and "IVF" in big.reason and big.queries == 40_000
    assert expected_queries(concepts=20, seals_units=20, seed_size=100, budget=2000) == 40_000
    assert (
        plan_search(requested="flat", n_train=65_767, concepts_with_seals=20, seals_units=20, **kw).method
        == "flat"
    )
    assert (
        plan_search(
            requested="auto", n_train=65_767, concepts_with_seals=20, seals_units=20, graph=True, **kw
        ).method
        == "graph"
    )
    assert (
        plan_search(requested="auto", n_train=65_767, concepts_with_seals=0, seals_units=0, **kw).method
        == "none"
    )
    gpu = plan_search(
        requested="auto", n_train=10**7, concepts_with_seals=20, seals_units=20, device_kind="cuda", **kw
    )
    assert gpu.method == "flat"
    assert (
        plan_search(
            requested="auto", n_train=10**7, concepts_with_seals=2, seals_units=2, index_kind="ivfpq", **kw
        ).method
        == "index"
    )
    with pytest.raises(ConfigError, match="--search 'hnsw'"):
        plan_search(requested="hnsw", n_train=10, concepts_with_seals=1, seals_units=1, **kw)
    with pytest.raises(ConfigError, match="--search-recall"):
        plan_search(
            requested="auto", n_train=10, concepts_with_seals=1, seals_units=1, **{**kw, "recall": 0.0}
        )


def test_ivfpq_index_search_returns_k_train_neighbours(tmp_path):
    """With an IVF-PQ --index, neighbours are searched among the train rows inside FAISS (an ID selector):
    every query gets k train neighbours, none from the test split, with recall against exact train-only
    search as the index's own recall."""
    from seals_gpu.backend import LocalBackend
    from seals_gpu.device import resolve_device
    from seals_gpu.index import IndexSpec, build_index
    from seals_gpu.store import write_store

    ids, x, labels = clustered(6000, 16, seed=4)
    store = write_store(tmp_path / "s", ids, x, labels=labels)
    idx = build_index(store, tmp_path / "i", IndexSpec(kind="ivfpq", nlist=32, pq_m=4, nprobe=16))
    all_ids, is_test = store.read_split()
    test = np.sort(all_ids[is_test])
    cpu = resolve_device("cpu")
    q = np.sort(all_ids[~is_test])[::50]
    xq = idx.vectors(q)
    D, I = LocalBackend(idx, cpu, excluded=test, search_method="index").search(xq, 20, q)
    assert (I >= 0).all() and not np.isin(I, test).any()
    _, I0 = LocalBackend(idx, cpu, excluded=test, search_method="flat").search(xq, 20, q)
    recall = np.mean([np.intersect1d(a, b).size / 20 for a, b in zip(I, I0, strict=True)])
    assert recall >= 0.9, recall
