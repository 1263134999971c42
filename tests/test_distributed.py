"""Ray shard actors: the plain ShardServer (no Ray), sharded search and scoring against the in-process
backend, fault tolerance, and whole runs over a cluster equal to the single-process run."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from seals_gpu.backend import LocalBackend, sub_csr
from seals_gpu.device import resolve_device
from seals_gpu.errors import ConfigError, IndexError_
from seals_gpu.index import IndexSpec, LocalIndex, build_index
from seals_gpu.scoring import TopB, merge_topb
from seals_gpu.store import write_store

from .conftest import assert_same_neighbors, clustered
from .ray_fixture import ray_local_fixture  # noqa: F401  (the session-wide local Ray)

CPU = resolve_device("cpu")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    ids, x, labels = clustered(3000, 16, seed=1)
    return write_store(tmp_path_factory.mktemp("dist") / "store", ids, x, labels=labels)


@pytest.fixture(scope="module")
def index_paths(store, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_idx")
    out = {}
    for n in (1, 2, 3, 4):
        out[n] = root / f"flat{n}"
        build_index(store, out[n], IndexSpec(kind="flat", shards=n))
    return out


@pytest.fixture(scope="module")
def test_ids(store):
    ids, is_test = store.read_split()
    return np.sort(ids[is_test])


@pytest.fixture(scope="module")
def backend3(ray_local, index_paths, test_ids):
    from seals_gpu.distributed import RayBackend

    b = RayBackend(index_paths[3], excluded=test_ids, device=CPU)
    yield b
    b.close()


def _units(d: int, U: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(U, d, generator=g) * 3
    bias = torch.randn(U, generator=g)
    kind = torch.tensor([0, 1, 2, 0, 2][:U], dtype=torch.int8)
    ref = torch.nn.functional.normalize(torch.randn(U, d, generator=g), dim=1)
    return W, bias, kind, ref


def _csr(train: np.ndarray, U: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pools = [np.sort(rng.choice(train, size=int(rng.integers(0, 400)), replace=False)) for _ in range(U)]
    pools[1] = np.empty(0, np.int64)  # an empty pool
    offsets = np.zeros(U + 1, np.int64)
    offsets[1:] = np.cumsum([p.size for p in pools])
    return np.concatenate(pools).astype(np.int64), offsets


def _same_topb(a: TopB, b: TopB) -> None:
    ai, asc, ac = a.numpy()
    bi, bsc, bc = b.numpy()
    np.testing.assert_array_equal(ac, bc)
    np.testing.assert_array_equal(ai, bi)
    np.testing.assert_array_equal(asc, bsc)


# ------------------------------------------------------------------------------- ShardServer without Ray
def test_shard_server_matches_local_index(index_paths, store, test_ids):
    from seals_gpu.distributed import ShardServer

    local = LocalIndex.open(index_paths[2])
    servers = [
        ShardServer(index_paths[2] / s["dir"], "flat", None, test_ids, "cpu")
        for s in local.manifest["shards"]
    ]
    q = store.read_ids()[::41]
    xq = local.vectors(q)
    from seals_gpu.index import merge_neighbors

    sim, nb = merge_neighbors([s.search(xq, 15, q) for s in servers], 15)
    # neighbours among the train rows only, as the in-process backend finds them
    D0, I0 = LocalBackend(local, CPU, excluded=test_ids).search(xq, 15, q)
    np.testing.assert_array_equal(nb, I0)
    np.testing.assert_array_equal(sim, D0)
    assert not np.isin(nb, test_ids).any()
    info = servers[1].ready()
    assert info["n"] == local.shards[1].ntotal and info["dim"] == 16
    own = local.shards[1].ids[:7]
    np.testing.assert_array_equal(servers[1].vectors(own), local.vectors(own))
    assert servers[1].contains(own).all() and not servers[0].contains(own).any()
    with pytest.raises(IndexError_, match="are not in this index"):
        servers[0].vectors(own)
    # a graph part: this shard's own rows, each excluding itself
    ids, xp, Dp, Ip = servers[1].graph_part(10, 30, 5)
    np.testing.assert_array_equal(ids, local.shards[1].ids[10:30])
    np.testing.assert_array_equal(xp, local.vectors(ids))
    assert not (Ip == ids[:, None]).any()
    with pytest.raises(IndexError_, match=r"outside this shard's"):
        servers[1].graph_part(0, 10**6, 5)


def test_shard_server_scoring_equals_local_backend(index_paths, store, test_ids):
    from seals_gpu.distributed import ShardServer

    local = LocalIndex.open(index_paths[2])
    lb = LocalBackend(local, CPU, excluded=test_ids)
    servers = [
        ShardServer(index_paths[2] / s["dir"], "flat", None, test_ids, "cpu")
        for s in local.manifest["shards"]
    ]
    W, bias, kind, ref = _units(16)
    train = np.setdiff1d(store.read_ids(), test_ids)
    ids, offsets = _csr(train, 5)
    owner = local.shard_of(ids)
    merged = None
    for s, srv in enumerate(servers):
        sids, soff = sub_csr(ids, offsets, owner == s)
        part = srv.score_pool(sids, soff, W.numpy(), bias.numpy(), kind.numpy(), ref.numpy(), 1.0, 20)
        top = TopB(*(torch.from_numpy(a) for a in part))
        merged = top if merged is None else merge_topb(merged, top, 20)
    _same_topb(merged, lb.score_pool(ids, offsets, W, bias, kind, ref, 1.0, 20))

    exclude = [np.sort(train[i::50]) for i in range(5)]
    merged = None
    for srv in servers:
        top = TopB(*(torch.from_numpy(a) for a in srv.score_all(exclude, W, bias, kind, ref, 1.0, 20)))
        merged = top if merged is None else merge_topb(merged, top, 20)
    _same_topb(merged, lb.score_all(exclude, W, bias, kind, ref, 1.0, 20))

    total = np.zeros(16)
    count = 0
    for srv in servers:
        sums, c = srv.candidate_sum()
        for row in sums:
            total += row
        count += c
    t0, c0 = lb.candidate_sum()
    assert count == c0 == train.size
    np.testing.assert_array_equal(total, t0)
    some = train[:300]
    s_sum = sum(srv.sum_vectors(some[srv.contains(some)]) for srv in servers)
    np.testing.assert_allclose(s_sum, lb.sum_vectors(some), rtol=1e-12, atol=1e-12)


def test_ray_missing_names_the_extra(monkeypatch):
    from seals_gpu import distributed

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'seals_gpu\[dist\]'"):
        with distributed.ray_session(None):
            pass


# ----------------------------------------------------------------------------------------------- with Ray
@pytest.mark.ray
def test_sharded_exact_equals_single_index(ray_local, index_paths, store):
    from seals_gpu.distributed import ShardedIndex

    one = LocalIndex.open(index_paths[1])
    q = store.read_ids()[::23]
    xq = one.vectors(q)
    D0, I0 = LocalBackend(one, CPU).search(xq, 25, q)
    for n in (2, 4):
        with ShardedIndex(index_paths[n]) as si:
            assert si.n_shards == n
            sim, nb = si.search(xq, 25, exclude_ids=q)
            assert_same_neighbors(sim, nb, D0, I0)
            np.testing.assert_array_equal(si.vectors(q[::-1]), one.vectors(q[::-1]))
            assert si.contains(np.array([q[0], 3])).tolist() == [True, False]
            np.testing.assert_array_equal(si.all_ids(), one.all_ids())
            blocks = list(si.iter_vectors(block_rows=400))
            np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), one.all_ids())
            np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), one.vectors(one.all_ids()))
            si.check_store(store)
            assert si.describe()["shards"] == n
            with pytest.raises(IndexError_, match=r"ids \[\d+\] are not in index"):
                si.vectors(np.array([10**12]))


@pytest.mark.ray
def test_sharded_ivfpq_recall_matches_single(ray_local, store, tmp_path):
    from seals_gpu.distributed import ShardedIndex, ray_fill

    spec = dict(kind="ivfpq", nlist=16, pq_m=4, nprobe=4, rerank=4)
    exact = LocalIndex.open(build_index(store, tmp_path / "flat", IndexSpec(kind="flat")).path)
    single = build_index(store, tmp_path / "ivf1", IndexSpec(**spec))
    # the parallel Ray fill builds the same shards as the in-process fill
    local2 = build_index(store, tmp_path / "ivf2", IndexSpec(**spec, shards=2))
    ray2 = build_index(store, tmp_path / "ivf2r", IndexSpec(**spec, shards=2), fill=ray_fill)
    q = store.read_ids()[::15]
    xq = exact.vectors(q)
    _, I_ex = exact.search(xq, 20, exclude_ids=q)

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, I_ex, strict=True)])

    with ShardedIndex(ray2.path) as si:
        _, I_r = si.search(xq, 20, exclude_ids=q)
    np.testing.assert_array_equal(I_r, local2.search(xq, 20, exclude_ids=q)[1])
    r_single = recall(single.search(xq, 20, exclude_ids=q)[1])
    r_sharded = recall(I_r)
    assert r_single >= 0.8 and r_sharded >= r_single - 0.03, (r_single, r_sharded)


@pytest.mark.ray
def test_ray_backend_scoring_equals_local_backend(backend3, index_paths, store, test_ids):
    lb = LocalBackend(LocalIndex.open(index_paths[3]), CPU, excluded=test_ids)
    lb1 = LocalBackend(LocalIndex.open(index_paths[1]), CPU, excluded=test_ids)
    W, bias, kind, ref = _units(16, seed=4)
    train = np.setdiff1d(store.read_ids(), test_ids)
    ids, offsets = _csr(train, 5, seed=4)
    got = backend3.score_pool(ids, offsets, W, bias, kind, ref, 1.0, 30)
    _same_topb(got, lb.score_pool(ids, offsets, W, bias, kind, ref, 1.0, 30))
    _same_topb(got, lb1.score_pool(ids, offsets, W, bias, kind, ref, 1.0, 30))
    exclude = [np.sort(train[i::40]) for i in range(5)]
    _same_topb(
        backend3.score_all(exclude, W, bias, kind, ref, 1.0, 30),
        lb.score_all(exclude, W, bias, kind, ref, 1.0, 30),
    )
    t, c = backend3.candidate_sum()
    t0, c0 = lb.candidate_sum()
    np.testing.assert_array_equal(t, t0)
    assert c == c0 == backend3.n_candidates() == train.size
    np.testing.assert_allclose(backend3.sum_vectors(train[::7]), lb.sum_vectors(train[::7]), rtol=1e-12)
    groups = [(np.arange(W.shape[0]), test_ids)]
    np.testing.assert_array_equal(
        backend3.group_logits(groups, W, bias)[0], lb.group_logits(groups, W, bias)[0]
    )
    assert backend3.dim == 16
    empty = backend3.score_pool(
        np.empty(0, np.int64), np.zeros(3, np.int64), W[:2], bias[:2], kind[:2], ref[:2], 1.0, 5
    )
    assert empty.counts.tolist() == [0, 0]


@pytest.mark.ray
def test_killed_actor_is_restarted_and_calls_retried(backend3, ray_local, index_paths, store, test_ids):
    one = LocalIndex.open(index_paths[1])
    q = store.read_ids()[::29]
    xq = one.vectors(q)
    D0, I0 = LocalBackend(one, CPU, excluded=test_ids).search(xq, 10, q)
    pid = ray_local.get(backend3.actors[1].pid.remote())
    ray_local.kill(backend3.actors[1], no_restart=False)  # Ray restarts it; it reloads its shard
    sim, nb = backend3.search(xq, 10, exclude_ids=q)
    assert_same_neighbors(sim, nb, D0, I0)
    assert ray_local.get(backend3.actors[1].pid.remote()) != pid
    # an actor Ray will not restart is re-created by the driver
    ray_local.kill(backend3.actors[2], no_restart=True)
    np.testing.assert_array_equal(backend3.vectors(q), one.vectors(q))
    assert_same_neighbors(*backend3.search(xq, 10, exclude_ids=q), D0, I0)


# --------------------------------------------------------------------------------------------- whole runs
def _run(store, out, *, backend=None, index=None, graph=None, strategies=("maxent", "mlp", "id", "random")):
    from seals_gpu.config import RunConfig
    from seals_gpu.driver import Run

    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(0, 1),
        strategies=strategies,
        modes=("seals", "all"),
        k=10,
        batch=50,
        budget=250,
        seed=3,
    )
    run = Run(
        cfg,
        out,
        store=store,
        index=index,
        backend=backend,
        graph=graph,
        device=CPU,
        progress=False,
        log=lambda *a: None,
    )
    run.start()
    return pq.read_table(out / "selections.parquet").to_pydict()


@pytest.mark.ray
def test_run_over_three_ray_shards_equals_in_process(
    backend3,
    ray_local,
    index_paths,
    store,
    tmp_path,
    monkeypatch,
):
    ref = _run(store, tmp_path / "local", index=LocalIndex.open(index_paths[3]))
    got = _run(store, tmp_path / "ray", backend=backend3)
    assert got == ref
    assert len(ref["id"]) == 2 * 4 * 2 * 250

    # kill shard actors in the middle of the run: right before a call, and from a timer thread during one
    calls = []
    pids = ray_local.get([a.pid.remote() for a in backend3.actors])
    score_pool = backend3.score_pool

    def killing_score_pool(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            ray_local.kill(backend3.actors[0], no_restart=False)
        elif len(calls) == 2:
            threading.Timer(
                0.02, ray_local.kill, args=(backend3.actors[2],), kwargs={"no_restart": False}
            ).start()
        return score_pool(*a, **kw)

    monkeypatch.setattr(backend3, "score_pool", killing_score_pool)
    got = _run(store, tmp_path / "ray_killed", backend=backend3)
    assert len(calls) >= 2
    new_pids = ray_local.get([a.pid.remote() for a in backend3.actors])
    assert new_pids[0] != pids[0] and new_pids[2] != pids[2] and new_pids[1] == pids[1]
    assert got == ref


@pytest.mark.ray
def test_errors_reach_the_driver_as_clear_messages(backend3, ray_local, store, tmp_path):
    from seals_gpu.distributed import ShardedIndex

    with pytest.raises(IndexError_, match=r"queries must have shape \(nq, 16\)"):
        backend3.search(np.zeros((2, 5), np.float32), 3)
    inside = np.array([store.read_ids().min() + 1])  # inside shard 0's id range, but not an id of the store
    with pytest.raises(IndexError_, match=r"are not in this index") as info:
        backend3.vectors(inside)
    assert "Traceback" not in str(info.value)
    W, bias, kind, ref = _units(16, U=2)
    with pytest.raises(IndexError_, match=r"are not in this index"):
        backend3.score_pool(inside, np.array([0, 1, 1]), W, bias, kind, ref, 1.0, 3)
    bad = build_index(store, tmp_path / "bad", IndexSpec(kind="flat", shards=2)).path
    f = bad / "shard-00001" / "vectors.npy"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(IndexError_, match=r"could not load its shard: .*shard-00001: shard file is corrupt"):
        ShardedIndex(bad)


@pytest.mark.ray
def test_ray_test_ap_equals_local_and_scikit_learn(backend3, index_paths, store, test_ids):
    """Test AP computed on the shards (pass 1 and pass 2 where the rows live) equals the in-process AP and
    scikit-learn's on float64 logits; only counts travel back."""
    from sklearn.metrics import average_precision_score

    from seals_gpu.evaluate import evaluate_ap

    W, bias, _, _ = _units(16, seed=9)
    concepts = [0, 1, 2]
    pos = store.concept_positives(concepts)
    groups = [
        (np.array([2 * c, 2 * c + 1], np.int64)[: W.shape[0] - 2 * c], np.intersect1d(pos[c], test_ids))
        for c in concepts
    ]
    got = evaluate_ap(backend3, W, bias, groups)
    lb = LocalBackend(LocalIndex.open(index_paths[1]), CPU, excluded=test_ids)
    np.testing.assert_array_equal(got, evaluate_ap(lb, W, bias, groups))
    x = lb.vectors(test_ids).astype(np.float64)
    for units, p in groups:
        y = np.isin(test_ids, p)
        for u in units.tolist():
            want = average_precision_score(y, x @ W[u].double().numpy() + float(bias[u]))
            assert got[u] == pytest.approx(want, abs=1e-12)
