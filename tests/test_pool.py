"""Candidate pools and the neighbour cache against plain set/dict references, and the driver's pools
against their definition P = (union of the kNN of the labeled ids) ∩ train − labeled, by brute force."""

from __future__ import annotations

import numpy as np
import pytest

from seals_gpu.config import RunConfig
from seals_gpu.driver import Run
from seals_gpu.pool import CandidatePool, NeighborCache, to_csr

from .conftest import bare_selection, clustered


@pytest.mark.parametrize("seed", range(4))
def test_pool_grow_and_remove_match_sets(seed):
    rng = np.random.default_rng(seed)
    pool = CandidatePool.empty()
    ref: set[int] = set()
    labeled: set[int] = set()
    for _ in range(30):
        nb = rng.integers(-3, 400, size=int(rng.integers(0, 60)))  # negative ids are ids like any other
        lab = np.array(sorted(labeled), dtype=np.int64)
        added = pool.grow(nb, lab)
        want = {int(v) for v in nb} - labeled - ref
        assert sorted(want) == added.tolist()
        ref |= want
        gone = rng.integers(-3, 450, size=int(rng.integers(0, 8)))
        gone = np.unique(gone)
        removed = pool.remove(gone)
        assert sorted(removed.tolist()) == sorted(int(g) for g in gone if int(g) in ref)
        ref -= {int(g) for g in gone}
        labeled |= {int(g) for g in gone}
        assert pool.ids.tolist() == sorted(ref), "pool must stay sorted and equal to the set"
        assert pool.ids.dtype == np.int64


def test_pool_remove_with_repeats_and_empty():
    pool = CandidatePool(np.array([2, 5, 9], dtype=np.int64))
    assert pool.remove(np.array([5, 5, 7])).tolist() == [5, 5]
    assert pool.ids.tolist() == [2, 9]
    assert pool.remove(np.empty(0, np.int64)).size == 0
    assert CandidatePool.empty().remove(np.array([1])).size == 0
    # lists and empty lists in: int64 out, and the pool stays int64
    for got in (
        pool.grow([], np.empty(0, np.int64)),
        pool.remove([]),
        pool.grow([[7, 3], [3, 2]], np.array([2])),
    ):
        assert got.dtype == np.int64
    assert pool.ids.dtype == np.int64 and pool.ids.tolist() == [2, 3, 7, 9]  # 2 was in it already


def test_neighbor_cache_answers_int64_ids_from_any_input():
    """missing() of a list, an empty list or a nested array: the distinct uncached ids, sorted, int64."""
    cache = NeighborCache(2)
    cache.add(np.array([5], np.int64), np.zeros((1, 2), np.float32), np.array([[1, 2]]))
    for q, want in (([], []), ([[9, 5], [3, 9]], [3, 9]), ([2**63 - 1, -(2**63)], [-(2**63), 2**63 - 1])):
        got = cache.missing(q)
        assert got.dtype == np.int64 and got.tolist() == want


def test_neighbor_cache_matches_a_dict():
    rng = np.random.default_rng(3)
    k = 7
    cache = NeighborCache(k)
    ref: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(40):  # many small adds: the tables grow past their first capacity (1024)
        ids = cache.missing(rng.choice(10**9, size=60, replace=False))
        width = int(rng.integers(3, k + 3))  # fewer neighbours than k are padded, more are cut
        I = rng.integers(-5, 10**6, size=(ids.size, width))  # -1 and other negative ids are real ids
        D = rng.normal(size=(ids.size, width)).astype(np.float32)
        D[rng.random(D.shape) < 0.2] = -np.inf  # missing neighbours: told by the similarity alone
        D[rng.random(D.shape) < 0.02] = np.nan
        cache.add(ids, D, I)
        for j, i in enumerate(ids.tolist()):
            ref[i] = (D[j], I[j])
    assert len(cache) == len(ref) > 1024
    keys = np.array(list(ref), dtype=np.int64)
    q = rng.choice(keys, size=500)  # any order, repeats allowed
    D, I = cache.lookup(q)
    for j, i in enumerate(q.tolist()):
        d0, i0 = ref[i]
        w = min(k, i0.size)
        found = np.isfinite(d0[:w])
        assert I[j, :w].tolist() == np.where(found, i0[:w], -1).tolist()
        assert (I[j, w:] == -1).all()
        want_d = np.where(found, d0[:w], -np.inf)
        assert np.array_equal(D[j, :w], want_d.astype(np.float32))
        assert np.isneginf(D[j, w:]).all()
    assert cache.missing(np.r_[keys[:3], 10**9 + 1]).tolist() == [10**9 + 1]
    with pytest.raises(KeyError, match="not in the neighbour cache"):
        cache.lookup(np.array([10**9 + 1]))
    with pytest.raises(ValueError, match="must both be"):
        cache.add(np.array([10**9 + 5]), np.zeros((2, k)), np.zeros((2, k)))


def test_to_csr():
    ids, off = to_csr([np.array([3, 4]), np.empty(0, np.int64), np.array([1])])
    assert ids.tolist() == [3, 4, 1] and off.tolist() == [0, 2, 2, 3]
    ids, off = to_csr([])  # no unit: no ids, one offset
    assert ids.dtype == np.int64 and ids.shape == (0,) and off.tolist() == [0]
    big = np.array([2**63 - 1, -(2**63)], dtype=np.int64)
    ids, off = to_csr([big[:1], big[1:]])
    assert ids.dtype == np.int64 and ids.tolist() == big.tolist() and off.tolist() == [0, 1, 2]


@pytest.mark.parametrize("search", ["flat", "ivf"])
def test_driver_pools_equal_their_definition(tmp_path, search):
    """Every round, each SEALS pool equals the paper's definition: the union over labeled ids of their k
    nearest TRAIN neighbours (brute force, float64 cosine, ties to the lower id; the test split never
    enters), minus the labeled ids. IVF runs with --search-recall 1.0, where it must be exact."""
    from seals_gpu.store import write_store

    ids, x, labels = clustered(2500, 12, seed=5)
    store = write_store(tmp_path / "store", ids, x, labels=labels)
    order = np.argsort(ids)
    sid = ids[order]
    xn = x[order] / np.linalg.norm(x[order], axis=1, keepdims=True)
    all_ids, is_test = store.read_split()
    train = np.isin(sid, all_ids[~is_test])
    k = 9
    sims = xn.astype(np.float64) @ xn[train].astype(np.float64).T
    sims[np.flatnonzero(train), np.arange(train.sum())] = -np.inf  # an item is not its own neighbour
    # rank by (sim desc, id asc): train ids are sorted, so a stable sort on -sim does it
    knn = sid[train][np.argsort(-sims, axis=1, kind="stable")[:, :k]]
    nbr = {int(i): knn[j] for j, i in enumerate(sid)}

    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(0, 1),
        strategies=("maxent", "id"),
        modes=("seals",),
        budget=130,
        k=k,
        batch=25,
        seed_positives=3,
        seed_negatives=27,
        search=search,
        search_recall=1.0,
    )
    checked = []

    class Watch(Run):
        def _record(self, round_no, t):
            super()._record(round_no, t)
            for u in self.units:
                lab = u.labeled_ids
                want = np.unique(np.concatenate([nbr[int(i)] for i in lab]))
                want = want[~np.isin(want, lab)]
                ids, is_test = self.store.read_split()  # the split as the store has it
                assert np.isin(want, ids[~is_test]).all()
                assert u.pool.ids.tolist() == want.tolist(), f"round {round_no}, unit {u.index}"
                if u.strategy == "id":  # the id reference sum follows the pool
                    ref = store.take(u.pool.ids).astype(np.float64).sum(axis=0)
                    np.testing.assert_allclose(u.ref_sum, ref, atol=1e-4)
            checked.append(round_no)

    Watch(cfg, tmp_path / "run", store=store, progress=False, log=lambda *a: None).start()
    assert checked == list(range(cfg.n_rounds + 1))


@pytest.mark.parametrize("strategy", ["maxent", "mlp", "id", "random"])
def test_expand_each_is_algorithm_2_as_written(tmp_path, strategy):
    """--expand each: within a round (model fixed) every pick is the best candidate, by (score desc, id asc),
    of the round's starting pool grown by the k nearest train neighbours of the picks before it, minus the
    labeled and the picked. Checked against a float64 brute force; the pools after the round still equal the
    paper's definition, and `batch` and `each` differ. ID: entropy x max(similarity to the mean of the
    round's starting candidates, 0) ** beta, beta 2 (the reference is fixed for the round, like the model);
    Random: the draw `batch` makes in that round (the same stream, so the two differ only by pool growth)."""
    from seals_gpu.selection import unit_key
    from seals_gpu.store import write_store
    from seals_gpu.strategies import random_scores

    ids, x, labels = clustered(2000, 10, seed=9)
    store = write_store(tmp_path / "store", ids, x, labels=labels)
    order = np.argsort(ids)
    sid = ids[order]
    xn = (x[order] / np.linalg.norm(x[order], axis=1, keepdims=True)).astype(np.float64)
    all_ids, is_test = store.read_split()
    train = np.isin(sid, all_ids[~is_test])
    k = 7
    sims = xn @ xn[train].T
    sims[np.flatnonzero(train), np.arange(train.sum())] = -np.inf
    knn = sid[train][np.argsort(-sims, axis=1, kind="stable")[:, :k]]
    nbr = {int(i): knn[j] for j, i in enumerate(sid)}
    row = {int(i): j for j, i in enumerate(sid)}

    beta = 2.0

    def score(w, b, cand, ctx):
        cand = np.asarray(cand, dtype=np.int64)
        if strategy == "random":
            return random_scores(cand, ctx["seed"], ctx["key"], ctx["round"] + 1).double().numpy()
        xc = xn[[row[int(c)] for c in cand]]
        p = 1.0 / (1.0 + np.exp(-(xc @ w + b)))
        if strategy == "mlp":
            return p
        h = -(p * np.log(np.clip(p, 1e-300, 1)) + (1 - p) * np.log(np.clip(1 - p, 1e-300, 1)))
        if strategy == "id":
            return h * np.maximum(xc @ ctx["ref"], 0.0) ** beta
        return h

    def cfg(expand):
        return RunConfig(
            store=str(store.path),
            store_fingerprint=store.fingerprint,
            concepts=(0,),
            strategies=(strategy,),
            modes=("seals",),
            budget=70,
            k=k,
            batch=15,
            seed_positives=3,
            seed_negatives=12,
            search="flat",
            expand=expand,
            beta=beta,
        )

    checked = []

    class Watch(Run):
        def _select(self, b_round):
            u = self.units[0]
            pool0 = set(u.pool.ids.tolist())
            lab = set(u.labeled_ids.tolist())
            w = self.model.W[0].double().numpy()
            b = float(self.model.b[0])
            start = sorted(pool0 - lab)
            ctx = {
                "seed": self.config.seed,
                "key": unit_key(u),
                "round": self.round,
                "ref": xn[[row[c] for c in start]].mean(axis=0),
            }
            chosen, t = super()._select(b_round)
            picks = chosen[0].tolist()
            pool = set(pool0)
            for i, pk in enumerate(picks):
                cand = np.array(sorted(pool - lab - set(picks[:i])), dtype=np.int64)
                sc = score(w, b, cand, ctx)
                best = cand[np.lexsort((cand, -np.round(sc, 9)))][0]  # score desc, then id asc
                assert pk == best or abs(score(w, b, [pk], ctx)[0] - sc.max()) < 1e-6, (i, pk, best)
                pool |= set(nbr[pk].tolist())
            checked.append(len(picks))
            return chosen, t

    Watch(cfg("each"), tmp_path / "each", store=store, progress=False, log=lambda *a: None).start()
    assert checked and all(n == 15 for n in checked[:-1])
    import pyarrow.parquet as pq

    run_batch = Run(cfg("batch"), tmp_path / "batch", store=store, progress=False, log=lambda *a: None)
    run_batch.start()
    a = pq.read_table(tmp_path / "each" / "selections.parquet").column("id").to_pylist()
    c = pq.read_table(tmp_path / "batch" / "selections.parquet").column("id").to_pylist()
    assert a[:15] == c[:15] and a != c  # same seed set, then the two forms part


def test_expand_each_from_an_empty_pool_picks_no_ids_as_int64():
    """A unit whose pool is exhausted picks nothing, as an int64 array (a float64 empty array would turn the
    unit's labeled ids into floats when the round's picks are appended)."""
    import torch

    from seals_gpu.selection import Unit

    cfg = RunConfig(store="s", store_fingerprint="f", concepts=(0,), strategies=("maxent", "random"))
    run = bare_selection(config=cfg, round=3)
    for strategy in ("maxent", "random"):
        u = Unit(index=0, concept=0, strategy=strategy, mode="seals", n_pos_train=1)
        got = run._select_each(u, torch.zeros(4), torch.zeros(()), None, 5)
        assert got.dtype == np.int64 and got.shape == (0,)


def test_one_or_no_candidate_left_in_a_unit_scored_in_the_driver():
    """random / id-knn / id-pairwise are scored in the driver: a pool of one candidate picks it, an empty
    pool picks nothing (an int64 array)."""
    import torch

    from seals_gpu.selection import Unit

    cfg = RunConfig(store="s", store_fingerprint="f", concepts=(0,), strategies=("random",))
    for pool, want in (([-(2**62)], [-(2**62)]), ([], [])):
        u = Unit(index=0, concept=0, strategy="random", mode="seals", n_pos_train=1)
        u.pool = CandidatePool(np.asarray(pool, dtype=np.int64))
        got = bare_selection(config=cfg, round=2)._select_torch(u, torch.zeros(4), torch.zeros(()), 5)
        assert got.dtype == np.int64 and got.tolist() == want


def test_units_draw_random_streams_of_their_own():
    """Random's stream is keyed by (concept, strategy, mode): distinct units get distinct keys (and so
    unrelated draws), the same unit the same key in any run."""
    from seals_gpu.selection import Unit, unit_key

    units = [
        Unit(index=i, concept=c, strategy=s, mode=m, n_pos_train=1)
        for i, (c, s, m) in enumerate(
            [(c, s, m) for c in (0, 1, "n01234") for s in ("random", "maxent") for m in ("seals", "all")]
        )
    ]
    keys = [unit_key(u) for u in units]
    assert len(set(keys)) == len(units)
    again = Unit(index=99, concept=1, strategy="random", mode="all", n_pos_train=7)
    assert (
        unit_key(again) == keys[[(u.concept, u.strategy, u.mode) for u in units].index((1, "random", "all"))]
    )


def test_expand_each_refuses_strategies_it_cannot_score(tmp_path):
    from seals_gpu.errors import ConfigError

    with pytest.raises(ConfigError, match="--expand each"):
        RunConfig(store="s", store_fingerprint="f", concepts=(0,), strategies=("id-knn",), expand="each")
    with pytest.raises(ConfigError, match="--expand 'later'"):
        RunConfig(store="s", store_fingerprint="f", concepts=(0,), expand="later")
