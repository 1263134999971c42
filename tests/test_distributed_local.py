"""The Ray layer's driver-side logic, in process: ``ShardedIndex`` and ``RayBackend`` over an in-process
stand-in for Ray (``tests/local_ray.py``: real ``ShardActor`` instances, Ray's own exception classes, faults
injected on demand) answer as the single-process ``LocalIndex`` / ``LocalBackend`` do, place and re-place
their shard actors as documented, and retry, revive or refuse as :class:`FaultTolerance` says.

The store's ids span nearly the whole int64 range (negative ids, -1, 0, ``int64.min + 1``, ``int64.max - 1``)
and the first and last id of every shard are on both sides of the split, so routing by id range is tested
at its edges. None of these tests starts Ray (not marked ``ray``): mutation runs use them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("ray")  # the real exception classes come from Ray (an optional dependency)
import ray.exceptions as rex  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from seals_gpu import distributed as dist  # noqa: E402
from seals_gpu.backend import LocalBackend  # noqa: E402
from seals_gpu.device import resolve_device  # noqa: E402
from seals_gpu.errors import ConfigError, IndexError_  # noqa: E402
from seals_gpu.index import IndexSpec, LocalIndex, build_index  # noqa: E402
from seals_gpu.index.shard import SearchParams  # noqa: E402
from seals_gpu.scoring import merge_topb  # noqa: E402
from seals_gpu.store import Store, write_store  # noqa: E402

from .conftest import assert_same_neighbors, clustered  # noqa: E402
from .local_ray import LocalRay, install, node, node_id  # noqa: E402
from .test_distributed import _same_topb, _units  # noqa: E402

CPU = resolve_device("cpu")
I64 = np.iinfo(np.int64)
N, DIM, SHARDS = 601, 8, 3  # shards of 200, 200 and 201 rows
TWINS = [50, 250, 450, 500]  # sorted positions (shards 0, 1, 2, 2) of near-duplicate vectors
TWIN_BASE = np.random.default_rng(3).normal(size=DIM)
INNER = [I64.min + 1, -(2**62), -(2**40), -3, -2, -1, 0, 1, 2**40, I64.max - 1]


# ------------------------------------------------------------------------------------------------ fixtures
@dataclass
class Data:
    store: Store
    flat: Path  # SHARDS shards
    flat1: Path  # one shard
    ids: np.ndarray  # every id, sorted
    test_ids: np.ndarray  # sorted
    train_ids: np.ndarray  # sorted
    edges: np.ndarray  # (SHARDS, 2): first and last id of each shard of `flat`


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    """A store whose ids run from int64.min + 1 to int64.max - 1 (so int64.min and int64.max lie below and
    above every shard), rows stored shuffled. Shard edges on the test side: both of shard 0's, shard 1's first
    and shard 2's last; on the train side: shard 1's last and shard 2's first."""
    root = tmp_path_factory.mktemp("dist_local")
    _, x, labels = clustered(N, DIM, n_concepts=3, seed=11, id_offset=0)
    rng = np.random.default_rng(5)
    pool = np.setdiff1d(np.unique(rng.integers(I64.min + 2, I64.max - 1, size=4 * N, dtype=np.int64)), INNER)
    ids = np.sort(np.r_[np.array(INNER, np.int64), rng.choice(pool, size=N - len(INNER), replace=False)])
    bounds = np.linspace(0, N, SHARDS + 1).astype(np.int64)  # build_index's split into shards
    edge_pos = np.stack([bounds[:-1], bounds[1:] - 1], axis=1)
    is_test = rng.random(N) < 0.25
    is_test[edge_pos.ravel()] = True
    is_test[[edge_pos[1, 1], edge_pos[2, 0]]] = False  # two shard edges on the train side
    is_test[np.isin(ids, [-1, 0])] = False
    is_test[TWINS] = False
    assert N * 0.6 < (~is_test).sum() < 500
    perm = rng.permutation(N)  # store row i holds sorted id perm[i]
    # near-duplicates of one vector in every shard: a query there has near-ties across shards
    x[np.argsort(perm)[TWINS]] = TWIN_BASE + 1e-3 * rng.normal(size=(len(TWINS), DIM))
    split = np.where(is_test, "test", "train")[perm]
    store = write_store(root / "store", ids[perm], x, labels=labels, split=split)
    flat = build_index(store, root / "flat3", IndexSpec(kind="flat", shards=SHARDS)).path
    flat1 = build_index(store, root / "flat1", IndexSpec(kind="flat")).path
    assert [s["n"] for s in LocalIndex.open(flat).manifest["shards"]] == [200, 200, 201]
    for p in edge_pos[:, 1]:  # no id just above a shard's last (the tests probe between shards there)
        assert ids[p] + 1 not in ids and ids[p] != I64.max
    return Data(store, Path(flat), Path(flat1), ids, ids[is_test], ids[~is_test], ids[edge_pos])


@pytest.fixture
def fake(monkeypatch) -> LocalRay:
    """A two-node fake cluster: node a (10.0.0.1, 6 CPUs) and node b (10.0.0.2, 2 CPUs)."""
    return install(monkeypatch, LocalRay([node("a", "10.0.0.1", CPU=6.0), node("b", "10.0.0.2", CPU=2.0)]))


def _queries(d: Data) -> np.ndarray:
    """Every shard edge, -1, 0 and some other ids."""
    return np.r_[d.edges.ravel(), [-1, 0], d.ids[7::53]]


def _local(
    d: Data, *, excluded: np.ndarray | None = None, block_rows: int = 131_072, path=None
) -> LocalBackend:
    return LocalBackend(LocalIndex.open(path or d.flat), CPU, excluded=excluded, block_rows=block_rows)


def _absent_inside(d: Data, s: int) -> int:
    """An id inside shard ``s``'s id range that the store does not hold."""
    v = int(d.edges[s, 1]) - 1
    while v in d.ids:
        v -= 1
    return v


def _options(actor: Any) -> dict[str, Any]:
    """An actor's options, its scheduling strategy as ``(node_id, soft)`` (or "SPREAD")."""
    opts = dict(actor.options)
    st = opts.pop("scheduling_strategy")
    opts["where"] = st if isinstance(st, str) else (st.node_id, st.soft)
    return opts


def _methods(fake: LocalRay, name: str) -> list[int]:
    """The actors (by creation index) that were asked ``name``, in order."""
    return [a for a, m in fake.calls if m == name]


# ----------------------------------------------------------------------------------------------- helpers
def test_fault_tolerance_defaults_are_what_actors_are_given():
    """Ray restarts a shard actor without limit and re-runs in-flight calls 3 times; the driver retries 4
    times from 0.5 s and waits 600 s for a shard to load."""
    ft = dist.DEFAULT_FAULT_TOLERANCE
    assert dataclasses.astuple(ft) == (-1, 3, 4, 0.5, 600.0) == dataclasses.astuple(dist.FaultTolerance())
    assert ft.actor_options() == {"max_restarts": -1, "max_task_retries": 3}
    assert dist.FaultTolerance(max_restarts=2, max_task_retries=0).actor_options() == {
        "max_restarts": 2,
        "max_task_retries": 0,
    }


def test_retryable_errors_are_the_actor_failures_only():
    """A dead, restarting or unreachable actor (or a lost object) is retried; a task's own error and a
    timeout are not."""
    errors = dist._retryable_errors()
    for e in (
        rex.RayActorError(),
        rex.ActorDiedError(),
        rex.ActorUnavailableError("restarting", None),
        rex.ObjectLostError("ab" * 14, None, ""),
    ):
        assert isinstance(e, errors), type(e)
    assert not issubclass(rex.GetTimeoutError, errors)
    assert not issubclass(rex.RayTaskError, errors)


def _ray_init_error(message: str) -> BaseException:
    """The ActorDiedError Ray raises for an actor whose ``__init__`` raised ``IndexError_(message)``."""
    try:
        raise IndexError_(message)
    except IndexError_ as e:
        import traceback

        tb = "".join(traceback.format_exception(e))
        task = rex.RayTaskError(
            "ShardActor.__init__", tb, e, proctitle="ray::ShardActor", pid=7, ip="10.0.0.2"
        )
    return rex.ActorDiedError(task)


def test_last_error_line_reads_the_remote_exception_from_ray_texts():
    """From Ray's error text (colour codes, a remote traceback) the remote exception's own message, and
    nothing of the traceback; a text without ``module.Class: message`` gives its last line."""
    e = _ray_init_error("/idx/shard-00001: shard file is corrupt (vectors.npy: 1000 bytes)")
    assert e.actor_init_failed
    assert dist._last_error_line(e) == "/idx/shard-00001: shard file is corrupt (vectors.npy: 1000 bytes)"
    assert dist._last_error_line(ValueError("a\n  File x, line 2\nKeyError: 'k'\n\n")) == "'k'"
    assert dist._last_error_line(ValueError("x\nMyException: boom")) == "boom"
    chained = (
        "OSError: disk\n\nThe above exception was the direct cause of:\n\nseals_gpu.errors.IndexError_: bad"
    )
    assert dist._last_error_line(ValueError(chained)) == "bad"  # the last exception raised
    # a head with a space is prose, not an exception name; the last line is the fallback
    assert dist._last_error_line(ValueError("Some Error: happened\nlast words")) == "last words"
    assert dist._last_error_line(ValueError("disk quota: exceeded")) == "disk quota: exceeded"
    assert dist._last_error_line(ValueError("   \n")) == "ValueError"
    assert (
        dist._last_error_line(rex.ActorDiedError())
        == "The actor died unexpectedly before finishing this task."
    )


def test_as_params_units_and_host_convert_what_crosses_the_wire():
    """Search knobs as a dict (nprobe 32, rerank 4 by default), a SearchParams or None; per-unit arrays as
    tensors with None kept; tensors back to host numpy in their own dtype."""
    assert dist._as_params(None) == SearchParams()
    p = SearchParams(nprobe=3, rerank=2)
    assert dist._as_params(p) is p
    assert dist._as_params({"nprobe": "5"}) == SearchParams(nprobe=5, rerank=4)
    assert dist._as_params({"rerank": 7}) == SearchParams(nprobe=32, rerank=7)
    W = np.ones((2, 3), np.float32)
    out = dist._units(W, None, np.array([0, 2], np.int8), None)
    assert len(out) == 4 and out[1] is None and out[3] is None
    assert torch.is_tensor(out[0]) and out[0].dtype == torch.float32 and out[2].dtype == torch.int8
    assert dist._host(None) is None
    h = dist._host(torch.tensor([1.5, 2.5], dtype=torch.float32))
    assert isinstance(h, np.ndarray) and h.dtype == np.float32 and h.tolist() == [1.5, 2.5]
    assert dist._host([1, 2]).tolist() == [1, 2]


def _topb(ids, scores, counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(ids, np.int64), np.array(scores, np.float32), np.array(counts, np.int64)


def test_merge_parts_is_the_top_b_of_the_union_whatever_the_order():
    """Per-shard ``(ids, scores, counts)`` (read-only, as from Ray's object store) merge into the top-b of
    their union: any order, -1 and int64 extremes as ids, fewer candidates than b padded; no part: empty."""
    a = _topb([[I64.max, -1, 0], [5, -1, -1]], [[0.9, 0.5, 0.1], [0.3, -np.inf, -np.inf]], [3, 1])
    b = _topb([[I64.min, 7, -1], [-1, -1, -1]], [[0.7, 0.5, -np.inf], [-np.inf] * 3], [2, 0])
    for arr in (*a, *b):
        arr.setflags(write=False)
    want = merge_topb(dist._topb_from_numpy(a), dist._topb_from_numpy(b), 4)
    assert want.ids[0].tolist() == [I64.max, I64.min, -1, 7] and want.counts.tolist() == [4, 1]
    for parts in ([a, b], [b, a]):
        _same_topb(dist._merge_parts(parts, 2, 4), want)
    one = dist._merge_parts([a], 2, 3)
    np.testing.assert_array_equal(one.ids.numpy(), a[0])
    one.ids[0, 0] = 1  # writeable, and a copy: the part is untouched
    assert a[0][0, 0] == I64.max
    empty = dist._merge_parts([], 3, 2)
    assert empty.counts.tolist() == [0, 0, 0] and empty.ids.shape == (3, 2)


def test_node_slots_and_assign_shards_at_their_edges():
    """A node with exactly one CPU (or exactly the GPUs an actor needs) hosts; fewer does not; GPU slots
    are whole GPUs (at least 1); the address defaults to '?'; kept shards outside the range are ignored;
    ties go to the node with fewer shards, then to the earlier node."""
    nodes = [
        {"NodeID": "one", "Alive": True, "NodeManagerAddress": "10.0.0.5", "Resources": {"CPU": 1.0}},
        {"NodeID": "most", "Alive": True, "NodeManagerAddress": "10.0.0.6", "Resources": {"CPU": 0.99}},
        {"NodeID": "noaddr", "Alive": True, "Resources": {"CPU": 2, "GPU": 0.5}},
        {"NodeID": "g", "Alive": True, "NodeManagerAddress": "10.0.0.7", "Resources": {"CPU": 1, "GPU": 2.6}},
        {"NodeID": "nores", "Alive": True, "NodeManagerAddress": "10.0.0.8", "Resources": None},
    ]
    cpu = dist.node_slots(nodes)
    assert [(n.node_id, n.address, n.cpus, n.slots) for n in cpu] == [
        ("one", "10.0.0.5", 1.0, 1),
        ("g", "10.0.0.7", 1.0, 1),
        ("noaddr", "?", 2.0, 1),
    ]
    assert [(n.node_id, n.slots) for n in dist.node_slots(nodes, gpus_per_actor=0.5)] == [
        ("g", 2),
        ("noaddr", 1),
    ]
    assert [n.node_id for n in dist.node_slots(nodes, gpus_per_actor=2.6)] == ["g"]
    a, b = dist.NodeSlot("a", "1", 4, 2), dist.NodeSlot("b", "2", 4, 1)
    # by load (shards / slots): a, b, a; then both at 1.0: b, which holds fewer shards
    assert dist.assign_shards(4, [a, b]) == ["a", "b", "a", "b"]
    assert dist.assign_shards(2, [a, b], keep={5: "a", -1: "b", 0: "b"}) == ["b", "a"]
    c = dist.NodeSlot("c", "3", 4, 2)
    # a and c both at load 1/2 with one shard each after keeping: the earlier node, a
    assert dist.assign_shards(3, [a, c], keep={0: "a", 1: "c"}) == ["a", "c", "a"]
    assert dist.assign_shards(0, [a]) == []


# ------------------------------------------------------------------------------------------- ShardServer
def test_shard_server_refuses_unknown_split_questions_and_graph_rows(data):
    """``split`` answers only counts, codes, take and side_ids; ``graph_part`` only rows inside the shard."""
    shard = data.flat / "shard-00001"
    srv = dist.ShardServer(shard, "flat", {"nprobe": 2}, data.test_ids, "cpu")
    own = data.test_ids[(data.test_ids >= data.edges[1, 0]) & (data.test_ids <= data.edges[1, 1])]
    np.testing.assert_array_equal(srv.excluded, own)  # only this shard's test ids are kept
    assert srv.split("counts") == (200 - own.size, own.size)
    with pytest.raises(ValueError, match=r"split method 'rows': choose counts, codes, take or side_ids"):
        srv.split("rows")
    ids, xq, D, I = srv.graph_part(198, 200, 3)  # the shard's last two rows, the last one its id_max
    assert ids.tolist() == [int(data.ids[398]), int(data.edges[1, 1])] and xq.shape == (2, DIM)
    assert not (I == ids[:, None]).any() and D.shape == (2, 3)
    assert srv.graph_part(5, 5, 3)[0].size == 0
    for start, stop in ((-1, 3), (4, 3), (0, 201)):
        with pytest.raises(
            IndexError_, match=rf"graph part rows \[{start}, {stop}\) are outside this shard's 200"
        ):
            srv.graph_part(start, stop, 3)
    assert srv.ids(0, 1).dtype == np.int64 and srv.ids().size == 200


def test_an_empty_shard_answers_with_nothing(data, tmp_path):
    """A shard folder without rows loads, reports no id range, and searches, sums and scores to nothing."""
    empty = tmp_path / "shard-00000"
    empty.mkdir()
    np.save(empty / "ids.npy", np.empty(0, np.int64))
    np.save(empty / "vectors.npy", np.empty((0, DIM), np.float32))
    srv = dist.ShardServer(empty, "flat", None, data.test_ids, "cpu")
    info = srv.ready()
    assert (info["n"], info["dim"], info["id_min"], info["id_max"]) == (0, DIM, None, None)
    assert srv.index.manifest["shards"][0]["id_min"] > srv.index.manifest["shards"][0]["id_max"]
    D, I = srv.search(np.ones((2, DIM), np.float32) / np.sqrt(DIM), 3)
    assert np.isneginf(D).all() and D.shape == (2, 3)
    sums, count = srv.candidate_sum()
    assert sums.shape == (0, DIM) and sums.dtype == np.float64 and count == 0
    assert srv.excluded.size == 0 and srv.split("counts") == (0, 0)


def test_shard_server_reads_its_test_ids_from_the_store(data):
    """Given the store (the dict form), a shard keeps exactly the store's test ids in its range, as with the
    id list; a store other than the index's (another fingerprint) is refused."""
    shard = data.flat / "shard-00002"
    fp = LocalIndex.open(data.flat).store_fingerprint
    srv = dist.ShardServer(shard, "flat", None, {"store": str(data.store.path), "fingerprint": fp}, "cpu")
    want = data.test_ids[data.test_ids >= data.edges[2, 0]]
    np.testing.assert_array_equal(srv.excluded, want)
    assert srv.excluded[-1] == data.edges[2, 1]  # the shard's last id
    with pytest.raises(IndexError_, match=r"but the index was built from 0+; rebuild the index"):
        dist.ShardServer(shard, "flat", None, {"store": str(data.store.path), "fingerprint": "0" * 32}, "cpu")


# ------------------------------------------------------------------------------------------ ray_session
def test_ray_session_reuses_a_running_ray_and_leaves_it_running(monkeypatch):
    fake = install(monkeypatch)
    with dist.ray_session("ray://elsewhere:10001") as r:
        assert r is fake
    assert fake.inits == [] and fake.shutdowns == 0


def test_ray_session_connects_or_starts_and_shuts_down(monkeypatch):
    """An address (given, or from RAY_ADDRESS) is joined quietly; without one a local Ray of ``num_cpus``
    (default: this machine's CPUs) starts without dashboard; either way it shuts down after the block, also
    after an error in it."""
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    fake = install(monkeypatch, LocalRay(initialized=False))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with dist.ray_session("10.0.0.1:6379") as r:
        assert r is fake and fake.is_initialized()
    assert fake.inits == [{"address": "10.0.0.1:6379", **quiet}] and fake.shutdowns == 1
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    with pytest.raises(KeyError):
        with dist.ray_session(None):
            raise KeyError("inside")
    assert fake.inits[-1] == {"address": "10.0.0.9:6379", **quiet} and fake.shutdowns == 2
    monkeypatch.setenv("RAY_ADDRESS", "")
    with dist.ray_session(None, num_cpus=3):
        pass
    assert fake.inits[-1] == {"address": "local", "num_cpus": 3, "include_dashboard": False, **quiet}
    monkeypatch.setattr(dist.os, "cpu_count", lambda: 5)
    with dist.ray_session():
        pass
    assert fake.inits[-1]["num_cpus"] == 5 and fake.shutdowns == 4
    monkeypatch.setattr(dist.os, "cpu_count", lambda: None)
    with dist.ray_session():
        pass
    assert fake.inits[-1]["num_cpus"] == 1


def test_ray_session_names_an_unreachable_cluster(monkeypatch):
    fake = install(monkeypatch, LocalRay(initialized=False, init_error=ConnectionError("refused")))
    with pytest.raises(
        ConfigError, match=r"cannot reach the Ray cluster at '10\.0\.0\.1:1' \(refused\); check"
    ):
        with dist.ray_session("10.0.0.1:1"):
            pass
    assert fake.shutdowns == 0


# ------------------------------------------------------------------------------------------ ShardedIndex
def test_sharded_index_needs_a_session(data, monkeypatch):
    install(monkeypatch, LocalRay(initialized=False))
    with pytest.raises(ConfigError, match=r"ShardedIndex needs a Ray session"):
        dist.ShardedIndex(data.flat)


def test_sharded_search_equals_the_single_process_search(data, fake):
    """Every shard searched and merged gives the single-process result, ids and similarities, with the
    queries' own ids excluded (shard edges among them) or not; equal to the one-shard index's too."""
    q = _queries(data)
    local = _local(data)
    xq = local.vectors(q)
    with dist.ShardedIndex(data.flat) as si:
        for ex in (q, None):
            puts = len(fake.puts)
            D, I = si.search(xq, 12, exclude_ids=ex)
            assert len(fake.puts) - puts == 2  # queries and exclusions put once, shared by every shard
            D0, I0 = local.search(xq, 12, ex)
            np.testing.assert_array_equal(I, I0)
            np.testing.assert_array_equal(D, D0)
            assert D.dtype == np.float32 and I.dtype == np.int64
        assert (I == q[:, None]).any()  # without exclusions a query finds itself
        D, I = si.search(xq, 12, exclude_ids=q)
        assert not (I == q[:, None]).any()
        assert_same_neighbors(D, I, *LocalIndex.open(data.flat1).search(xq, 12, exclude_ids=q))
        D1, I1 = si.search(xq.astype(np.float64)[:3], 600, exclude_ids=q[:3])  # more than any shard holds
        assert np.isfinite(D1).sum(axis=1).tolist() == [600, 600, 600]


def test_near_ties_across_shards_are_ordered_by_exact_scores(data, fake):
    """Candidates from different shards closer than float32 rounding are re-scored exactly, so the ids (and
    similarities) do not depend on the sharding: equal to the one-shard index's."""
    xq = (TWIN_BASE / np.linalg.norm(TWIN_BASE)).astype(np.float32)[None, :]
    twins = data.ids[TWINS]
    one = _local(data, path=data.flat1)
    with dist.ShardedIndex(data.flat) as si:
        for k in (1, 2, 3, 4):
            D, I = si.search(xq, k)
            D0, I0 = one.search(xq, k)
            assert set(I[0]) <= set(twins.tolist())
            np.testing.assert_array_equal(I, I0)
            np.testing.assert_array_equal(D, D0)


def test_sharded_search_refuses_bad_queries_before_asking_a_shard(data, fake):
    """k < 1, queries of the wrong shape and NaN or inf are refused in the driver, naming the fix."""
    with dist.ShardedIndex(data.flat) as si:
        before = len(fake.calls)
        xq = np.zeros((2, DIM), np.float32)
        with pytest.raises(IndexError_, match=r"k=0; the number of neighbours must be at least 1"):
            si.search(xq, 0)
        for bad in (np.zeros((2, DIM + 1)), np.zeros(DIM), np.zeros((1, 2, DIM))):
            with pytest.raises(IndexError_, match=rf"queries must have shape \(nq, {DIM}\), got"):
                si.search(bad, 3)
        for v in (np.nan, np.inf):
            xq[1, 2] = v
            with pytest.raises(IndexError_, match=r"queries contain NaN or inf"):
                si.search(xq, 3)
        assert len(fake.calls) == before
        one = si.search(np.ones((1, DIM), np.float32) / np.sqrt(DIM), 1)
        assert one[1].shape == (1, 1)


def test_sharded_lookups_route_ids_by_shard_ranges(data, fake):
    """``vectors``, ``contains``, ``all_ids``, ``iter_vectors``, ``shard_of`` and ``owners`` answer as the
    single-process index, ids at shard edges, between shards, below the first and above the last included."""
    local = LocalIndex.open(data.flat)
    e = data.edges
    with dist.ShardedIndex(data.flat) as si:
        q = np.r_[e.ravel()[::-1], data.ids[::37]]
        np.testing.assert_array_equal(si.vectors(q), local.vectors(q))
        gets = len(fake.get_timeouts)
        assert si.vectors(np.empty(0, np.int64)).shape == (0, DIM)
        assert len(fake.get_timeouts) == gets  # nothing asked for nothing
        assert si.vectors(q[:2].reshape(2, 1)).shape == (2, DIM)  # any shape, raveled
        np.testing.assert_array_equal(si.shard_of(e.ravel()), [0, 0, 1, 1, 2, 2])
        between = [int(e[0, 1]) + 1, int(e[1, 0]) - 1, int(e[1, 1]) + 1, int(e[2, 0]) - 1]
        outside = [I64.min, I64.max]
        probe = np.array([*e.ravel(), *between, *outside, -1, 0], np.int64)
        got = si.contains(probe)
        np.testing.assert_array_equal(got, local.contains(probe))
        assert got.tolist() == [True] * 6 + [False] * 6 + [True, True]
        assert si.contains(np.empty(0, np.int64)).tolist() == []
        np.testing.assert_array_equal(si.shard_of([I64.min, I64.max]), [0, 3])
        np.testing.assert_array_equal(si.owners(e[:, 1]), [0, 1, 2])
        with pytest.raises(
            IndexError_, match=rf"ids \[{I64.max}\] are not in index .*flat3; pass ids from its"
        ):
            si.owners(np.array([e[2, 1], I64.max]))
        five = ", ".join([str(I64.max)] * 5)
        with pytest.raises(IndexError_, match=rf"ids \[{five}\] are not in index"):
            si.owners(np.full(6, I64.max))  # the first five named
        with pytest.raises(IndexError_, match=r"are not in this index"):  # inside shard 0's range, not an id
            si.vectors(np.array([_absent_inside(data, 0)]))
        np.testing.assert_array_equal(si.all_ids(), local.all_ids())
        calls = len(_methods(fake, "block"))
        blocks = list(si.iter_vectors(block_rows=64))
        want = list(local.iter_vectors(block_rows=64))
        assert [b[0].size for b in blocks] == [64, 64, 64, 8, 64, 64, 64, 8, 64, 64, 64, 9]
        for (i, x), (i0, x0) in zip(blocks, want, strict=True):
            np.testing.assert_array_equal(i, i0)
            np.testing.assert_array_equal(x, x0)
        assert len(_methods(fake, "block")) - calls == 12
        got = si.each("ids", {2: (0, 1), 0: (199, None)})
        assert list(got) == [0, 2] and got[0].tolist() == [e[0, 1]] and got[2].tolist() == [e[2, 0]]


def test_sharded_index_describes_itself_and_checks_its_store(data, fake, tmp_path):
    """``describe`` is the manifest's summary plus shards, actors and placement; the placement log names
    every shard's folder, rows, node (short id, address) and process; another store is refused."""
    a, b = node_id("a"), node_id("b")
    with dist.ShardedIndex(data.flat) as si:
        m = si.manifest
        assert si.describe() == {
            "kind": "flat",
            "dim": DIM,
            "ntotal": N,
            "params": m["params"],
            "store": m["store"],
            "shards": SHARDS,
            "actors": "ray",
            "placement": [{"shard": 0, "node_id": a}, {"shard": 1, "node_id": b}, {"shard": 2, "node_id": a}],
        }
        assert si.placement_lines() == [
            "ray: 3 shard actor(s) on 2 node(s)",
            f"ray: shard 0 (shard-00000, 200 rows) on node {a[:12]} (10.0.0.1), pid 1001",
            f"ray: shard 1 (shard-00001, 200 rows) on node {b[:12]} (10.0.0.2), pid 1002",
            f"ray: shard 2 (shard-00002, 201 rows) on node {a[:12]} (10.0.0.1), pid 1003",
        ]
        assert [p["node_id"] for p in si.placement] == [a, b, a] and si.placement[2]["n"] == 201
        assert si.placement[1]["id_min"] == data.edges[1, 0] and si.placement[1]["device"] == "cpu"
        si.check_store(data.store)
        other = write_store(tmp_path / "other", data.ids[:5], np.eye(5, DIM, dtype=np.float32))
        with pytest.raises(
            IndexError_, match=rf"was built from a store with fingerprint {si.store_fingerprint}, "
        ):
            si.check_store(other)
        assert (si.kind, si.dim, si.ntotal, si.n_shards) == ("flat", DIM, N, SHARDS)
    assert si.actors == [] and sorted(fake.kills) == [(0, True), (1, True), (2, True)]
    si.close()  # twice: nothing left to stop
    fake.remove_node(a)
    si._replace_lost()  # a closed index starts nothing again
    assert len(fake.kills) == 3 and len(fake.actors) == SHARDS


def test_shards_are_pinned_softly_to_the_nodes_chosen(data, fake):
    """One shard per node before any node takes a second; each actor is pinned (soft affinity) to its node,
    gets the fault-tolerance options, and as threads its node's CPUs shared by the shards placed there."""
    a, b = node_id("a"), node_id("b")
    ft = dist.FaultTolerance(max_restarts=7, max_task_retries=1)
    with dist.ShardedIndex(data.flat, fault=ft, block_rows=99, scoring_backend="torch") as si:
        assert si.node_of == [a, b, a]
        for actor, where, threads in zip(fake.actors, [a, b, a], [3, 2, 3], strict=True):
            opts = dict(actor.options)
            strategy = opts.pop("scheduling_strategy")
            assert opts == {"max_restarts": 7, "max_task_retries": 1}
            assert isinstance(strategy, NodeAffinitySchedulingStrategy)
            assert (strategy.node_id, strategy.soft) == (where, True)
            assert actor.node_id == where
            assert actor.kwargs["threads"] == threads and isinstance(actor.kwargs["threads"], int)
            assert actor.threads == (threads, threads)  # torch and FAISS in the actor's process
            assert actor.kwargs["kind"] == "flat" and actor.kwargs["device_name"] == "cpu"
            assert actor.kwargs["block_rows"] == 99 and actor.kwargs["scoring_backend"] == "torch"
            assert actor.kwargs["params"] == SearchParams()
            assert actor.instance.server.block_rows == 99
        assert [Path(x.args[0]) for x in fake.actors] == [
            data.flat.resolve() / f"shard-0000{s}" for s in range(3)
        ]
    fake2 = LocalRay([node("a", "10.0.0.1", CPU=6.0)])
    with pytest.MonkeyPatch.context() as mp:
        install(mp, fake2)
        with dist.ShardedIndex(data.flat, threads_per_actor=5, params=SearchParams(nprobe=3, rerank=1)) as si:
            assert [x.kwargs["threads"] for x in fake2.actors] == [5, 5, 5]
            assert fake2.actors[0].kwargs["params"] == SearchParams(nprobe=3, rerank=1) == si.params


def test_without_a_node_to_host_them_shards_spread_with_a_share_of_the_cpus(data, monkeypatch):
    """No node with a CPU: Ray's SPREAD picks the nodes, each actor gets the cluster's CPUs per node shared
    by the shards per node; without a CPU count from Ray, this machine's."""
    gone = {**node("x", "10.0.0.3", CPU=8.0), "Alive": False}
    nodes = [node("h1", "10.0.0.1", memory=1.0), node("h2", "10.0.0.2", memory=1.0)]
    fake = install(monkeypatch, LocalRay([*nodes, gone], resources={"CPU": 16.0}))
    with dist.ShardedIndex(data.flat) as si:
        assert [x.options["scheduling_strategy"] for x in fake.actors] == ["SPREAD"] * 3
        # 16 CPUs / 2 alive nodes = 8 per node, ceil(3 shards / 2 nodes) = 2 shards per node: 4 threads
        assert [x.kwargs["threads"] for x in fake.actors] == [4, 4, 4]
        assert all(type(x.kwargs["threads"]) is int for x in fake.actors)
        assert si.node_of == [x.node_id for x in fake.actors]  # where they landed, read back from ready()
    fake = install(monkeypatch, LocalRay(nodes, resources={}))
    monkeypatch.setattr(dist.os, "cpu_count", lambda: 13)
    with dist.ShardedIndex(data.flat):
        assert [x.kwargs["threads"] for x in fake.actors] == [3, 3, 3]  # 13 // 2 = 6 per node, / 2
    fake = install(monkeypatch, LocalRay([node("h1", "10.0.0.1", memory=1.0)], resources={"CPU": 1.0}))
    with dist.ShardedIndex(data.flat):
        assert [x.kwargs["threads"] for x in fake.actors] == [1, 1, 1]  # never fewer than one
    three = [node(f"h{i}", f"10.0.0.{i}", memory=1.0) for i in range(3)]
    fake = install(monkeypatch, LocalRay(three, resources={"CPU": 12.0}))
    with dist.ShardedIndex(data.flat):
        assert [x.kwargs["threads"] for x in fake.actors] == [4, 4, 4]  # one shard per node: all 4 CPUs


def test_cuda_actors_reserve_a_share_of_the_gpus(data, monkeypatch):
    """``device='cuda'`` asks each actor for min(1, GPUs / shards) GPUs and places shards by GPU slots; a
    cluster without GPUs is refused before any actor starts."""
    nodes = [node("g2", "10.0.1.1", CPU=8.0, GPU=2.0), node("c", "10.0.0.1", CPU=8.0)]
    fake = install(monkeypatch, LocalRay(nodes[1:]))
    with pytest.raises(
        ConfigError, match=r"device 'cuda:1' for the shard actors, but the Ray cluster has no GPUs"
    ):
        dist.ShardedIndex(data.flat, device="cuda:1")
    assert fake.actors == [] and fake.puts == []
    fake = install(monkeypatch, LocalRay([nodes[0], node("g1", "10.0.1.2", CPU=4.0, GPU=1.0), nodes[1]]))
    monkeypatch.setattr(dist, "resolve_device", lambda name: CPU)  # the actors' device: no GPU here
    with dist.ShardedIndex(data.flat, device="cuda:1") as si:
        assert [x.options["num_gpus"] for x in fake.actors] == [1.0, 1.0, 1.0]  # min(1, 3 GPUs / 3 shards)
        assert [x.kwargs["device_name"] for x in fake.actors] == ["cuda"] * 3
        assert si.node_of == [node_id("g2"), node_id("g1"), node_id("g2")]  # the CPU-only node takes none
        assert [x.kwargs["threads"] for x in fake.actors] == [4, 4, 4]
    fake = install(monkeypatch, LocalRay([node("g2", "10.0.1.1", CPU=8.0, GPU=2.0)]))
    with dist.ShardedIndex(data.flat, device="cuda"):
        assert fake.actors[0].options["num_gpus"] == pytest.approx(2 / 3)
    # a GPU node that lists no CPUs hosts GPU actors; their threads: this machine's CPUs, 3 shards on it
    fake = install(monkeypatch, LocalRay([node("g", "10.0.1.1", GPU=3.0)]))
    monkeypatch.setattr(dist.os, "cpu_count", lambda: 8)
    with dist.ShardedIndex(data.flat, device="cuda") as si:
        assert si.node_of == [node_id("g")] * 3
        assert [x.kwargs["threads"] for x in fake.actors] == [2, 2, 2]  # 8 // 3


def test_excluded_ids_reach_only_the_shard_that_owns_their_range(data, fake):
    """An id list is cut by the manifest's id ranges: each actor gets exactly the ids in its [id_min,
    id_max] (edges included; ids between shards or outside all of them go nowhere), put once each."""
    e = data.edges
    extra = np.array([I64.min, int(e[0, 1]) + 1, int(e[1, 1]) + 1, I64.max], np.int64)
    excluded = np.r_[extra, data.test_ids[::-1]]  # unsorted
    with dist.ShardedIndex(data.flat, excluded=excluded):
        for s, actor in enumerate(fake.actors):
            got = actor.kwargs["excluded"]
            want = data.test_ids[(data.test_ids >= e[s, 0]) & (data.test_ids <= e[s, 1])]
            np.testing.assert_array_equal(got, want)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(actor.instance.server.excluded, want)
        assert (
            fake.actors[0].kwargs["excluded"][0] == e[0, 0]
            and fake.actors[2].kwargs["excluded"][-1] == e[2, 1]
        )
        assert len(fake.puts) == SHARDS
    with pytest.MonkeyPatch.context() as mp:
        fake2 = install(mp)
        with dist.ShardedIndex(data.flat) as si:
            assert all(x.kwargs["excluded"].size == 0 for x in fake2.actors)
        fake3 = install(mp)
        with dist.ShardedIndex(data.flat, excluded=str(data.store.path)):
            for actor in fake3.actors:
                assert actor.kwargs["excluded"] == {
                    "store": str(data.store.path.resolve()),
                    "fingerprint": si.store_fingerprint,
                }
            np.testing.assert_array_equal(
                fake3.actors[1].instance.server.excluded, fake.actors[1].instance.server.excluded
            )


def test_every_actor_method_answers_as_the_plain_shard_server(data, fake):
    """The Ray shell forwards every call unchanged: each method through the actor equals the same call on a
    ShardServer of that shard (arguments in their order, defaults kept)."""
    own = data.test_ids
    srv = dist.ShardServer(data.flat / "shard-00001", "flat", None, own, "cpu", block_rows=70)
    W, bias, kind, ref = (t.numpy() for t in _units(DIM, seed=8))
    sids = data.train_ids[(data.train_ids >= data.edges[1, 0]) & (data.train_ids <= data.edges[1, 1])][:40]
    offsets = np.array([0, 10, 10, 25, 33, 40])
    xq = srv.vectors(data.edges[1])
    groups = [(np.array([0, 2]), own[(own >= data.edges[1, 0]) & (own <= data.edges[1, 1])])]
    t = [np.array([0.5, -0.2]), np.empty(0), np.array([0.1]), np.empty(0), np.empty(0)]
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("search", (xq, 4, data.edges[1])),
        ("vectors", (data.edges[1],)),
        ("contains", (np.r_[data.edges.ravel(), I64.max],)),
        ("ids", ()),
        ("ids", (3,)),
        ("ids", (2, 9)),
        ("block", (190, 200)),
        ("graph_part", (195, 200, 3)),
        ("candidate_sum", ()),
        ("sum_vectors", (sids,)),
        ("score_pool", (sids, offsets, W, bias, kind, ref, 0.5, 4)),
        ("score_all", ([sids[:5]] * 5, W, bias, kind, ref, 2.0, 3)),
        ("random_all", ([sids[:5]] * 2, [4, 1], 9, 3, 5)),
        ("group_logits", (groups, W, bias)),
        ("test_counts", (W, bias, t, groups)),
        ("split", ("counts",)),
        ("split", ("codes", data.edges.ravel())),
        ("split", ("take", True, np.array([0, 1]))),
        ("split", ("side_ids", False)),
    ]
    with dist.ShardedIndex(data.flat, excluded=own, block_rows=70) as si:
        for method, args in calls:
            got, want = si.each(method, {1: args})[1], getattr(srv, method)(*args)
            for g, w in zip(_flat(got), _flat(want), strict=True):
                np.testing.assert_array_equal(g, w, err_msg=method)
        assert si.each("pid", {1: ()})[1] == fake.actors[1].pid


def _flat(x: Any) -> list[Any]:
    """Nested tuples and lists of arrays as one flat list."""
    if isinstance(x, (tuple, list)):
        return [y for item in x for y in _flat(item)]
    return [x]


@pytest.mark.parametrize("rows, dim", [(199, DIM), (200, DIM // 2)], ids=["rows", "dim"])
def test_shard_size_other_than_the_manifest_is_refused_and_actors_stop(data, fake, tmp_path, rows, dim):
    """A shard folder holding other rows (or another dimension) than the manifest says is named, with the
    fix, and every actor already started is stopped for good."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(data.flat, bad)
    sd = bad / "shard-00001"
    np.save(sd / "ids.npy", np.load(sd / "ids.npy")[:rows])
    np.save(sd / "vectors.npy", np.load(sd / "vectors.npy")[:rows, :dim])
    with pytest.raises(
        IndexError_, match=rf"shard-00001: holds {rows}x{dim}, manifest says 200x8; rebuild the index"
    ):
        dist.ShardedIndex(bad)
    assert sorted(fake.kills) == [(0, True), (1, True), (2, True)]


def test_a_shard_that_cannot_load_fails_at_once_with_its_own_message(data, fake, tmp_path):
    """An actor whose ``__init__`` raised (Ray: ``actor_init_failed``) is not retried: one line with the
    shard's own error, no wait, every actor stopped."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(data.flat, bad)
    f = bad / "shard-00002" / "vectors.npy"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(
        IndexError_, match=r"could not load its shard: .*shard-00002: shard file is corrupt"
    ) as info:
        dist.ShardedIndex(bad)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert fake.sleeps == [] and sorted(fake.kills) == [(0, True), (1, True), (2, True)]


def test_actors_that_do_not_load_in_time_are_a_config_error(data, fake):
    """A shard that does not answer within ``ready_timeout_s`` is a ConfigError naming the wait and what to
    check; the actors are stopped."""
    fake.on_create = lambda actor: fake.hang(actor) if actor.index == 1 else None
    with pytest.raises(ConfigError, match=r"did not answer within 7s; check `ray status`"):
        dist.ShardedIndex(data.flat, fault=dist.FaultTolerance(ready_timeout_s=7.0))
    assert fake.get_timeouts == [7.0] and fake.sleeps == []
    assert sorted(fake.kills) == [(0, True), (1, True), (2, True)]


# ------------------------------------------------------------------------------------------------ retries
FT = dist.FaultTolerance(call_retries=3, backoff_s=0.25, ready_timeout_s=9.0)


def _same_search(a: Any, b: Any, xq: np.ndarray, k: int, q: np.ndarray) -> np.ndarray:
    """``a`` and ``b`` return the same neighbours and similarities for ``xq``, each query excluding its own
    id ``q``; returns the ids."""
    D, I = a.search(xq, k, exclude_ids=q)
    D0, I0 = b.search(xq, k, q)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_array_equal(D, D0)
    return I


def _search_ok(si: dist.ShardedIndex, data: Data) -> None:
    q = _queries(data)
    local = _local(data)
    _same_search(si, local, local.vectors(q), 8, q)


@pytest.mark.parametrize(
    "error",
    [
        lambda: rex.ActorUnavailableError("The actor is restarting", None),
        rex.RayActorError,
        lambda: rex.ObjectLostError("ab" * 14, None, ""),
    ],
    ids=["unavailable", "actor-error", "object-lost"],
)
def test_a_call_meeting_a_restarting_actor_is_retried_after_a_backoff(data, fake, error):
    """The call is resubmitted after ``backoff_s``; Ray's restarted actor (reloaded, new pid) answers, and
    the driver does not start another one."""
    with dist.ShardedIndex(data.flat, fault=FT) as si:
        pid = si.placement[1]["pid"]
        fake.die(fake.actors[1], restart=True, calls=1, error=error)
        _search_ok(si, data)
        assert fake.sleeps == [0.25]
        assert len(fake.actors) == SHARDS and fake.actors[1].pid != pid
        assert fake.get_timeouts.count(9.0) == 1 + SHARDS  # loading, then _revive's pings: ready_timeout_s


def test_an_actor_ray_gave_up_on_is_created_again(data, fake):
    """A dead actor (no restart) is re-created by the driver with the same arguments on the same node, once;
    the other shards keep theirs."""
    with dist.ShardedIndex(data.flat, fault=FT) as si:
        fake.die(fake.actors[2], restart=False)
        old = si.actors[2]
        _search_ok(si, data)
        assert fake.sleeps == [0.25]
        assert [x.args[0] for x in fake.actors[3:]] == [fake.actors[2].args[0]]
        new, dead = fake.actors[3], fake.actors[2]
        assert si.actors[2] is not old and si.actors[2].actor is new
        assert new.node_id == dead.node_id and _options(new) == _options(dead)
        assert {k: v for k, v in new.kwargs.items() if k != "excluded"} == {
            k: v for k, v in dead.kwargs.items() if k != "excluded"
        }
        assert new.kwargs["excluded"].base is dead.kwargs["excluded"].base  # the same put object
        assert [h.actor.index for h in si.actors] == [0, 1, 3]
        assert fake.kills == []
        np.testing.assert_array_equal(si.vectors(data.edges[2]), _local(data).vectors(data.edges[2]))


def test_a_call_that_keeps_failing_gives_up_after_the_retries(data, fake):
    """``call_retries`` resubmissions with waits of ``backoff_s * 2**attempt``, then one IndexError_ naming
    the tries and Ray's error (kept as the cause); actors still restarting are left to Ray."""
    with dist.ShardedIndex(data.flat, fault=FT) as si:
        fake.die(fake.actors[0], restart=True, calls=10**6, error=rex.RayActorError)
        with pytest.raises(
            IndexError_, match=r"kept failing after 4 tries \(RayActorError: The actor experienced"
        ) as info:
            si.all_ids()
        assert isinstance(info.value.__cause__, rex.RayActorError)
        assert fake.sleeps == [0.25, 0.5, 1.0]
        assert len(fake.actors) == SHARDS and fake.kills == []
    with dist.ShardedIndex(data.flat, fault=dist.FaultTolerance(call_retries=0)) as si:
        fake.sleeps.clear()
        fake.die(fake.actors[-1], restart=True, calls=1, error=rex.RayActorError)
        with pytest.raises(IndexError_, match=r"after 1 tries"):
            si.all_ids()
        assert fake.sleeps == []


def test_a_task_error_is_not_retried_and_keeps_its_type(data, fake):
    """A call that itself fails (a wrong question, an id a shard does not hold) reaches the driver once,
    as the shard's own error: a SealsError as itself, anything else as Ray's error of the same type."""
    with dist.ShardedIndex(data.flat, fault=FT) as si:
        with pytest.raises(ValueError, match=r"split method 'bogus'") as info:
            si.each("split", {1: ("bogus",)})
        assert isinstance(info.value, rex.RayTaskError)
        with pytest.raises(IndexError_, match=r"are not in this index") as info2:
            si.vectors(np.array([_absent_inside(data, 1)]))
        assert type(info2.value) is IndexError_ and "Traceback" not in str(info2.value)
        assert fake.sleeps == []


def test_gather_falls_back_to_call_after_a_failure(data, fake):
    """Pipelined refs are got as they are; if an actor died meanwhile, the calls are resubmitted (and the
    dead actor re-created) through ``call``."""
    with dist.ShardedIndex(data.flat, fault=FT) as si:
        refs = [a.ids.remote(0, 2) for a in si.actors]

        def never() -> list[Any]:
            raise AssertionError("resubmitted although every ref was fine")

        assert [r.tolist() for r in si.gather(refs, never)] == [
            data.ids[[0, 1]].tolist(),
            data.ids[[200, 201]].tolist(),
            data.ids[[400, 401]].tolist(),
        ]
        fake.die(fake.actors[1], restart=False)
        refs = [a.ids.remote(0, 1) for a in si.actors]
        got = si.gather(refs, lambda: [a.ids.remote(0, 1) for a in si.actors])
        assert [int(r[0]) for r in got] == [int(x) for x in data.edges[:, 0]]
        assert fake.sleeps == [0.25] and len(fake.actors) == SHARDS + 1


def test_a_node_that_leaves_has_its_shard_reloaded_on_the_least_loaded_survivor(data, monkeypatch):
    """Before a call, shards whose node left are started again on the surviving node with the fewest
    shards (the others stay), the old actor is stopped for good, both moves are logged, and results stay
    those of the single-process index."""
    names = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"}
    fake = install(monkeypatch, LocalRay([node(n, ip, CPU=4.0) for n, ip in names.items()]))
    fake.nodes_[3]["Resources"]["CPU"] = 3.0
    a, b, c, d = (node_id(n) for n in names)
    moves: list[str] = []
    with dist.ShardedIndex(data.flat, log=moves.append) as si:
        assert si.node_of == [a, b, c] and moves == []
        fake.remove_node(b)
        _search_ok(si, data)
        assert si.node_of == [a, d, c]
        new = fake.actors[-1]
        assert len(fake.actors) == 4 and new.node_id == d and new.kwargs["threads"] == 3
        assert new.options["scheduling_strategy"].node_id == d
        assert fake.kills == [(1, True)] and fake.sleeps == []
        assert moves == [
            f"ray: node {b[:12]} left the cluster; shard 1 (shard-00001) reloads on node {d[:12]} (10.0.0.4)",
            f"ray: shard 1 reloaded on node {d[:12]} (10.0.0.4), pid {new.pid}",
        ]
        assert si.placement[1]["pid"] == new.pid
        assert f"on node {d[:12]} (10.0.0.4), pid {new.pid}" in si.placement_lines()[2]
        _search_ok(si, data)
        assert len(fake.actors) == 4 and len(moves) == 2  # nothing more moved


def test_a_node_leaving_during_a_call_moves_its_shard_once(data, monkeypatch):
    """The node goes while a call runs on it: the retry re-places the shard on the least-loaded survivor
    (one new actor, the old one stopped, the move logged) and answers as before."""
    fake = install(monkeypatch, LocalRay([node("a", "10.0.0.1", CPU=4.0), node("b", "10.0.0.2", CPU=4.0)]))
    a, b, c = node_id("a"), node_id("b"), node_id("c")
    moves: list[str] = []
    with dist.ShardedIndex(data.flat, log=moves.append, fault=FT) as si:
        assert si.node_of == [a, b, a]
        fake.nodes_.append(node("c", "10.0.0.3", CPU=4.0))

        def node_b_leaves() -> BaseException:
            fake.remove_node(b)
            return rex.ActorDiedError()

        fake.die(fake.actors[1], restart=False, error=node_b_leaves)
        _search_ok(si, data)
        assert si.node_of == [a, c, a] and fake.sleeps == [0.25]
        assert [x.node_id for x in fake.actors[3:]] == [c]  # one new actor, on the emptiest survivor
        assert fake.kills == [(1, True)] and len(moves) == 2


def test_a_shard_on_a_node_the_driver_has_not_seen_is_logged_by_id(data, fake):
    """An actor that reports a node missing from the driver's view of the cluster (``ray.nodes()`` does not
    list it yet) is logged by its id, address unknown."""
    late = node("late", "10.0.0.7", CPU=4.0)

    def joined(actor: Any) -> None:
        if actor.index == 1:
            actor.node_id = late["NodeID"]  # where Ray started it; not in ray.nodes()

    fake.on_create = joined
    with dist.ShardedIndex(data.flat) as si:
        assert si.node_of[1] == late["NodeID"]
        assert si.placement_lines()[2] == (
            f"ray: shard 1 (shard-00001, 200 rows) on node {late['NodeID'][:12]} (?), pid 1002"
        )


def test_with_no_survivor_to_host_it_a_lost_shard_goes_where_ray_puts_it(data, monkeypatch):
    """The only node with CPUs left: its shards reload wherever Ray's SPREAD puts them, and the log says so;
    a reload that does not answer in time is left to the call that follows."""
    fake = install(monkeypatch, LocalRay([node("a", "10.0.0.1", CPU=4.0), node("h", "10.0.0.9", memory=1.0)]))
    a, h = node_id("a"), node_id("h")
    moves: list[str] = []
    with dist.ShardedIndex(data.flat, log=moves.append, fault=FT) as si:
        assert si.node_of == [a, a, a]
        fake.remove_node(a)
        fake.on_create = lambda actor: fake.hang(actor) if actor.index == 4 else None
        _search_ok(si, data)
        assert [x.options["scheduling_strategy"] for x in fake.actors[3:]] == ["SPREAD"] * 3
        assert all(x.node_id == h for x in fake.actors[3:])  # the one alive node, CPU-less or not
        assert [x.kwargs["threads"] for x in fake.actors[3:]] == [si._spread_threads] * 3
        assert moves[:3] == [
            f"ray: node {a[:12]} left the cluster; shard {s} (shard-0000{s}) reloads on "
            "a node of Ray's choosing"
            for s in range(3)
        ]
        assert len(moves) == 3  # one ready() timed out: no "reloaded" line, the search still answered
        assert fake.sleeps == []
        assert si.node_of == [None] * 3  # not known until an actor answers ready()
        assert all("on a node of Ray's choosing" in line for line in si.placement_lines()[1:])


def test_a_ray_backend_over_a_lost_node_selects_what_it_did_before(data, fake):
    """Scoring after a node loss: the same top-b as before it."""
    W, bias, kind, ref = _units(DIM, seed=2)
    with dist.RayBackend(data.flat, excluded=data.test_ids, device=CPU) as rb:
        before = rb.score_all([data.train_ids[:3]] * 5, W, bias, kind, ref, 1.0, 9)
        fake.nodes_.append(node("c", "10.0.0.3", CPU=1.0))
        fake.remove_node(node_id("b"))
        _same_topb(rb.score_all([data.train_ids[:3]] * 5, W, bias, kind, ref, 1.0, 9), before)
        assert rb.index.node_of[1] == node_id("c")
        assert fake.actors[-1].kwargs["threads"] == 1  # node c's one CPU


# --------------------------------------------------------------------------------------------- RayBackend
@pytest.fixture
def pair(data, fake) -> tuple[dist.RayBackend, LocalBackend]:
    rb = dist.RayBackend(data.flat, excluded=data.test_ids, device=CPU, block_rows=70)
    yield rb, _local(data, excluded=data.test_ids, block_rows=70)
    rb.close()


def _pools(d: Data, U: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CSR batch of ``U`` sorted train-id pools: the train shard edges in unit 0, one pool empty, one
    inside a single shard."""
    rng = np.random.default_rng(seed)
    train_edges = np.intersect1d(d.edges.ravel(), d.train_ids)
    pools = [
        np.sort(rng.choice(d.train_ids, size=int(rng.integers(5, 120)), replace=False)) for _ in range(U)
    ]
    pools[0] = np.union1d(pools[0], train_edges)
    pools[1] = np.empty(0, np.int64)
    pools[2] = d.train_ids[(d.train_ids >= d.edges[1, 0]) & (d.train_ids <= d.edges[1, 1])][:30]
    offsets = np.zeros(U + 1, np.int64)
    offsets[1:] = np.cumsum([p.size for p in pools])
    return np.concatenate(pools).astype(np.int64), offsets


def test_ray_backend_search_vectors_and_sums_equal_local_backend(data, pair):
    rb, lb = pair
    q = _queries(data)
    I = _same_search(rb, lb, lb.vectors(q), 10, q)
    assert not np.isin(I, data.test_ids).any()  # neighbours among the train rows only
    np.testing.assert_array_equal(rb.vectors(q), lb.vectors(q))
    for ids in (q, data.train_ids[::3], data.edges[1], data.edges[2]):
        np.testing.assert_array_equal(rb.sum_vectors(ids), lb.sum_vectors(ids))  # the same additions
    assert rb.sum_vectors(np.empty(0, np.int64)).tolist() == [0.0] * DIM
    total, count = rb.candidate_sum()
    t0, c0 = lb.candidate_sum()
    np.testing.assert_array_equal(total, t0)
    assert count == c0 == data.train_ids.size == rb.n_candidates()
    assert rb.dim == DIM and rb.actors is rb.index.actors


def test_candidate_sum_is_asked_of_the_shards_once(data, pair, fake):
    rb, _ = pair
    rb.candidate_sum()
    rb.candidate_sum()
    assert rb.n_candidates() == data.train_ids.size
    assert len(_methods(fake, "candidate_sum")) == SHARDS


def test_ray_backend_scoring_equals_local_backend(data, pair, fake):
    """score_pool, score_all and random_all select what the single-process backend selects: units of every
    kind, pools and exclusions at shard edges, an empty pool, a pool inside one shard."""
    rb, lb = pair
    W, bias, kind, ref = _units(DIM, seed=4)
    ids, offsets = _pools(data, 5, seed=1)
    for b in (1, 7, 200):
        _same_topb(
            rb.score_pool(ids, offsets, W, bias, kind, ref, 1.0, b),
            lb.score_pool(ids, offsets, W, bias, kind, ref, 1.0, b),
        )
    puts = len(fake.puts)
    rb.score_pool(ids, offsets, W, bias, kind, ref, 0.5, 3)
    assert len(fake.puts) - puts == 4  # W, bias, kind, ref: put once for every shard
    no_id = torch.tensor([0, 1, 0, 1, 1], dtype=torch.int8)
    _same_topb(
        rb.score_pool(ids, offsets, W, bias, no_id, None, 1.0, 6),
        lb.score_pool(ids, offsets, W, bias, no_id, None, 1.0, 6),
    )
    edges = data.edges.ravel()
    exclude = [np.sort(np.r_[edges, data.train_ids[u::9]]) for u in range(5)]
    exclude[3] = np.empty(0, np.int64)
    exclude[4] = np.sort(np.r_[[I64.min, I64.max], data.train_ids[data.train_ids > data.edges[0, 1]]])
    for b in (1, 12):
        _same_topb(
            rb.score_all(exclude, W, bias, kind, ref, 1.0, b),
            lb.score_all(exclude, W, bias, kind, ref, 1.0, b),
        )
        _same_topb(
            rb.random_all(exclude, [3, 9, 1, 4, 2], 17, 2, b),
            lb.random_all(exclude, [3, 9, 1, 4, 2], 17, 2, b),
        )
    top = rb.score_all(exclude, W, bias, kind, ref, 1.0, 500)
    for u in range(5):
        got = top.ids[u, : int(top.counts[u])].numpy()
        assert not np.isin(got, exclude[u]).any() and not np.isin(got, data.test_ids).any()
    assert int(top.counts[3]) == data.train_ids.size
    empty = rb.score_pool(
        np.empty(0, np.int64), np.zeros(3, np.int64), W[:2], bias[:2], kind[:2], ref[:2], 1.0, 5
    )
    assert empty.counts.tolist() == [0, 0] and empty.ids.shape == (2, 5)


def test_score_pool_asks_only_the_shards_owning_the_pool(data, pair, fake):
    rb, lb = pair
    W, bias, kind, ref = _units(DIM, U=2, seed=3)
    one = data.train_ids[(data.train_ids >= data.edges[2, 0])][:9]
    offsets = np.array([0, 4, 9])
    n = len(_methods(fake, "score_pool"))
    _same_topb(
        rb.score_pool(one, offsets, W, bias, kind, ref, 1.0, 3),
        lb.score_pool(one, offsets, W, bias, kind, ref, 1.0, 3),
    )
    assert _methods(fake, "score_pool")[n:] == [rb.actors[2].actor.index]
    with pytest.raises(IndexError_, match=rf"ids \[{I64.max}\] are not in index"):
        rb.score_pool(np.array([I64.max]), np.array([0, 1, 1]), W, bias, kind, ref, 1.0, 3)


def test_ray_backend_test_ap_passes_equal_local_backend(data, pair, fake):
    """group_logits (only shards owning some ids asked) and test_counts equal the single-process backend's,
    groups at shard edges, in one shard, and empty."""
    from seals_gpu.evaluate import evaluate_ap, thresholds_of

    rb, lb = pair
    W, bias, _, _ = _units(DIM, U=4, seed=9)
    test_edges = np.intersect1d(data.edges.ravel(), data.test_ids)
    in_one = data.test_ids[data.test_ids > data.edges[2, 0]][:5]
    groups = [
        (np.array([0, 1]), np.union1d(test_edges, data.test_ids[::4])),
        (np.array([2]), in_one),
        (np.array([3]), np.empty(0, np.int64)),
    ]
    n = len(_methods(fake, "group_logits"))
    got = rb.group_logits(groups, W, bias)
    want = lb.group_logits(groups, W, bias)
    assert [g.shape for g in got] == [(2, groups[0][1].size), (1, 5), (1, 0)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert len(_methods(fake, "group_logits")) - n == SHARDS
    t = thresholds_of(groups, got, 4)
    counts = rb.test_counts(W, bias, t, groups)
    for c, c0 in zip(counts, lb.test_counts(W, bias, t, groups), strict=True):
        np.testing.assert_array_equal(c, c0)
        assert c.dtype == np.int64
    np.testing.assert_array_equal(evaluate_ap(rb, W, bias, groups), evaluate_ap(lb, W, bias, groups))
    n = len(_methods(fake, "group_logits"))
    only = [(np.array([2]), in_one)]
    np.testing.assert_array_equal(rb.group_logits(only, W, bias)[0], lb.group_logits(only, W, bias)[0])
    assert _methods(fake, "group_logits")[n:] == [rb.actors[2].actor.index]
    n = len(fake.calls)
    none = rb.group_logits([(np.array([0, 3]), np.empty(0, np.int64))], W, bias)
    assert none[0].shape == (2, 0) and none[0].dtype == np.float64 and len(fake.calls) == n


def test_ray_backend_split_answers_equal_local_backend(data, pair):
    """Sizes, membership (edges, ids outside the store), draws by rank and full listings of the train/test
    split, answered by the shards."""
    rb, lb = pair
    s, s0 = rb.split, lb.split
    assert rb.split is s  # made once
    np.testing.assert_array_equal(s.counts, s0.counts)
    assert s.train.size == data.train_ids.size and s.test.size == data.test_ids.size
    probe = np.r_[data.edges.ravel(), [I64.min, I64.max, -1, 0], data.ids[::11]]
    np.testing.assert_array_equal(s.codes(probe), s0.codes(probe))
    np.testing.assert_array_equal(
        s.test.contains(data.edges.ravel()), np.isin(data.edges.ravel(), data.test_ids)
    )
    ranks = np.array([0, data.train_ids.size - 1, 150, 151, 3])
    np.testing.assert_array_equal(s.train.take(ranks), data.train_ids[ranks])
    np.testing.assert_array_equal(s.test.take([0, data.test_ids.size - 1]), data.test_ids[[0, -1]])
    np.testing.assert_array_equal(s.train.all(), data.train_ids)
    np.testing.assert_array_equal(s.test.all(), data.test_ids)


def test_ray_backend_over_the_store_split_equals_the_id_list(data, fake):
    """``excluded=store path``: each shard reads its own test ids; the backend answers as with the list."""
    W, bias, kind, ref = _units(DIM, seed=6)
    with dist.RayBackend(data.flat, excluded=data.store.path, device=CPU) as rb:
        lb = _local(data, excluded=data.test_ids)
        np.testing.assert_array_equal(rb.split.test.all(), data.test_ids)
        q = _queries(data)
        xq = lb.vectors(q)
        np.testing.assert_array_equal(rb.search(xq, 6, q)[1], lb.search(xq, 6, q)[1])
        assert rb.n_candidates() == data.train_ids.size
        _same_topb(
            rb.score_all([data.edges.ravel()] * 5, W, bias, kind, ref, 1.0, 4),
            lb.score_all([data.edges.ravel()] * 5, W, bias, kind, ref, 1.0, 4),
        )


def test_ray_backend_passes_its_settings_to_the_index(data, fake):
    moves: list[str] = []
    ft = dist.FaultTolerance(max_restarts=1)
    with dist.RayBackend(
        data.flat,
        excluded=None,
        device=CPU,
        threads_per_actor=2,
        block_rows=33,
        scoring_backend="torch",
        fault=ft,
        log=moves.append,
    ) as rb:
        assert rb.device is CPU and rb.index.fault is ft
        assert [x.kwargs["threads"] for x in fake.actors] == [2, 2, 2]
        assert {x.kwargs["block_rows"] for x in fake.actors} == {33}
        assert {x.kwargs["scoring_backend"] for x in fake.actors} == {"torch"}
        assert rb.n_candidates() == N  # nothing excluded
        fake.remove_node(node_id("b"))
        rb.vectors(data.edges[1])
        assert len(moves) == 2
    assert rb.actors == []


# ------------------------------------------------------------------------------------------------ ray_fill
@pytest.fixture(scope="module")
def ivf_local(data, tmp_path_factory) -> Path:
    spec = IndexSpec(kind="ivfpq", nlist=8, pq_m=4, nprobe=4, rerank=4, shards=SHARDS)
    return Path(build_index(data.store, tmp_path_factory.mktemp("ivf") / "ivf3", spec).path)


class _Bar:
    made: list[_Bar] = []

    def __init__(self, *args: Any, **kw: Any):
        self.kw, self.n, self.closed = kw, 0, False
        _Bar.made.append(self)

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def test_ray_fill_builds_the_same_ivfpq_shards_in_tasks(data, ivf_local, fake, tmp_path, monkeypatch):
    """One task per shard (resolved folder, kind, trained quantizer; Ray may retry it twice), waited for one
    at a time with a bar of shards; the shards equal those of the in-process fill, and the sharded IVF-PQ
    search equals the single-process one."""
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()
    spec = IndexSpec(kind="ivfpq", nlist=8, pq_m=4, nprobe=4, rerank=4, shards=SHARDS)
    out = build_index(data.store, tmp_path / "ivf", spec, fill=dist.ray_fill, progress=True).path
    assert [t.fn for t in fake.tasks] == [dist._fill_task] * SHARDS
    assert all(t.options == {"max_retries": 2} for t in fake.tasks)
    for s, t in enumerate(fake.tasks):
        folder, kind, trained = t.args
        assert Path(folder).name == f"shard-0000{s}" and Path(folder).is_absolute() and kind == "ivfpq"
        assert Path(trained).name == "trained.faiss" and isinstance(trained, str)
    assert fake.waits == [1] * SHARDS
    bar = next(b for b in _Bar.made if b.kw.get("desc") == "filling shards (ray)")
    assert (bar.kw["total"], bar.n, bar.closed, bar.kw["unit"]) == (SHARDS, SHARDS, True, "shard")
    for s in range(SHARDS):
        name = f"shard-0000{s}/index.faiss"
        assert (Path(out) / name).read_bytes() == (ivf_local / name).read_bytes()
    q = _queries(data)
    lb = LocalBackend(LocalIndex.open(ivf_local), CPU, excluded=data.test_ids, search_method="index")
    xq = lb.vectors(q)
    with dist.RayBackend(ivf_local, excluded=data.test_ids, device=CPU) as rb:
        assert fake.actors[-1].kwargs["params"] == SearchParams(nprobe=4, rerank=4)
        D, I = rb.search(xq, 10, q)
        D0, I0 = lb.search(xq, 10, q)
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_array_equal(D, D0)
        assert not np.isin(I[np.isfinite(D)], data.test_ids).any()


def test_ray_fill_reraises_a_tasks_own_error(data, fake, tmp_path, monkeypatch):
    """A shard's fill that fails reaches the caller as its own SealsError (no Ray wrapper), the bar closed."""
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()

    def fill(shard_dir: str, kind: str, trained: str | None) -> None:
        if shard_dir.endswith("shard-00001"):
            raise IndexError_(f"{shard_dir}: disk full")

    monkeypatch.setattr(dist, "fill_shard", fill)
    dirs = [tmp_path / f"shard-0000{s}" for s in range(SHARDS)]
    with pytest.raises(IndexError_, match=r"shard-00001: disk full") as info:
        dist.ray_fill(dirs, {"kind": "ivfpq"}, tmp_path / "trained.faiss", progress=True)
    assert type(info.value) is IndexError_
    assert len(fake.tasks) == SHARDS and _Bar.made[0].closed and _Bar.made[0].n == 1
    dist.ray_fill(dirs[:1], {"kind": "ivfpq"}, tmp_path / "trained.faiss")  # no bar without progress
    assert len(_Bar.made) == 1 and len(fake.tasks) == SHARDS + 1


def test_ray_fill_does_nothing_for_flat_and_needs_a_session_for_ivfpq(tmp_path, monkeypatch):
    fake = install(monkeypatch, LocalRay(initialized=False))
    assert dist.ray_fill([tmp_path], {"kind": "flat"}, None) is None
    assert dist.ray_fill([tmp_path], {}, None) is None
    assert fake.tasks == []
    with pytest.raises(
        ConfigError, match=r"ray_fill needs a Ray session; wrap the build in `with ray_session"
    ):
        dist.ray_fill([tmp_path], {"kind": "ivfpq"}, None)


# ------------------------------------------------------------------------------------------ int64 extremes
def test_ids_at_both_ends_of_int64_route_to_their_shards(tmp_path, monkeypatch):
    """A store whose first id is int64.min and last int64.max: search, lookups and exclusions at those
    edges work as in one process."""
    fake = install(monkeypatch)
    ids = np.r_[I64.min, np.arange(-20, 18), I64.max].astype(np.int64)
    x = np.random.default_rng(0).normal(size=(ids.size, DIM)).astype(np.float32)
    store = write_store(tmp_path / "s", ids, x)
    path = build_index(store, tmp_path / "i", IndexSpec(kind="flat", shards=2)).path
    excluded = np.array([I64.min, -1, 0, I64.max])
    lb = LocalBackend(LocalIndex.open(path), CPU, excluded=excluded)
    with dist.RayBackend(path, excluded=excluded, device=CPU) as rb:
        assert fake.actors[0].kwargs["excluded"].tolist() == [I64.min]  # shard 0: int64.min, -20..-2
        assert fake.actors[1].kwargs["excluded"].tolist() == [-1, 0, I64.max]  # shard 1: -1..17, int64.max
        q = ids[[0, 1, 20, -2, -1]]
        xq = rb.vectors(q)
        np.testing.assert_array_equal(xq, lb.vectors(q))
        np.testing.assert_array_equal(rb.search(xq, 5, q)[1], lb.search(xq, 5, q)[1])
        assert rb.index.contains(np.array([I64.min, I64.max, I64.min + 1])).tolist() == [True, True, False]
        assert rb.index.shard_of(np.array([I64.min, I64.max])).tolist() == [0, 1]
        assert rb.split.test.all().tolist() == [I64.min, -1, 0, I64.max]


# ------------------------------------------------------------------ written from seed 3's survivors (session 10)
def test_a_graph_part_may_start_at_a_shards_first_row(data):
    """``index graph`` asks each shard for its rows in parts, the first from row 0: that part is answered
    (its first id the shard's id_min, none of its own ids among its neighbours), like any other (kills
    ``ShardServer.graph_part`` mutant 4: ``0 < start`` refused row 0)."""
    srv = dist.ShardServer(data.flat / "shard-00001", "flat", None, data.test_ids, "cpu")
    ids, xq, D, I = srv.graph_part(0, 3, 4)
    assert ids.tolist() == data.ids[200:203].tolist() and ids[0] == data.edges[1, 0]
    assert xq.shape == (3, DIM) and D.shape == I.shape == (3, 4)
    assert not (I == ids[:, None]).any() and np.isfinite(D).all()
    whole = srv.graph_part(0, 200, 4)
    np.testing.assert_array_equal(whole[3][:3], I)


def test_sharded_index_searches_with_the_settings_its_manifest_holds(data, fake, tmp_path):
    """An IVF-PQ index built with --nprobe and --rerank is searched with them through Ray as in one
    process, and a caller's SearchParams still win (kills ``ShardedIndex.__init__`` mutant 87: the
    manifest's rerank ignored for the default 4)."""
    path = build_index(
        data.store, tmp_path / "pq", IndexSpec(kind="ivfpq", nlist=4, pq_m=4, nprobe=3, rerank=7, shards=2)
    ).path
    assert all(sh.params == SearchParams(nprobe=3, rerank=7) for sh in LocalIndex.open(path).shards)
    with dist.ShardedIndex(path) as si:
        assert si.params == SearchParams(nprobe=3, rerank=7)
    with dist.ShardedIndex(path, params=SearchParams(nprobe=2, rerank=5)) as si:
        assert si.params == SearchParams(nprobe=2, rerank=5)
