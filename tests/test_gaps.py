"""Properties a user relies on that a mutation run found untested (issue #17).

Each test states one property and was checked to fail under the mutant named in its docstring. The
references here are computed independently of the code under test: float64 numpy from the store's own
Parquet files (read with pyarrow), never through ``Store``, the backends or the scoring code.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
import torch
from scipy.special import xlogy

from seals_gpu.config import RunConfig
from seals_gpu.device import resolve_device
from seals_gpu.driver import Run
from seals_gpu.errors import IndexError_, StoreError
from seals_gpu.graph import KnnGraph, build_graph
from seals_gpu.index import IndexSpec, LocalIndex, build_index
from seals_gpu.store import StoreWriter, write_store

from .conftest import bare_selection, clustered
from .ray_fixture import ray_local_fixture  # noqa: F401  (the session-wide local Ray)

CPU = resolve_device("cpu")


# ------------------------------------------------------------------------------------------- helpers
def read_parquet_store(path: Path) -> SimpleNamespace:
    """A store's rows straight from its Parquet files (pyarrow only), sorted by id: ``ids``, float64
    ``x`` (n, d), ``labels`` (list per row) and ``train`` (bool per row, from the ``split`` column)."""
    t = pds.dataset(str(path), format="parquet").to_table()  # '_'-prefixed side files are skipped
    ids = t.column("id").to_numpy()
    n = ids.size
    emb = t.column("embedding").combine_chunks()
    x = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, -1)
    labels = t.column("labels").to_pylist() if "labels" in t.column_names else [[] for _ in range(n)]
    train = np.asarray([s == "train" for s in t.column("split").to_pylist()])
    o = np.argsort(ids)
    return SimpleNamespace(ids=ids[o], x=x[o], labels=[labels[i] for i in o], train=train[o])


def entropy64(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats, float64, with 0 ln 0 = 0."""
    return -(xlogy(p, p) + xlogy(1.0 - p, 1.0 - p))


# --------------------------------------------------------------------- one run of the driver, spied on
K = 8
BUDGET, SEED_POS, SEED_NEG, BATCH = 137, 3, 47, 20  # 137 - 50 = 87: not a multiple of 20 (last round: 7)
BETA = 2.0  # not 1, so that a lost exponent shows too


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory) -> SimpleNamespace:
    """A run of every information-density form (and maxent, random) in both modes, over a 2-shard index
    with a kNN graph (id-knn in All mode needs one), recording before each selection the model, every
    unit's pool and labeled set, and what the driver chose."""
    root = tmp_path_factory.mktemp("gaps_run")
    ids, x, labels = clustered(900, 16, seed=3)
    split = np.where(np.random.default_rng(3).random(ids.size) < 0.25, "test", "train")
    store = write_store(root / "store", ids, x, labels=labels, split=split)
    build_index(store, root / "idx", IndexSpec(kind="flat", shards=2))
    graph = KnnGraph.open(build_graph(root / "idx", k=K))
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(0, 2),
        strategies=("id", "id-knn", "id-pairwise", "maxent", "random"),
        modes=("seals", "all"),
        k=K,
        batch=BATCH,
        budget=BUDGET,
        seed_positives=SEED_POS,
        seed_negatives=SEED_NEG,
        beta=BETA,
        search="flat",
    )
    rounds: list[dict[str, Any]] = []

    class Spy(Run):
        def _select(self, b_round):
            assert self.model is not None
            before = {u.index: (u.pool.ids.copy(), np.sort(u.labeled_ids)) for u in self.units}
            W = self.model.W.detach().cpu().double().numpy()
            bias = self.model.b.detach().cpu().double().numpy()
            chosen, t = super()._select(b_round)
            rounds.append(
                {"b": b_round, "before": before, "W": W, "bias": bias, "chosen": dict(chosen.items())}
            )
            return chosen, t

    out = root / "run"
    r = Spy(
        cfg,
        out,
        store=store,
        index=LocalIndex.open(root / "idx"),
        graph=graph,
        device=CPU,
        progress=False,
        log=lambda *a: None,
    )
    r.start()
    return SimpleNamespace(run=r, out=out, rounds=rounds, data=read_parquet_store(store.path), cfg=cfg)


def _reference_scores(data: SimpleNamespace, unit: Any, pool: np.ndarray, labeled: np.ndarray, w, b):
    """The paper's information density in float64: entropy(p) * max(mean similarity, 0) ** beta over the
    unit's candidates (its pool for SEALS, every unlabeled train row for All), the mean taken over the
    reference set (the candidates themselves: pool minus labeled, or the unlabeled train rows) or, for
    id-knn, over each candidate's k nearest train rows (itself excluded)."""
    train_ids = data.ids[data.train]
    if unit.mode == "seals":
        cand = np.setdiff1d(pool, labeled)
    else:
        cand = np.setdiff1d(train_ids, labeled)
    xc = data.x[np.searchsorted(data.ids, cand)]
    p = 1.0 / (1.0 + np.exp(-(xc @ w + b)))
    if unit.strategy == "id-knn":
        xt = data.x[data.train]
        sims = xc @ xt.T
        sims[cand[:, None] == train_ids[None, :]] = -np.inf  # not its own neighbour
        dens = np.sort(sims, axis=1)[:, -K:].mean(axis=1)
    else:  # id and id-pairwise: mean similarity to every member of the reference set, pair by pair
        dens = (xc @ xc.T).mean(axis=1)
    return cand, entropy64(p) * np.maximum(dens, 0.0) ** BETA


def test_information_density_selects_the_papers_top_b_in_both_modes(spied_run):
    """Every id / id-knn / id-pairwise unit, SEALS and All, picks a top-b of the float64 reference
    scores (up to float32 rounding). Mutants: scoring with p instead of entropy(p) (kernel or driver
    path); All-mode ID with the labeled items left in its reference mean."""
    checked = 0
    for rd in spied_run.rounds:
        for u in spied_run.run.units:
            if not u.strategy.startswith("id"):
                continue
            pool, labeled = rd["before"][u.index]
            cand, ref = _reference_scores(
                spied_run.data, u, pool, labeled, rd["W"][u.index], rd["bias"][u.index]
            )
            got = rd["chosen"][u.index]
            n = min(rd["b"], cand.size)
            assert got.size == n and np.unique(got).size == n, (u.strategy, u.mode)
            assert np.isin(got, cand).all(), f"{u.strategy}/{u.mode} chose a non-candidate"
            s_b = np.sort(ref)[::-1][n - 1]  # the b-th best reference score
            got_scores = ref[np.searchsorted(cand, got)]
            tol = 1e-6 + 1e-4 * abs(s_b)
            worst = float(got_scores.min())
            assert worst >= s_b - tol, (
                f"{u.concept}/{u.strategy}/{u.mode}: chose a score {worst:.6g} below the reference's "
                f"b-th best {s_b:.6g}"
            )
            checked += 1
    assert checked == 2 * 3 * 2 * spied_run.cfg.n_rounds


def test_random_picks_the_top_b_of_its_seeded_stream_in_both_modes(spied_run):
    """Random picks the b unlabeled candidates (its pool for SEALS, every unlabeled train row for All) with the
    highest random_scores(id, seed, unit key, round + 1), ties to the lower id: a uniform draw without
    replacement that depends only on the seed and the unit, never on the pool's order or what else runs."""
    from seals_gpu.selection import unit_key
    from seals_gpu.strategies import random_scores

    data, cfg = spied_run.data, spied_run.cfg
    train_ids = data.ids[data.train]
    checked = 0
    for r, rd in enumerate(spied_run.rounds):
        for u in spied_run.run.units:
            if u.strategy != "random":
                continue
            pool, labeled = rd["before"][u.index]
            cand = np.setdiff1d(pool if u.mode == "seals" else train_ids, labeled)
            sc = random_scores(cand, cfg.seed, unit_key(u), r + 1).double().numpy()
            want = cand[np.lexsort((cand, -sc))][: rd["b"]]
            np.testing.assert_array_equal(np.sort(rd["chosen"][u.index]), np.sort(want), err_msg=u.mode)
            checked += 1
    assert checked == 2 * 2 * cfg.n_rounds


@pytest.mark.parametrize("blocks", ["one block", "small blocks"])
@pytest.mark.parametrize("strategy", ["id-knn", "id-pairwise"])
def test_density_scored_in_the_driver_handles_missing_neighbours_and_fetches_each_row_once(
    strategy, blocks, monkeypatch
):
    """id-knn / id-pairwise as the driver scores them (one unit at a time, in blocks), on their own: the top-b
    of entropy(p) * max(density, 0) ** beta against float64, where id-knn's density is the mean similarity
    over a candidate's valid neighbours only (some rows have missing slots, a few none: density 0), and each
    candidate's vector is fetched once per use (blocks cover the candidates exactly), with the blocks and
    id-pairwise's reference chunks as large as the pool or small and uneven (the same result)."""
    from seals_gpu import selection
    from seals_gpu.config import RunConfig
    from seals_gpu.pool import CandidatePool
    from seals_gpu.selection import Unit

    if blocks == "small blocks":
        monkeypatch.setattr(selection, "DRIVER_BLOCK", 64)
        monkeypatch.setattr(selection, "PAIRWISE_CHUNK", 23)

    rng = np.random.default_rng(11)
    n, d, k, b, beta = 300, 6, 5, 17, 2.0
    ids = np.sort(rng.choice(2**40, size=n, replace=False)).astype(np.int64) - 2**39
    x = rng.normal(size=(n, d)) + 0.8
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    D = np.sort(rng.uniform(-0.2, 0.9, size=(n, k)), axis=1)[:, ::-1].astype(np.float32)
    I = rng.choice(ids, size=(n, k))
    D[rng.random(n) < 0.3, 3:] = -np.inf  # missing slots (any int64 is an id: missing shows in D only)
    D[rng.random(n) < 0.2, 1:] = -np.inf  # one neighbour left
    D[:7, :] = -np.inf  # no neighbour at all: density 0
    fetched: list[int] = []

    def vectors(q: np.ndarray) -> np.ndarray:
        fetched.append(int(np.asarray(q).size))
        return x[np.searchsorted(ids, q)]

    def neighbors(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.searchsorted(ids, q)
        return D[rows], I[rows]

    cfg = RunConfig(store="s", store_fingerprint="f", concepts=(0,), strategies=(strategy,), beta=beta)
    run = bare_selection(config=cfg, round=1, backend=SimpleNamespace(vectors=vectors), neighbors=neighbors)

    w = torch.from_numpy(rng.normal(size=d).astype(np.float32))
    bias = torch.tensor(0.1, dtype=torch.float32)
    u = Unit(index=0, concept=0, strategy=strategy, mode="seals", n_pos_train=1)
    u.pool = CandidatePool(ids.copy())
    got = run._select_torch(u, w, bias, b)

    xs = x.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(xs @ w.double().numpy() + 0.1)))
    if strategy == "id-knn":
        valid = np.isfinite(D)
        cnt = valid.sum(axis=1)
        dens = np.where(
            cnt > 0, np.where(valid, D, 0.0).astype(np.float64).sum(axis=1) / np.maximum(cnt, 1), 0
        )
    else:
        dens = (xs @ xs.T).mean(axis=1)
    ref = entropy64(p) * np.maximum(dens, 0.0) ** beta
    s_b = np.sort(ref)[::-1][b - 1]
    assert got.dtype == np.int64 and got.size == b and np.unique(got).size == b
    assert ref[np.searchsorted(ids, got)].min() >= s_b - 1e-6
    assert sum(fetched) == (n if strategy == "id-knn" else 2 * n), fetched


def test_recall_is_positives_found_over_the_train_splits_positives(spied_run):
    """metrics.parquet's recall = positives among the unit's labeled ids / the concept's positives in
    the TRAIN split, both counted here from the store's Parquet. Mutant: dividing by all positives."""
    data = spied_run.data
    is_pos = {c: np.asarray([c in lab for lab in data.labels]) for c in spied_run.cfg.concepts}
    train_pos = {c: int((m & data.train).sum()) for c, m in is_pos.items()}
    assert all(int(m.sum()) > train_pos[c] > 0 for c, m in is_pos.items()), "need test positives too"
    m = pq.read_table(spied_run.out / "metrics.parquet").to_pylist()
    sel = pq.read_table(spied_run.out / "selections.parquet").to_pylist()
    assert len(m) == len(spied_run.run.units) * (spied_run.cfg.n_rounds + 1)
    for row in m:
        key = (row["concept"], row["strategy"], row["mode"])
        ids = [
            s["id"]
            for s in sel
            if (s["concept"], s["strategy"], s["mode"]) == key and s["round"] <= row["round"]
        ]
        found = int(is_pos[row["concept"]][np.searchsorted(data.ids, ids)].sum())
        assert row["recall"] == pytest.approx(found / train_pos[row["concept"]], rel=1e-12), row


def test_every_unit_ends_exactly_at_the_budget(spied_run):
    """The final n_labeled of every unit is the budget, even when budget - seed is not a multiple of
    the batch (the last round is trimmed). Mutant: the last round's batch not trimmed."""
    cfg = spied_run.cfg
    assert (cfg.budget - cfg.seed_size) % cfg.batch != 0
    m = pq.read_table(spied_run.out / "metrics.parquet").to_pylist()
    last = max(r["round"] for r in m)
    final = [r for r in m if r["round"] == last]
    assert len(final) == len(spied_run.run.units)
    assert {r["n_labeled"] for r in final} == {BUDGET}
    sel = pq.read_table(spied_run.out / "selections.parquet").to_pylist()
    per_unit: dict[tuple, list[int]] = {}
    for s in sel:
        per_unit.setdefault((s["concept"], s["strategy"], s["mode"]), []).append(s["round"])
    expect = [cfg.seed_size] + [BATCH] * (cfg.n_rounds - 1) + [(BUDGET - cfg.seed_size) % BATCH]
    for key, rounds in per_unit.items():
        assert np.bincount(rounds).tolist() == expect, key


# --------------------------------------------------------------------------------- StoreWriter duplicates
@pytest.mark.parametrize("rows_per_file", [100, 4])  # one file, or the repeat in a second file
def test_store_writer_refuses_an_id_repeated_in_a_later_batch(tmp_path, rows_per_file):
    """An id written in one ``write`` call and again in a later one (in the same Parquet file or in another)
    is refused, and no store appears. Mutant: duplicates checked within each batch only."""
    dest = tmp_path / "s"
    x = np.random.default_rng(0).normal(size=(4, 3))
    w = StoreWriter(dest, dim=3, rows_per_file=rows_per_file)
    w.write(np.array([1, 2, 3, 4]), x)
    w.write(np.array([5, 6, 3]), x[:3])  # 3 again, each batch unique on its own
    n_files = len(list(w._tmp.glob("part-*.parquet")))
    assert n_files == (1 if rows_per_file == 100 else 2)
    with pytest.raises(StoreError, match=rf"^store {re.escape(str(dest))}: id 3 appears more than once"):
        w.close()
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # no store, no temporary left behind
    with pytest.raises(StoreError, match=r"id 6 appears more than once"), StoreWriter(dest, dim=3) as w2:
        w2.write(np.array([6]), x[:1])
        w2.write(np.array([7]), x[1:2])
        w2.write(np.array([8, 6]), x[2:4])
    assert not dest.exists()


# ----------------------------------------------------------------------- exclusions at shard boundaries
@pytest.fixture(scope="module")
def three_shards(tmp_path_factory) -> SimpleNamespace:
    """600 rows with ids 0..599 in 3 flat shards; every 10th id (from 5) is a test row, so each shard's
    first and last ids are train rows that can be labeled."""
    root = tmp_path_factory.mktemp("gaps_shards")
    rng = np.random.default_rng(11)
    ids = np.arange(600, dtype=np.int64)
    split = np.where(ids % 10 == 5, "test", "train")
    store = write_store(root / "store", ids, rng.normal(size=(600, 8)), split=split)
    build_index(store, root / "idx", IndexSpec(kind="flat", shards=3))
    index = LocalIndex.open(root / "idx")
    bounds = np.array([[s.ids[0], s.ids[-1]] for s in index.shards], dtype=np.int64)
    test = ids[split == "test"]
    train = ids[split == "train"]
    assert len(index.shards) == 3 and not np.isin(bounds, test).any()
    return SimpleNamespace(path=root / "idx", index=index, bounds=bounds, test=test, train=train)


def _boundary_exclusions(sh: SimpleNamespace):
    """Three units (maxent, mlp, id) asked for every candidate, each excluding (labeled) a different mix
    of shard-boundary ids: first ids, last ids, both."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 8, generator=g)
    bias = torch.randn(3, generator=g)
    kind = torch.tensor([0, 1, 2], dtype=torch.int8)
    ref = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    first, last = sh.bounds[:, 0], sh.bounds[:, 1]
    exclude = [np.sort(first), np.sort(last), np.sort(np.r_[first, last, sh.train[::37]])]
    return W, bias, kind, ref, exclude


def _assert_all_but_excluded(top, sh: SimpleNamespace, exclude) -> None:
    ids, _, counts = top.numpy()
    for u, ex in enumerate(exclude):
        got = ids[u, : int(counts[u])]
        leaked = np.intersect1d(got, ex)
        assert leaked.size == 0, f"unit {u}: excluded (labeled) ids {leaked.tolist()} were selected again"
        np.testing.assert_array_equal(np.sort(got), np.setdiff1d(sh.train, ex))


def test_in_process_sharded_all_mode_never_reselects_a_labeled_boundary_id(three_shards):
    """All mode over the in-process 3-shard backend: a labeled id that is a shard's first or last id is
    never selected again, and every other train row is (b = every candidate)."""
    from seals_gpu.backend import LocalBackend

    sh = three_shards
    W, bias, kind, ref, exclude = _boundary_exclusions(sh)
    be = LocalBackend(LocalIndex.open(sh.path), CPU, excluded=sh.test)
    _assert_all_but_excluded(be.score_all(exclude, W, bias, kind, ref, 1.0, sh.train.size), sh, exclude)


@pytest.mark.ray
def test_ray_all_mode_never_reselects_a_labeled_boundary_id(ray_local, three_shards):
    """The same over 3 Ray shard actors, where each actor gets only the excluded ids of its own id range.
    Mutants: that range cut with ``>`` at a shard's first id or ``<`` at its last."""
    from seals_gpu.distributed import RayBackend

    sh = three_shards
    W, bias, kind, ref, exclude = _boundary_exclusions(sh)
    with RayBackend(sh.path, excluded=sh.test, device=CPU) as be:
        top = be.score_all(exclude, W, bias, kind, ref, 1.0, sh.train.size)
    _assert_all_but_excluded(top, sh, exclude)


# ------------------------------------------------------------------------------------------ unknown ids
@pytest.fixture(scope="module")
def gappy(tmp_path_factory) -> SimpleNamespace:
    """Ids 0,1,2,4,5 | 6,8,9,10,11 (two dense shards, each with a hole: 3 and 7)."""
    root = tmp_path_factory.mktemp("gaps_unknown")
    ids = np.array([0, 1, 2, 4, 5, 6, 8, 9, 10, 11], dtype=np.int64)
    x = np.random.default_rng(2).normal(size=(ids.size, 4))
    store = write_store(root / "store", ids, x, split=["train"] * ids.size)
    build_index(store, root / "idx", IndexSpec(kind="flat", shards=2))
    return SimpleNamespace(store=store, path=root / "idx", ids=ids)


UNKNOWN = [[3], [7], [0, 3], [3, 4], [-1], [12], [10**12]]  # holes of dense shards, ends, far away


def test_unknown_ids_raise_everywhere_never_another_rows_vector(gappy):
    """An id that is not in the store, including one in a hole of a dense shard (ids 0,1,2,4,5: ask for
    3), raises a clear error from every lookup: the shard, the index, the backend, the in-memory index and
    the store; never another row's vector. Mutant: the dense lookup table's -1 (hole) taken as a row."""
    from seals_gpu.backend import LocalBackend
    from seals_gpu.distributed import ShardServer

    idx = LocalIndex.open(gappy.path)
    shard0 = idx.shards[0]
    assert shard0.ids.tolist() == [0, 1, 2, 4, 5] and shard0._position_table() is not None  # dense: table
    be = LocalBackend(idx, CPU)
    mem = LocalIndex.in_memory(gappy.store)
    server = ShardServer(gappy.path / idx.manifest["shards"][0]["dir"], "flat", None, None, "cpu")
    W, bias = torch.zeros(1, 4), torch.zeros(1)
    kind, ref = torch.zeros(1, dtype=torch.int8), None
    lookups = {
        "shard.positions": lambda q: shard0.positions(q),
        "shard.vectors_of": lambda q: shard0.vectors_of(q),
        "index.vectors": lambda q: idx.vectors(q),
        "in-memory index.vectors": lambda q: mem.vectors(q),
        "backend.vectors": lambda q: be.vectors(q),
        "backend.sum_vectors": lambda q: be.sum_vectors(q),
        "backend.group_logits": lambda q: be.group_logits([(np.array([0]), q)], W, bias),
        "backend.score_pool": lambda q: be.score_pool(q, np.array([0, q.size]), W, bias, kind, ref, 1.0, 2),
        "ShardServer.vectors": lambda q: server.vectors(q),
    }
    for name, f in lookups.items():
        for q in UNKNOWN:
            if name in ("shard.positions", "shard.vectors_of", "ShardServer.vectors") and q == [7]:
                continue  # 7 belongs to the other shard's range: tested through the index
            with pytest.raises(IndexError_, match=r"not in"):
                f(np.asarray(q, dtype=np.int64))
                pytest.fail(f"{name}({q}) returned instead of raising")
    for q in UNKNOWN:
        with pytest.raises(StoreError, match=r"ids not in store"):
            gappy.store.take(q)
    # and the known ids still map to their own rows everywhere
    data = read_parquet_store(gappy.store.path)
    np.testing.assert_allclose(idx.vectors(gappy.ids), data.x, rtol=1e-6)
    np.testing.assert_allclose(be.vectors(gappy.ids[::-1]), data.x[::-1], rtol=1e-6)
    np.testing.assert_allclose(gappy.store.take(gappy.ids), data.x, rtol=1e-6)


@pytest.mark.ray
def test_ray_index_raises_on_unknown_ids(ray_local, gappy):
    """The Ray index too: a hole of a dense shard raises on the actor, as a clear error here."""
    from seals_gpu.distributed import RayBackend

    with RayBackend(gappy.path, excluded=None, device=CPU) as be:
        for q in UNKNOWN:
            with pytest.raises(IndexError_, match=r"not in"):
                be.vectors(np.asarray(q, dtype=np.int64))


# ------------------------------------------------------------------------------------- IVF-PQ re-rank
def test_ivfpq_rerank_overfetch_raises_recall_against_exact_search():
    """Fetching ``rerank * k`` PQ candidates and re-ranking them exactly finds clearly more of the true
    k nearest neighbours than re-ranking only k (rerank 4 vs 1), on a small clustered set with every
    list probed (so only the PQ approximation differs). Mutant: the over-fetch ignored."""
    from seals_gpu.index.shard import IndexShard, SearchParams, train_ivfpq

    ids, x, _ = clustered(4000, 32, seed=9)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    o = np.argsort(ids)
    ids, x = ids[o], np.ascontiguousarray(x[o], dtype=np.float32)
    trained = train_ivfpq(x, nlist=16, pq_m=4, seed=1234)
    q = np.arange(0, ids.size, 20)
    k = 10
    sims = x[q].astype(np.float64) @ x.astype(np.float64).T
    sims[np.arange(q.size), q] = -np.inf  # not its own neighbour
    truth = ids[np.argsort(-sims, axis=1)[:, :k]]

    def recall(rerank: int) -> float:
        shard = IndexShard.build(ids, x, kind="ivfpq", trained=trained, params=SearchParams(16, rerank))
        _, got = shard.search(x[q], k, exclude_ids=ids[q])
        return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(got, truth, strict=True)]))

    r1, r4 = recall(1), recall(4)
    assert r4 >= r1 + 0.2, f"recall@{k} with rerank 1: {r1:.3f}, rerank 4: {r4:.3f}"  # seen: 0.39 -> 0.79


# --------------------------------------------------------------------------------------------- seed sets
def test_seed_sets_never_repeat_an_id():
    """Over many seeds and concepts, tiny train splits included (where a draw with replacement or a
    repeated negative would be likely), a seed set holds n_pos distinct train positives and n_neg
    distinct train negatives. Mutants: positives drawn with replacement; negatives not deduplicated."""
    from seals_gpu.seeds import concept_seed, draw_seed_set

    universe = np.arange(1000, 1060, dtype=np.int64) * 3
    checked = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        for concept in range(6):
            n_train = int(rng.integers(6, 40))
            train = np.sort(rng.choice(universe, size=n_train, replace=False))
            n_p = int(rng.integers(1, n_train - 1))
            pos = np.sort(rng.choice(train, size=n_p, replace=False))
            n_pos = int(rng.integers(1, n_p + 1))
            n_neg = int(rng.integers(0, n_train - n_p + 1))  # up to every negative
            got, labels = draw_seed_set(concept_seed(seed, concept), train, pos, n_pos, n_neg)
            assert got.size == n_pos + n_neg and np.unique(got).size == got.size, (seed, concept, got)
            assert np.isin(got, train).all()
            np.testing.assert_array_equal(np.isin(got, pos), labels)
            assert int(labels.sum()) == n_pos
            checked += 1
    assert checked == 240
