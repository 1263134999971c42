"""Tests written from the survivors of the fourth sampled mutation run (session 10, ``make mutate-sample
SAMPLE=40 SAMPLE_SEED=3``: a fresh draw after every test written for seeds 0-2).

Each test states the property a user relies on; the docstring names the mutants it kills. Survivors that no
test can observe are listed, with the reason, in ``benchmarks/mutation_equivalent.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from seals_gpu import learner as learner_mod
from seals_gpu import scoring
from seals_gpu.errors import ConfigError, IndexError_
from seals_gpu.index.shard import IndexShard
from seals_gpu.learner import LogisticModel, fit_logistic
from seals_gpu.scoring import score_all
from seals_gpu.store import write_store

from .conftest import unit_rows as _unit


# ------------------------------------------------------------------------------------------------ scoring
def test_id_items_within_the_pruning_margin_of_the_bth_score_are_kept(monkeypatch) -> None:
    """All-mode ID scoring prunes items whose density factor is below the b-th score / ln 2, less a 1e-4
    margin: items just above the b-th score (closer than the margin) still enter the top-b, exactly as
    without pruning (kills ``_density_floor`` mutant 15: the margin added instead of taken off, which
    dropped them)."""
    d, b, n_blk = 4, 5, 100
    ref = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    W, bias = torch.zeros(1, d), torch.zeros(1)  # every logit 0: entropy ln 2, score = ln 2 * (x . ref)
    kind = torch.tensor([2], dtype=torch.int8)

    def rows(a: np.ndarray) -> np.ndarray:  # unit rows with x . ref = a exactly
        x = np.zeros((a.size, d), np.float32)
        x[:, 0] = a
        x[:, 1] = np.sqrt(1.0 - a.astype(np.float64) ** 2)
        return x

    first = np.full(n_blk, 0.1, np.float32)
    first[:b] = 0.5  # the first block sets the top-b at density 0.5
    later = []
    for j in range(3):  # later blocks: mostly far below, and one item each a hair above 0.5
        a = np.full(n_blk, 0.1, np.float32)
        a[7 * j + 3] = np.float32(0.5 * (1.0 + (j + 2) * 1e-5))
        later.append(a)
    dens = np.concatenate([first, *later])
    ids = np.arange(dens.size, dtype=np.int64) * 3 + 1
    X = rows(dens)

    def blocks():
        return ((ids[s : s + n_blk], X[s : s + n_blk]) for s in range(0, dens.size, n_blk))

    calls = []
    real = scoring._sparse_topb
    monkeypatch.setattr(scoring, "_sparse_topb", lambda *a: calls.append(1) or real(*a))
    got = score_all(blocks(), W, bias, kind, ref, 1.0, b)
    assert calls, "the pruned path never ran"
    monkeypatch.setattr(scoring, "_PRUNE", False)
    want = score_all(blocks(), W, bias, kind, ref, 1.0, b)
    above = ids[dens > 0.5]
    assert above.size == 3 and set(above.tolist()) <= set(want.ids[0].tolist())  # the reference takes them
    assert torch.equal(got.ids, want.ids) and torch.equal(got.scores, want.scores)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64, np.int32])
def test_all_mode_scoring_takes_ids_of_any_integer_dtype(dtype) -> None:
    """Blocks whose ids come as unsigned or narrower integers (a Parquet column of uint32 ids, say) are
    scored as their int64 values, exclusions included, and answered as int64 (kills ``score_all`` mutant
    104: the ids kept in their own dtype, which torch cannot compare for unsigned types)."""
    rng = np.random.default_rng(0)
    n, d, b = 500, 8, 10
    x = _unit(n, d, seed=6)
    ids = (rng.permutation(n) * 3 + 1).astype(np.int64)
    W, bias = torch.randn(3, d, generator=torch.Generator().manual_seed(0)), torch.zeros(3)
    kind = torch.tensor([0, 1, 0], dtype=torch.int8)
    exclude = [np.sort(ids[:50]), np.empty(0, np.int64), np.sort(ids[100:120])]

    def blocks(dt):
        return ((ids[s : s + 100].astype(dt), x[s : s + 100]) for s in range(0, n, 100))

    got = score_all(blocks(dtype), W, bias, kind, None, 1.0, b, exclude=exclude)
    want = score_all(blocks(np.int64), W, bias, kind, None, 1.0, b, exclude=exclude)
    assert got.ids.dtype == torch.int64
    assert torch.equal(got.ids, want.ids) and torch.equal(got.scores, want.scores)


def test_a_kind_vector_of_the_wrong_length_is_named() -> None:
    """score_all with one strategy kind per unit missing says which shape it needs (kills ``_check_units``
    mutant 23: no message)."""
    x = _unit(4, 3)
    with pytest.raises(ValueError, match=re.escape("kind must have shape (2,) to match W, got (3,)")):
        score_all(
            [(np.arange(4), x)],
            torch.zeros(2, 3),
            torch.zeros(2),
            torch.zeros(3, dtype=torch.int8),
            None,
            1.0,
            2,
        )


def test_counts_over_an_empty_ranking_are_zero() -> None:
    """A shard or block with no scores counts no item at or above any threshold (int64 zeros), so the
    counts stay additive over splits that leave a part empty (kills ``count_at_or_above`` mutant 13)."""
    from seals_gpu.metrics import count_at_or_above

    out = count_at_or_above(np.empty(0, np.float32), np.array([-1.0, 0.2, 0.9]))
    assert out.dtype == np.int64 and out.tolist() == [0, 0, 0]
    assert count_at_or_above(np.array([0.5, 0.1]), np.empty(0)).shape == (0,)


def test_sorting_no_rows_of_neighbours_gives_no_rows() -> None:
    """sort_neighbors on zero queries returns (0, k) float32 and int64 arrays (kills ``sort_neighbors``
    mutant 44)."""
    from seals_gpu.index.merge import sort_neighbors

    D, I = sort_neighbors(np.empty((0, 6), np.float32), np.empty((0, 6), np.int64), 4)
    assert D.shape == I.shape == (0, 4) and D.dtype == np.float32 and I.dtype == np.int64


# ------------------------------------------------------------------------------------------------ learner
def test_chunked_newton_fits_keep_the_class_weight_and_the_factor(monkeypatch) -> None:
    """More units than one Hessian chunk holds are solved chunk by chunk with every setting passed on:
    ``class_weight="balanced"``, ``keep_factor`` and ``tol`` give what one chunk gives (kills
    ``fit_logistic`` mutant 142: ``tol`` dropped from the chunked call, so every later argument shifted and
    the class weight was ignored)."""
    rng = np.random.default_rng(4)
    U, L, d = 5, 50, 6
    X = torch.from_numpy(_unit(U * L, d, seed=4).reshape(U, L, d))
    y = torch.from_numpy((rng.random((U, L)) < 0.15).astype(np.float32))
    y[:, 0] = 1.0
    m = torch.ones(U, L, dtype=torch.bool)
    kw = {"method": "newton", "class_weight": "balanced", "keep_factor": True, "tol": 1e-10}
    whole = fit_logistic(X, y, m, **kw)
    plain = fit_logistic(X, y, m, method="newton", tol=1e-10)
    assert (whole.W - plain.W).abs().max() > 1e-2  # the class weight matters on this data
    monkeypatch.setattr(learner_mod, "_HESSIAN_BYTES", 2 * 8 * (d + 1) ** 2)  # two units per chunk
    chunked = fit_logistic(X, y, m, **kw)
    torch.testing.assert_close(chunked.W, whole.W, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked.b, whole.b, atol=1e-6, rtol=0)
    assert chunked.factor is not None and chunked.factor.shape == whole.factor.shape == (U, d + 1, d + 1)
    torch.testing.assert_close(chunked.factor, whole.factor, atol=1e-5, rtol=1e-5)


def test_a_units_newton_fit_does_not_depend_on_the_units_beside_it() -> None:
    """A concept's model is the same, bit for bit, whether it is fitted alone or batched with other concepts
    (float32 features, as a run gives them): a sweep's selections do not depend on what else it holds.
    (Kills ``_fit`` mutant 343: the line search's slope summed over every unit, so each unit's step length
    depended on the others.)"""
    rng = np.random.default_rng(0)
    U, L, d = 4, 60, 8
    X = torch.from_numpy(_unit(U * L, d, seed=1).reshape(U, L, d))
    X[1] *= 5.0  # one harder unit, larger logits: more Newton steps
    y = torch.from_numpy((rng.random((U, L)) < 0.2).astype(np.float32))
    y[:, 0] = 1.0
    m = torch.ones(U, L, dtype=torch.bool)
    batched = fit_logistic(X, y, m, method="newton")
    for u in range(U):
        alone = fit_logistic(X[u : u + 1], y[u : u + 1], m[u : u + 1], method="newton")
        assert torch.equal(alone.W[0], batched.W[u]) and torch.equal(alone.b[0], batched.b[u]), u
        assert int(alone.n_iter[0]) == int(batched.n_iter[u])


def test_an_overflowing_row_is_named_without_numpy_warnings() -> None:
    """A feature row of finite values whose products overflow is refused naming its row, and the check that
    finds it raises no numpy warning of its own (kills ``_solve_units`` mutant 61: overflow warnings from
    summing the row)."""
    import warnings

    from seals_gpu.learner import fit_logistic_units

    rng = np.random.default_rng(0)
    x = _unit(20, 4, seed=8)
    x[7] = 3e38  # finite float32, but X @ w and the row's sum overflow
    y = (rng.random(20) < 0.3).astype(np.float64)
    y[0], y[1] = 1.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"Xs\[0\]\[7\] has non-finite \(or overflowing\) values"):
            fit_logistic_units([x], [y])


def test_keep_factor_with_lbfgs_is_refused_naming_the_fix() -> None:
    """The whole message: what is wrong and both ways out (kills ``fit_logistic`` mutant 37)."""
    X, y, m = torch.zeros(1, 3, 2), torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)
    want = (
        "keep_factor=True needs method='newton' (L-BFGS has no Hessian factor to keep); "
        "pass method='newton' or drop keep_factor"
    )
    with pytest.raises(ConfigError) as e:
        fit_logistic(X, y, m, keep_factor=True, method="lbfgs")
    assert str(e.value) == want
    assert isinstance(fit_logistic(X, y, m, keep_factor=True, method="newton"), LogisticModel)


def test_available_memory_reads_memavailable_on_linux() -> None:
    """The memory check of --k reads the kernel's MemAvailable (bytes), so an impossible --k is refused on
    Linux rather than never (kills ``available_memory`` mutant 2: the file name changed, always None)."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo: available_memory answers None here by design")
    from seals_gpu.driver import available_memory

    line = next(x for x in meminfo.read_text().splitlines() if x.startswith("MemAvailable:"))
    want = int(line.split()[1]) * 1024
    got = available_memory()
    assert got is not None and abs(got - want) <= 0.5 * want  # memory moves between the two reads


def test_a_run_over_an_ivfpq_index_uses_the_indexs_own_search(tmp_path: Path) -> None:
    """With an IVF-PQ --index and --search auto, the plan is the index's own search (its probes and
    re-rank, test rows filtered), not an exact or IVF search built beside it (kills ``Run.__init__``
    mutant 67: the index kind read as flat)."""
    from seals_gpu.driver import run
    from seals_gpu.index import IndexSpec, build_index
    from seals_gpu.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s", n=2000, dim=8, concepts=1, prevalence=(0.03, 0.04), seed=1)
    idx = build_index(store, tmp_path / "i", IndexSpec(kind="ivfpq", nlist=8, pq_m=4, nprobe=8)).path
    small = dict(strategies=("mlp",), modes=("seals",), budget=60, k=5, batch=20, seed_positives=2)
    small.update(seed_negatives=8, device="cpu")
    r = run(store, tmp_path / "r", concepts=[0], index=idx, **small)
    assert r.plan.method == "index" and "IVF-PQ" in r.plan.reason
    assert run(store, tmp_path / "f", concepts=[0], **small).plan.method == "flat"


def test_a_folder_changed_between_the_check_and_the_lock_is_checked_again(tmp_path: Path) -> None:
    """A run looks at its folder, then takes the lock: if something else wrote there in between, the folder
    is inspected again under the lock, so a file that is not the run's is refused (one line naming it),
    left as it is, and the lock is given back (kills ``Run.start`` mutant 46: the second inspection called
    without the settings, a TypeError)."""
    from seals_gpu import rundir
    from seals_gpu.config import RunConfig
    from seals_gpu.driver import Run
    from seals_gpu.errors import RunDirError
    from seals_gpu.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s", n=1000, dim=8, concepts=1, prevalence=(0.03, 0.04), seed=2)
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(0,),
        strategies=("mlp",),
        modes=("seals",),
        budget=30,
        seed_positives=2,
        seed_negatives=8,
        batch=10,
        k=5,
    )
    out = tmp_path / "r"
    r = Run(cfg, out, store=store, progress=False, log=lambda *a: None)
    real = rundir.RunLock.acquire

    def racing_acquire(lock) -> None:  # another process writes into the folder just before the lock
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("mine")
        real(lock)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rundir.RunLock, "acquire", racing_acquire)
        with pytest.raises(RunDirError, match=r"notes.txt is not a file of this run"):
            r.start()
    assert (out / "notes.txt").read_text() == "mine"
    rundir.RunLock(out).check_free()  # the lock was given back


def test_the_gpu_layout_of_a_rounds_fit_solves_the_same_problems(tmp_path: Path) -> None:
    """On a GPU a round fits every unit in one padded batch (batched Newton) instead of one L-BFGS per unit:
    run on the CPU with the run's device set to the GPU layout (there ``fit_logistic`` picks L-BFGS for CPU
    tensors, over the same padded rows), the padded fit gives every unit the model the per-unit fit gives, up to the solvers' tolerance (kills ``Run._fit`` mutants 51 and 53: the padded
    rows' mask not set, the batched model dropped; that branch is otherwise reached only on a GPU)."""
    import dataclasses

    from seals_gpu.driver import run
    from seals_gpu.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s", n=3000, dim=8, concepts=2, prevalence=(0.02, 0.04), seed=3)
    r = run(
        store,
        tmp_path / "r",
        concepts=[0, 1],
        strategies=("mlp", "maxent"),
        modes=("seals",),
        budget=120,
        k=10,
        batch=30,
        seed_positives=3,
        seed_negatives=27,
        device="cpu",
    )
    sizes = {u.n_labeled for u in r.units}
    assert len(r.units) == 4 and min(sizes) >= 30
    r.model = None
    r._fit()
    per_unit = r.model
    r.model = None
    r.device = dataclasses.replace(r.device, kind="cuda")  # the GPU layout, on CPU tensors
    r._fit()
    batched = r.model
    assert batched is not None and batched.W.shape == per_unit.W.shape
    for u in r.units:
        x = torch.from_numpy(u.X)
        p_unit = torch.sigmoid(x @ per_unit.W[u.index].float() + per_unit.b[u.index].float())
        p_batch = torch.sigmoid(x @ batched.W[u.index].float() + batched.b[u.index].float())
        assert (p_unit - p_batch).abs().max() < 2e-3, u.index


# ------------------------------------------------------------------------------------------------ pool
def test_a_neighbour_cache_miss_names_the_missing_ids() -> None:
    """Looking up ids of which some are not cached names those (the first five), not the cached ones
    (kills ``NeighborCache.lookup`` mutant 37)."""
    from seals_gpu.pool import NeighborCache

    cache = NeighborCache(2)
    cache.add(np.array([10, 20, 30]), np.ones((3, 2), np.float32), np.array([[1, 2], [3, 4], [5, 6]]))
    with pytest.raises(KeyError, match=re.escape("ids [-7, 25] are not in the neighbour cache")):
        cache.lookup(np.array([10, -7, 20, 25, 30]))
    D, I = cache.lookup(np.array([30, 10]))
    assert I.tolist() == [[5, 6], [1, 2]]


# ------------------------------------------------------------------------------------------------ split
def test_ids_between_shards_are_answered_without_asking_a_shard() -> None:
    """The split routes each id to the shard whose id range holds it: ids in the gaps between shards, below
    the first or above the last are ABSENT without a call to any shard (a remote round trip each), and a
    shard is asked only about ids inside its range (kills ``Split._owner`` mutant 16: an id in a gap routed
    to the next shard)."""
    from seals_gpu.split import ABSENT, TEST, TRAIN, ShardSplit, Split

    parts = [
        ShardSplit(np.array([10, 12, 14]), np.array([False, True, False])),
        ShardSplit(np.array([100, 105]), np.array([True, False])),
    ]
    local = Split.of_parts(parts)
    asked: list[tuple[int, list[int]]] = []

    def call(method, args_of):
        for s, a in args_of.items():
            asked.append((s, np.asarray(a[0]).tolist()))
        return {s: getattr(parts[s], method)(*a) for s, a in args_of.items()}

    split = Split(local.id_min, local.id_max, local.counts, call)
    gaps = np.array([-5, 9, 15, 50, 99, 106, 2**62])
    assert split.codes(gaps).tolist() == [ABSENT] * gaps.size
    assert asked == []
    assert split.codes(np.array([13, 12, 50, 100])).tolist() == [ABSENT, TEST, ABSENT, TEST]
    assert sorted(asked) == [(0, [13, 12]), (1, [100])]
    assert split.codes(np.array([14, 105])).tolist() == [TRAIN, TRAIN]


# ------------------------------------------------------------------------------------------------ store
def test_test_ids_between_an_empty_range_are_int64(tmp_path: Path) -> None:
    """A shard's share of the test split is an int64 array even when it holds none, like every id list
    (kills ``Store.test_ids_between`` mutant 68: an empty float64 array)."""
    ids = np.arange(0, 400, 4, dtype=np.int64) - 2**40
    split = np.where(np.arange(ids.size) % 3 == 0, "test", "train")
    store = write_store(tmp_path / "s", ids, _unit(ids.size, 4), split=split)
    some = store.test_ids_between(int(ids[0]), int(ids[10]))
    assert some.dtype == np.int64 and some.tolist() == ids[:11][::3].tolist()
    for lo, hi in ((int(ids[1]), int(ids[2])), (int(ids[-1]) + 1, int(ids[-1]) + 50), (5, 4)):
        none = store.test_ids_between(lo, hi)
        assert none.dtype == np.int64 and none.shape == (0,)


def test_unsigned_ids_that_fit_in_int64_are_read_as_int64(tmp_path: Path) -> None:
    """A store whose id column is uint64 (or uint32) reads as int64 ids when every value fits, and is
    refused, naming the file, when one does not (kills ``_ids_to_numpy`` mutant 11: every uint64 column
    refused)."""
    import pyarrow as pa

    from seals_gpu.errors import StoreError
    from seals_gpu.store import Store

    from .test_bad_input import _store_of, _table

    for typ in (pa.uint64(), pa.uint32()):
        ids = np.array([3, 9, 2**31 + 5, 4000], dtype=np.uint64)
        folder = _store_of(tmp_path / str(typ), _table(4, id=pa.array(ids, type=typ)))
        got = np.concatenate([b.ids for b in Store(folder).iter_batches()])
        assert got.dtype == np.int64 and got.tolist() == ids.tolist()
    big = pa.array(np.array([1, 2**63 + 1, 7, 8], dtype=np.uint64))
    folder = _store_of(tmp_path / "big", _table(4, id=big))
    with pytest.raises(StoreError, match=r"column 'id' has values above the int64 range"):
        list(Store(folder).iter_batches())


def test_a_nan_embedding_in_a_store_file_names_the_file_and_the_id(tmp_path: Path) -> None:
    """Reading a store whose file holds a NaN embedding (written by another tool) names that file and the
    row's id (kills ``Store._convert`` mutant 27: the file left out of the message)."""
    import pyarrow as pa

    from seals_gpu.errors import StoreError
    from seals_gpu.store import Store

    from .test_bad_input import _store_of, _table

    x = _unit(6, 8, seed=5)  # the dimension of _table's files
    x[4, 2] = np.nan
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)
    folder = _store_of(tmp_path / "nan", _table(5), _table(6, first_id=100, embedding=emb))
    want = f"{folder / 'part-00001.parquet'}: embedding of id 104 contains NaN or inf"
    with pytest.raises(StoreError, match=re.escape(want)):
        list(Store(folder).iter_batches())


def test_closing_a_store_writer_twice_keeps_the_store(tmp_path: Path) -> None:
    """close() inside a ``with`` block, or twice, or abort() after close, leaves the written store as it
    is (kills ``StoreWriter.close`` mutant 2: the closed Parquet writer replaced by a value that the second
    call tried to close)."""
    from seals_gpu.store import Store, StoreWriter

    x = _unit(5, 4)
    with StoreWriter(tmp_path / "with", dim=4) as w:
        w.write(np.arange(5), x)
        w.close()
    w = StoreWriter(tmp_path / "twice", dim=4)
    w.write(np.arange(5), x)
    w.close()
    w.close()
    w.abort()
    for name in ("with", "twice"):
        assert Store(tmp_path / name).read_ids().tolist() == [0, 1, 2, 3, 4]


def test_a_writer_batch_with_the_wrong_number_of_labels_is_named(tmp_path: Path) -> None:
    """Labels for a batch must be one list per row: a mismatch names both counts and writes nothing
    (kills ``StoreWriter.write`` mutant 58: no message)."""
    from seals_gpu.errors import StoreError
    from seals_gpu.store import StoreWriter

    w = StoreWriter(tmp_path / "s", dim=4)
    with pytest.raises(StoreError, match=re.escape("labels has 2 rows, expected 3")):
        w.write(np.arange(3), _unit(3, 4), labels=[[1], [2]])
    w.abort()
    assert not (tmp_path / "s").exists()


def test_store_batches_hold_at_most_the_rows_asked(tmp_path: Path) -> None:
    """iter_batches(batch_rows=n) bounds every batch to n rows, however large the Parquet row groups, so
    memory stays one batch (kills ``Store.iter_batches`` mutant 35: Parquet's default batch size)."""
    ids = np.arange(300, dtype=np.int64) * 2
    store = write_store(tmp_path / "s", ids, _unit(300, 4))
    sizes = [b.ids.size for b in store.iter_batches(batch_rows=7)]
    assert sum(sizes) == 300 and max(sizes) <= 7
    assert [b.ids.size for b in store.iter_batches(batch_rows=7, embeddings=False)] == sizes


def test_reading_concepts_never_reads_the_embeddings(tmp_path: Path, monkeypatch) -> None:
    """Concept counts and positives read the id and label columns only: the embeddings (most of a store's
    bytes) are never requested from Parquet (kills ``Store._flat_labels`` mutant 10: labels read with the
    embeddings)."""
    import pyarrow.parquet as pq

    ids = np.arange(200, dtype=np.int64)
    labels = [[i % 3] if i % 5 else [] for i in range(200)]
    store = write_store(tmp_path / "s", ids, _unit(200, 4), labels=labels)
    asked: list[list[str]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        asked.append(list(kw.get("columns") or []))
        return real(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    counts = store.concept_counts()
    pos = store.concept_positives([0, 2])
    assert asked and all("embedding" not in cols for cols in asked), asked
    assert counts[0] == sum(1 for lab in labels if lab == [0])
    assert pos[2].tolist() == [i for i in range(200) if i % 5 and i % 3 == 2]


# ------------------------------------------------------------------------------------------- index.shard
def test_a_shard_with_a_repeated_id_is_refused_when_loaded(tmp_path: Path) -> None:
    """Ids must be unique within a shard: an ``ids.npy`` with the same id twice (sorted, so only the
    uniqueness check can see it) is refused with the rebuild command (kills ``IndexShard.load`` mutant 41:
    ``>=`` accepted repeats)."""
    ids = np.arange(10, dtype=np.int64) * 7
    IndexShard.build(ids, _unit(10, 4), kind="flat").save(tmp_path / "shard-00000")
    assert IndexShard.load(tmp_path / "shard-00000", kind="flat").ntotal == 10
    rep = ids.copy()
    rep[5] = rep[4]
    np.save(tmp_path / "shard-00000" / "ids.npy", rep)
    with pytest.raises(IndexError_, match=r"ids.npy: its ids are not unique and sorted ascending"):
        IndexShard.load(tmp_path / "shard-00000", kind="flat")


def test_an_ivfpq_shard_without_a_trained_index_is_refused_with_the_whole_message() -> None:
    """The message is exactly what to do, nothing added (kills ``IndexShard.build`` mutant 17)."""
    with pytest.raises(IndexError_) as e:
        IndexShard.build(np.arange(4, dtype=np.int64), _unit(4, 4), kind="ivfpq")
    assert str(e.value) == "ivfpq shards need a trained IndexIVFPQ; train one with train_ivfpq()"


def test_exact_ties_at_the_boundary_go_to_the_lower_ids_with_the_query_excluded() -> None:
    """A flat shard resolves ties at its k-th neighbour by id: with up to 8 tied vectors beyond the k asked
    for, and the query's own id excluded, the k lowest ids among the ties come back (kills
    ``IndexShard.search`` mutant 54: a margin of k - 1 + 8 candidates, two short when a query is excluded)."""
    rng = np.random.default_rng(0)
    n, d, k = 200, 8, 3
    x = _unit(n, d, seed=2)
    ids = np.arange(n, dtype=np.int64) * 5 - 300
    for _ in range(20):
        tie = rng.choice(n, k + 1 + 8, replace=False)  # the query and k + 8 copies of it
        xt = x.copy()
        xt[tie] = x[tie[0]]
        shard = IndexShard.build(ids, xt, kind="flat")
        q = int(tie[rng.integers(tie.size)])
        D, I = shard.search(xt[q : q + 1], k, exclude_ids=ids[q : q + 1])
        want = np.sort(ids[np.setdiff1d(tie, [q])])[:k]
        assert I[0].tolist() == want.tolist(), tie
        assert np.all(D[0] > 0.999)


# ---------------------------------------------------------------------------------- a run's progress bar
def test_a_run_that_searches_every_train_row_up_front_shows_it_in_a_bar(tmp_path: Path, capsys) -> None:
    """When the plan searches every train row's neighbours up front, the progress bar says so (kills
    ``Run._precompute_neighbors`` mutant 50, the bar's text changed)."""
    from seals_gpu.cli import main
    from seals_gpu.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s", n=600, dim=8, concepts=2, prevalence=(0.03, 0.05), seed=2)
    args = ["run", str(store.path), "--out", str(tmp_path / "r"), "--concepts", "0,1", "--strategies"]
    args += ["mlp", "--modes", "seals", "--k", "5", "--batch", "50", "--budget", "400", "--device", "cpu"]
    args += ["--no-cache", "--search", "flat"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "every train row's neighbours up front" in err  # the plan
    assert re.search(r"neighbours of every train row: +100%", err), err[-2000:]


def _objective(X: np.ndarray, y: np.ndarray, theta: np.ndarray, lam_b: float, C: float) -> float:
    """The L-BFGS unit's objective in float64: 1/2 |w|^2 + lam_b/2 b^2 + C sum(log(1 + e^z) - y z)."""
    w, b = theta[:-1], theta[-1]
    z = X.astype(np.float64) @ w + b
    return float(0.5 * w @ w + 0.5 * lam_b * b * b + C * np.sum(np.logaddexp(0.0, z) - y * z))


def test_a_line_search_out_of_trials_still_takes_the_progress_it_made(monkeypatch) -> None:
    """When the line search runs out of trials after finding a step that lowers the objective (its lower
    bound ``lo`` > 0), the fit takes that step and carries on: with one trial allowed and a curvature
    condition no first trial meets, every fit still takes steps and lowers the objective, never raising
    (kills ``_lbfgs_run`` mutant 427: the residuals at that step computed against None, a crash)."""
    lam_b, C = 1e-4, 1.0
    monkeypatch.setattr(learner_mod, "_LS_MAX", 1)
    monkeypatch.setattr(learner_mod, "_LBFGS_ETA", 1e-15)
    rng = np.random.default_rng(7)
    for _ in range(5):
        X = rng.standard_normal((300, 6))
        y = (rng.random(300) < 0.3).astype(np.float64)
        theta = np.zeros(7)
        start = _objective(X, y, theta, lam_b, C)
        steps, _ = learner_mod._lbfgs_run(X, y, theta, lam_b, C, 1e-9, 500, True)
        assert steps >= 1 and np.isfinite(theta).all()
        assert _objective(X, y, theta, lam_b, C) < start - 1e-3
