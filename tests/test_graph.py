"""The precomputed kNN graph: equal to the index's own search, resumable, and a drop-in for the driver."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from seals_gpu.device import resolve_device
from seals_gpu.errors import ConfigError, IndexError_
from seals_gpu.graph import KnnGraph, build_graph
from seals_gpu.index import IndexSpec, LocalIndex, build_index
from seals_gpu.store import write_store

from .conftest import assert_same_neighbors, clustered
from .ray_fixture import ray_local_fixture  # noqa: F401  (the session-wide local Ray)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    ids, x, labels = clustered(3000, 16, seed=1)
    return write_store(tmp_path_factory.mktemp("graph") / "store", ids, x, labels=labels)


@pytest.fixture(scope="module")
def flat3(store, tmp_path_factory):
    return build_index(
        store, tmp_path_factory.mktemp("graph_idx") / "flat3", IndexSpec(kind="flat", shards=3)
    )


def _read(path):
    g = KnnGraph.open(path)
    return g.ids, g.sims, g.neighbors


def _train_knn(store, q_ids, k):
    """Brute force, float64: the k nearest TRAIN rows of each query id (itself excluded), ties by id."""
    ids, is_test = store.read_split()
    order = np.argsort(ids)
    ids, is_test = ids[order], is_test[order]
    x = store.take(ids).astype(np.float64)
    xt, tid = x[~is_test], ids[~is_test]
    sims = x[np.searchsorted(ids, q_ids)] @ xt.T
    sims[q_ids[:, None] == tid[None, :]] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, axis=1), tid[top]


def test_graph_equals_train_split_knn(flat3, store):
    """Row i of the graph is item i's k nearest TRAIN rows (the paper's N(z, k)): the test split is never a
    neighbour, and every row still has k of them."""
    path = build_graph(flat3.path, k=12, part_rows=700)
    assert path == flat3.path / "graph-k12"
    g = KnnGraph.open(path)
    assert g.k == 12 and len(g) == 3000
    ids = store.read_ids()
    np.testing.assert_array_equal(g.ids, np.sort(ids))
    D0, I0 = _train_knn(store, g.ids, 12)
    assert_same_neighbors(g.sims, g.neighbors, D0, I0)
    all_ids, is_test = store.read_split()
    assert not np.isin(g.neighbors, all_ids[is_test]).any() and np.isfinite(g.sims).all()
    # lookup: any order, any k up to the graph's
    q = ids[::31]
    sim, nb = g.lookup(q, 5)
    assert sim.dtype == np.float32 and nb.dtype == np.int64 and nb.shape == (q.size, 5)
    D5, I5 = _train_knn(store, q, 5)
    assert_same_neighbors(sim, nb, D5, I5)
    assert not (nb == q[:, None]).any()
    g.check_store(store)
    schema = pq.read_schema(path / "part-00000.parquet")
    assert str(schema.field("neighbors").type) == "list<element: int64>"
    assert str(schema.field("sims").type) == "list<element: float>"


def test_graph_errors(flat3, store, tmp_path):
    path = build_graph(flat3.path, k=4, out=tmp_path / "g4", part_rows=1000)
    g = KnnGraph.open(path)
    with pytest.raises(IndexError_, match=r"ids \[5\] are not in kNN graph"):
        g.lookup(np.array([5]))
    with pytest.raises(IndexError_, match=r"holds 4 neighbours per item.*--k 9"):
        g.lookup(g.ids[:2], 9)
    with pytest.raises(ConfigError, match="--k 0"):
        build_graph(flat3.path, k=0, out=tmp_path / "bad")
    with pytest.raises(IndexError_, match=r"other settings \(k"):
        build_graph(flat3.path, k=5, out=path, part_rows=1000)
    ids, x, _ = clustered(200, 16, seed=9)
    other = write_store(tmp_path / "other", ids, x)
    with pytest.raises(IndexError_, match="was built from index .* over a store with fingerprint"):
        g.check_store(other)
    (path / "part-00001.parquet").unlink()
    with pytest.raises(IndexError_, match=r"incomplete \(1 of 3 parts missing.*--k 4"):
        KnnGraph.open(path)
    with pytest.raises(IndexError_, match="not a kNN graph"):
        KnnGraph.open(tmp_path)


def test_graph_resume_redoes_only_missing_parts(flat3, tmp_path):
    out = tmp_path / "g"
    build_graph(flat3, k=8, out=out, part_rows=400)
    before = _read(out)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 9  # 3 shards of 1000 rows, 400 rows a part
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    parts[4].unlink()
    build_graph(flat3.path, k=8, out=out, part_rows=400)
    for p in sorted(out.glob("part-*.parquet")):
        if p.name != parts[4].name:
            assert p.stat().st_mtime_ns == stamps[p.name], f"{p.name} was recomputed"
    after = _read(out)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.ray
def test_graph_over_ray_actors_equals_local(ray_local, flat3, tmp_path):
    local = build_graph(flat3.path, k=10, out=tmp_path / "local", part_rows=600)
    remote = build_graph(flat3.path, k=10, out=tmp_path / "ray", part_rows=600, use_ray=True)
    for a, b in zip(_read(local), _read(remote), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [10, 6])
def test_run_with_graph_selects_what_the_index_selects(flat3, store, tmp_path, k):
    """A run over a graph of 10 neighbours per item selects what a run searching the index selects, also
    with a smaller --k: it then takes each item's first k neighbours (the pool grows by k per label)."""
    from seals_gpu.config import RunConfig
    from seals_gpu.driver import Run

    graph = KnnGraph.open(build_graph(flat3.path, k=10, out=tmp_path / "g10", part_rows=1000))

    def run(out, graph):
        cfg = RunConfig(
            store=str(store.path),
            store_fingerprint=store.fingerprint,
            concepts=(0, 2),
            strategies=("maxent", "id", "id-knn"),
            modes=("seals",),
            k=k,
            batch=40,
            budget=220,
            seed=5,
        )
        r = Run(
            cfg,
            out,
            store=store,
            index=LocalIndex.open(flat3.path),
            graph=graph,
            device=resolve_device("cpu"),
            progress=False,
            log=lambda *a: None,
        )
        r.start()
        return pq.read_table(out / "selections.parquet").to_pydict()

    with_index = run(tmp_path / "index", None)
    with_graph = run(tmp_path / "graph", graph)
    assert with_graph == with_index
    assert len(with_graph["id"]) == 2 * 3 * 220
