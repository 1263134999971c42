"""Tests written from the survivors of the sampled mutation run (session 8, ``make mutate-sample``).

Each test states the property a user relies on; the docstring names the mutants it kills. Survivors that no
test can observe are listed, with the reason, in ``benchmarks/mutation_equivalent.json``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from seals_gpu.errors import ConfigError, IndexError_, StoreError
from seals_gpu.index.shard import IndexShard, SearchParams, default_ivf_params, flat_candidates, train_ivfpq
from seals_gpu.store import prevalence_range, write_store

from .conftest import unit_rows as _unit


# ------------------------------------------------------------------------------------------ index.shard
@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_a_shard_answers_k_1_with_each_querys_nearest_neighbour(kind: str) -> None:
    """k=1 is a valid request (the nearest neighbour), k=0 is not (kills ``search`` mutant 1: ``k <= 1``)."""
    x = _unit(400, 16)
    ids = np.arange(400, dtype=np.int64) * 7 - 1000
    trained = train_ivfpq(x, nlist=4, pq_m=4) if kind == "ivfpq" else None
    shard = IndexShard.build(ids, x, kind=kind, trained=trained, params=SearchParams(nprobe=4, rerank=50))
    D, I = shard.search(x[:5], 1)
    assert D.shape == I.shape == (5, 1)
    np.testing.assert_array_equal(I[:, 0], ids[:5])  # each row's nearest neighbour is itself
    D, I = shard.search(x[:5], 1, exclude_ids=ids[:5])
    brute = x[:5] @ x.T
    brute[np.arange(5), np.arange(5)] = -np.inf
    np.testing.assert_array_equal(I[:, 0], ids[brute.argmax(axis=1)])
    with pytest.raises(IndexError_, match="k=0"):
        shard.search(x[:5], 0)


def test_flat_candidates_are_int64_row_positions_of_the_top_inner_products() -> None:
    """Blocked matmul + top-k equals a brute-force argsort, as int64 positions, across query and base chunks
    (kills ``flat_candidates`` mutant 8: a float64 result array)."""
    xq, xb = _unit(37, 8, seed=1), _unit(501, 8, seed=2)
    pos = flat_candidates(xq, xb, 10, q_chunk=16, b_chunk=128)
    assert pos.dtype == np.int64 and pos.shape == (37, 10)
    ref = np.argsort(-(xq.astype(np.float64) @ xb.T.astype(np.float64)), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(np.sort(pos, axis=1), np.sort(ref, axis=1))


def test_a_shard_built_from_narrow_integer_ids_holds_int64_ids() -> None:
    """Ids are int64 everywhere: a shard built from int32 (or unsigned) ids stores them as int64 (kills
    ``IndexShard.build`` mutant 8)."""
    x = _unit(50, 4)
    for dtype in (np.int32, np.uint32, np.int16):
        shard = IndexShard.build(np.arange(50, dtype=dtype) * 3, x)
        assert shard.ids.dtype == np.int64
        np.testing.assert_array_equal(shard.ids, np.arange(50) * 3)


def test_default_ivf_params_have_at_least_16_lists_and_scale_with_the_store() -> None:
    """nlist >= 16 for a small store (exactly 16 at the floor), 4 sqrt(n) rounded to a power of two but at
    most n / 39 lists (FAISS's 39 training rows per list) otherwise, capped at 2**18; nprobe = nlist / 16, at least 16 (kills
    ``default_ivf_params`` mutants 8, 18, 25, 53, 56)."""
    assert default_ivf_params(0, 384)["nlist"] == 16
    assert default_ivf_params(600, 384) == {"nlist": 16, "pq_m": 32, "nprobe": 16, "rerank": 4}
    assert default_ivf_params(1000, 384)["nlist"] == 25  # 4 sqrt(n) -> 128, but 39 training rows per list
    assert default_ivf_params(100_000, 384)["nlist"] == 1024  # 4 * sqrt(1e5) = 1265 -> 2**10
    assert default_ivf_params(100_000, 384)["nprobe"] == 64
    assert default_ivf_params(20_000, 384)["nlist"] == 512  # 4 * sqrt(2e4) = 566 -> 512 = n // 39
    assert (
        default_ivf_params(10_000, 384)["nlist"] == 256
    )  # 4 * sqrt(1e4) = 400 -> 512, capped at 10000 // 39
    assert default_ivf_params(10**13, 384)["nlist"] == 1 << 18
    assert default_ivf_params(10**13, 384)["nprobe"] == (1 << 18) // 16
    assert default_ivf_params(1000, 20)["pq_m"] == 20 and default_ivf_params(1000, 7)["pq_m"] == 7
    assert default_ivf_params(1000, 66)["pq_m"] == 22


def test_loading_a_shard_names_the_missing_file_and_refuses_mismatched_rows(tmp_path) -> None:
    """A shard folder missing a file names that file; vectors whose row count differs from the ids are
    refused; the query settings passed to ``load`` are the ones the shard uses (kills ``IndexShard.load``
    mutants 22, 24, 78)."""
    x = _unit(300, 8)
    ids = np.arange(300, dtype=np.int64)
    trained = train_ivfpq(x, nlist=4, pq_m=2)
    IndexShard.build(ids, x, kind="ivfpq", trained=trained).save(tmp_path / "s")
    params = SearchParams(nprobe=3, rerank=7)
    loaded = IndexShard.load(tmp_path / "s", kind="ivfpq", params=params)
    assert loaded.params == params and loaded.index.nprobe == 3
    (tmp_path / "s" / "vectors.npy").unlink()
    with pytest.raises(IndexError_, match=r"missing vectors\.npy; rebuild"):
        IndexShard.load(tmp_path / "s", kind="ivfpq")
    np.save(tmp_path / "s" / "vectors.npy", x[:299])
    with pytest.raises(IndexError_, match="disagree; rebuild the index"):
        IndexShard.load(tmp_path / "s", kind="ivfpq")


def test_a_loaded_shard_maps_its_vectors_unless_asked_to_read_them(tmp_path) -> None:
    """``load`` memory-maps vectors.npy (a shard can be larger than memory), ``mmap=False`` reads it (kills
    ``IndexShard.load`` mutant 13)."""
    x = _unit(64, 4)
    IndexShard.build(np.arange(64), x).save(tmp_path / "s")
    mapped = IndexShard.load(tmp_path / "s", kind="flat")
    assert isinstance(mapped.vectors, np.memmap) and not mapped.vectors.flags.writeable
    read = IndexShard.load(tmp_path / "s", kind="flat", mmap=False)
    assert not isinstance(read.vectors, np.memmap)
    np.testing.assert_array_equal(np.asarray(mapped.vectors), read.vectors)


def test_a_pq_m_that_does_not_divide_the_dimension_is_refused_with_divisors_that_do() -> None:
    """The error names the largest divisors of d up to 64 (kills ``train_ivfpq`` mutants 10 and 14)."""
    with pytest.raises(
        IndexError_, match=r"--pq-m 5 must divide the dimension 48; try one of \[12, 16, 24, 48\]"
    ):
        train_ivfpq(_unit(100, 48), nlist=2, pq_m=5)
    with pytest.raises(IndexError_, match=r"try one of \[8, 16, 32, 64\]"):
        train_ivfpq(_unit(100, 128), nlist=2, pq_m=3)


# ------------------------------------------------------------------------------------------------ store
def test_concept_counts_per_split_add_up_to_the_whole(tmp_path) -> None:
    """``concept_counts(split="train")`` + ``(split="test")`` = ``concept_counts()``, each counted against the
    split column; an unknown split is refused (kills ``Store.concept_counts`` mutant 2)."""
    n = 200
    rng = np.random.default_rng(3)
    labels = [[int(c) for c in rng.choice(4, size=rng.integers(0, 3), replace=False)] for _ in range(n)]
    split = np.where(rng.random(n) < 0.3, "test", "train")
    s = write_store(tmp_path / "s", np.arange(n) * 11, rng.normal(size=(n, 4)), labels=labels, split=split)
    train, test, whole = s.concept_counts(split="train"), s.concept_counts(split="test"), s.concept_counts()
    for c in range(4):
        on_train = sum(1 for lab, sp in zip(labels, split, strict=True) if c in lab and sp == "train")
        on_test = sum(1 for lab, sp in zip(labels, split, strict=True) if c in lab and sp == "test")
        assert train.get(c, 0) == on_train and test.get(c, 0) == on_test
        assert whole[c] == on_train + on_test
    with pytest.raises(StoreError, match="split='val'"):
        s.concept_counts(split="val")


def test_store_info_puts_each_concept_in_its_prevalence_bucket(tmp_path) -> None:
    """``store info``'s histogram: a concept of prevalence p falls in the bucket [min, max) holding p (the
    last bucket includes 1.0) (kills ``Store.info`` mutant 18 and the other edge changes)."""
    n = 20_000
    # prevalences 0.5e-4, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.5, 1.0
    sizes = {"a": 1, "b": 2, "c": 4, "d": 6, "e": 10, "f": 20, "g": 40, "h": 100, "i": 200, "j": 10_000}
    labels: list[list[str]] = [["z"] for _ in range(n)]
    for name, size in sizes.items():
        for r in range(size):
            labels[r].append(name)
    x = np.random.default_rng(0).normal(size=(n, 2))
    s = write_store(tmp_path / "s", np.arange(n), x, labels=labels)
    hist = s.info()["prevalence_histogram"]
    assert [h["min"] for h in hist] == [0.0, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 1e-1]
    assert [h["max"] for h in hist] == [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 1e-1, 1.0]
    by_p = {size / n: 0 for size in sizes.values()} | {1.0: 0}
    expected = [0] * len(hist)
    for p in by_p:
        i = next(i for i, h in enumerate(hist) if h["min"] <= p < h["max"] or (p == 1.0 and h["max"] == 1.0))
        expected[i] += 1
    assert [h["concepts"] for h in hist] == expected == [1, 1, 2, 1, 1, 1, 1, 1, 2]


@pytest.mark.parametrize("text", ["nan:0.5", "0.001:nan", "nan:nan", "0:0.1", "0.2:0.1", "0.1:1", "-0.1:0.5"])
def test_a_prevalence_range_outside_0_1_or_nan_is_refused(text: str) -> None:
    with pytest.raises(StoreError, match="need 0 < MIN <= MAX < 1"):
        prevalence_range(text)


def test_take_returns_float32_rows_in_the_order_asked(tmp_path) -> None:
    """``Store.take``: float32 (n, d) in the order of the ids asked, repeats included; float32 when empty
    too (kills ``Store.take`` mutant 11)."""
    x = np.random.default_rng(0).normal(size=(30, 3))
    s = write_store(tmp_path / "s", np.arange(30) * 5 - 40, x, normalize=False)
    raw = s.take([5, -40, 5, 100], normalize=False)
    assert raw.dtype == np.float32 and raw.shape == (4, 3)
    np.testing.assert_allclose(raw, x[[9, 0, 9, 28]].astype(np.float32))
    unit = s.take([5, -40, 5, 100])
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    assert s.take([]).dtype == np.float32 and s.take([]).shape == (0, 3)


def test_the_hash_split_of_one_id_is_that_of_the_id_in_an_array_and_warns_of_nothing() -> None:
    """splitmix64 wraps modulo 2**64 on purpose: for a scalar id (numpy warns about scalar overflow, not
    array overflow) it must not warn either (kills ``hash_test_mask`` mutant 7)."""
    import warnings

    from seals_gpu.store import hash_test_mask

    ids = np.array([-(2**63), -1, 0, 1, 2**63 - 1, 123_456_789], dtype=np.int64)
    arr = hash_test_mask(ids, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, v in enumerate(ids):
            assert bool(hash_test_mask(np.int64(v), 0.5)) == bool(arr[i])
            assert bool(hash_test_mask(int(v), 0.5)) == bool(arr[i])


def test_a_prevalence_range_inside_0_1_is_parsed() -> None:
    assert prevalence_range("0.001:0.01") == (0.001, 0.01)
    assert prevalence_range("0.5:0.5") == (0.5, 0.5)


# ---------------------------------------------------------------------------------------------- learner
def test_auto_picks_newton_on_cuda_and_lbfgs_elsewhere() -> None:
    """``method="auto"`` is Newton on a CUDA device, L-BFGS on the CPU (decided from the device alone, so it
    is checked without a GPU) (kills ``_resolve_method`` mutant 11)."""
    from seals_gpu.learner import _resolve_method

    assert _resolve_method("auto", torch.device("cuda")) == "newton"
    assert _resolve_method("auto", torch.device("cuda:1")) == "newton"
    assert _resolve_method("auto", torch.device("cpu")) == "lbfgs"
    assert _resolve_method("newton", torch.device("cpu")) == "newton"
    with pytest.raises(ConfigError, match="method='sgd'"):
        _resolve_method("sgd", torch.device("cpu"))


def test_no_features_is_refused_with_its_own_message() -> None:
    from seals_gpu.learner import fit_logistic

    with pytest.raises(ValueError, match=r"^X has d=0 features$"):
        fit_logistic(torch.zeros(2, 3, 0), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))


def test_the_hessian_factor_survives_a_vanishing_intercept_curvature() -> None:
    """With every curvature weight zero and no intercept penalty or floor the bordered Hessian is singular;
    the factorisation nudges the diagonal of those units only and returns factors of H + eps I (kills
    ``_hessian_cholesky`` mutants in the jitter loop, e.g. 119: the diagonal taken over the wrong dims)."""
    from seals_gpu.learner import _hessian_cholesky

    k, L, d = 3, 5, 4
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(k, L, d)))
    D = torch.rand(k, L, dtype=torch.float64)
    D[1] = 0.0  # unit 1: H[d, d] = 0 and its row/column are zero -> not positive definite
    lam_b = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b_floor = torch.zeros(k, dtype=torch.float64)
    F = _hessian_cholesky(X, D, lam_b, b_floor)
    assert F.shape == (k, d + 1, d + 1) and F.dtype == torch.float64
    assert torch.isfinite(F).all()
    for u in range(k):
        H = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        Xu = X[u]
        H[:d, :d] = Xu.T @ (D[u, :, None] * Xu) + torch.eye(d, dtype=torch.float64)
        H[:d, d] = H[d, :d] = Xu.T @ D[u]
        H[d, d] = D[u].sum() + lam_b[u]
        rebuilt = F[u] @ F[u].T
        if u == 1:
            assert 0 < float(rebuilt[d, d]) < 1e-6  # a tiny nudge, not a large one
            torch.testing.assert_close(rebuilt[:d, :d], H[:d, :d], rtol=1e-9, atol=1e-6)
        else:
            torch.testing.assert_close(rebuilt, H, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- scoring
def test_all_mode_random_reports_int64_counts_and_ids_even_for_narrow_input_ids() -> None:
    """``random_topb``: per unit the b highest seeded scores among the ids not excluded, with int64 ids and
    counts whatever integer type the ids came in (kills ``random_topb`` mutants 5 and 31)."""
    from seals_gpu.scoring import random_topb
    from seals_gpu.strategies import random_scores

    ids = np.arange(0, 300, 3, dtype=np.int64)
    exclude = [ids[:10], np.empty(0, np.int64)]
    top = random_topb(ids.astype(np.int32), exclude, [5, 9], seed=4, round_no=2, b=7)
    assert top.ids.dtype == torch.int64 and top.counts.dtype == torch.int64
    assert top.counts.tolist() == [7, 7]
    for u, (ex, key) in enumerate(zip(exclude, [5, 9], strict=True)):
        cand = np.setdiff1d(ids, ex)
        sc = random_scores(cand, 4, key, 2).numpy()
        order = np.lexsort((cand, -sc))[:7]
        np.testing.assert_array_equal(top.ids[u].numpy(), cand[order])
    few = random_topb(ids[:3], [np.empty(0, np.int64)], [1], seed=0, round_no=0, b=5)
    assert few.counts.tolist() == [3] and few.ids[0, 3:].tolist() == [-1, -1]


def test_a_concept_listed_twice_is_refused_by_name(tmp_path) -> None:
    """``--concepts a,b,a`` names the repeated concept (kills ``Store.resolve_concepts`` mutant 64)."""
    x = np.random.default_rng(0).normal(size=(6, 2))
    s = write_store(tmp_path / "s", np.arange(6), x, labels=[["cat"], ["dog"], ["cat"], [], ["dog"], ["cow"]])
    assert s.resolve_concepts(["dog", "cat"]) == ["dog", "cat"]
    with pytest.raises(StoreError, match="concept 'cat' is listed twice"):
        s.resolve_concepts(["cat", "dog", "cat"])


def test_torch_scoring_returns_float32_scores_and_int64_ids() -> None:
    """``score_select`` (torch backend): float32 scores, int64 ids, whatever dtype it computed in (kills
    ``_score_select_torch`` mutant 34)."""
    from seals_gpu.scoring import score_select

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    rows = torch.arange(40, dtype=torch.int64)
    ids = rows * 1_000_003 - 7
    offsets = torch.tensor([0, 25, 40], dtype=torch.int64)
    W, bias = torch.randn(2, 8, generator=g), torch.zeros(2)
    kind = torch.tensor([0, 1], dtype=torch.int8)
    for cdt in (torch.float32, torch.float64):
        top = score_select(
            emb, rows, ids, offsets, W, bias, kind, None, 1.0, 5, backend="torch", compute_dtype=cdt
        )
        assert top.scores.dtype == torch.float32 and top.ids.dtype == torch.int64
        assert top.counts.tolist() == [5, 5]


# ------------------------------------------------------------------------------------------ pool, driver
def test_an_empty_lookup_gives_int64_ids_and_float32_similarities() -> None:
    """``NeighborCache.lookup([])``: (0, k) float32 and (0, k) int64, like any lookup (kills
    ``NeighborCache.lookup`` mutant 16)."""
    from seals_gpu.pool import NeighborCache

    cache = NeighborCache(3)
    for ids in ([], np.empty(0, np.int64)):
        D, I = cache.lookup(ids)
        assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (0, 3)


@pytest.mark.parametrize(("n_train", "most"), [(50, 49), (2, 1), (1, 1)])
def test_a_k_above_the_train_rows_names_the_largest_k_that_fits(n_train: int, most: int) -> None:
    """``--k`` larger than the other train rows is refused, naming the largest k that fits (kills
    ``check_k`` mutant 14)."""
    from types import SimpleNamespace

    from seals_gpu.driver import check_k
    from seals_gpu.planner import SearchPlan

    plan = SearchPlan("flat", "test")
    with pytest.raises(ConfigError, match=rf"lower --k to at most {most}$"):
        check_k(SimpleNamespace(k=n_train), plan, n_train)  # check_k reads only the config's k
    if n_train > 1:
        check_k(SimpleNamespace(k=n_train - 1), plan, n_train)  # fits


def test_default_iteration_and_tolerance_limits_follow_the_solver() -> None:
    """Unset ``max_iter``/``tol`` take the chosen solver's defaults (Newton: 50 steps; L-BFGS: 1000) (kills
    ``_check_config`` mutant 12)."""
    from seals_gpu import learner

    newton = learner._check_config("newton", 1.0, None, None, 2)
    lbfgs = learner._check_config("lbfgs", 1.0, None, None, 2)
    assert newton == (learner._NEWTON_MAX_ITER, learner._NEWTON_TOL, 2) and newton[0] == 50
    assert lbfgs == (learner._LBFGS_MAX_ITER, learner._LBFGS_TOL, 2) and lbfgs[0] == 1000
    assert learner._check_config("newton", 1.0, 7, 1e-3, 1) == (7, 1e-3, 1)


def test_asking_for_the_cuda_kernel_where_it_cannot_run_names_every_reason() -> None:
    """``backend="cuda"`` on CPU float64 data with a float64 compute dtype: one ConfigError listing each
    reason (kills ``_use_cuda`` mutant 24 and its siblings)."""
    from seals_gpu.scoring import score_select

    emb = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    rows = torch.arange(6)
    args = (
        emb,
        rows,
        rows,
        torch.tensor([0, 6]),
        torch.randn(1, 4),
        torch.zeros(1),
        torch.tensor([0], dtype=torch.int8),
    )
    with pytest.raises(ConfigError) as e:
        score_select(*args, None, 1.0, 2, backend="cuda", compute_dtype=torch.float64)
    msg = str(e.value)
    assert msg.startswith("backend='cuda' is not usable: emb is on cpu, not a cuda device; ")
    assert "emb dtype torch.float64 (the kernel reads float32 or float16)" in msg
    assert "compute_dtype=torch.float64 (the kernel computes in float32)" in msg
    assert msg.endswith("; use backend='torch' or 'auto'")


def test_json_outputs_are_sorted_indented_and_end_with_a_newline(tmp_path) -> None:
    """Run files written with ``write_json`` read well in a terminal and diff well: two-space indent, sorted
    keys, numpy scalars as numbers, a final newline (kills ``write_json`` mutants 5 and 9)."""
    import json

    from seals_gpu.atomic import write_json

    obj = {"b": [1, 2], "a": {"y": np.int64(3), "x": np.float32(0.5)}}
    write_json(tmp_path / "f.json", obj)
    text = (tmp_path / "f.json").read_text()
    assert text == '{\n  "a": {\n    "x": 0.5,\n    "y": 3\n  },\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads(text) == {"a": {"x": 0.5, "y": 3}, "b": [1, 2]}


def test_a_shard_split_with_one_flag_per_id_missing_is_refused() -> None:
    from seals_gpu.split import ShardSplit

    with pytest.raises(ValueError, match=r"is_test has shape \(2,\), ids \(3,\); give one per id"):
        ShardSplit(np.arange(3), np.array([True, False]))


def test_shape_and_order_errors_of_shards_and_merges_say_what_is_wrong() -> None:
    """Two unsorted ids are refused like any unsorted shard; non-finite queries and mismatched D/I get their
    own one-line messages (kills ``IndexShard.__init__`` mutant 15, ``_check_queries`` mutant 17,
    ``sort_neighbors`` mutant 14)."""
    from seals_gpu.index.merge import sort_neighbors

    x = _unit(2, 4)
    with pytest.raises(IndexError_, match="shard ids must be unique and sorted ascending"):
        IndexShard(np.array([5, 3], dtype=np.int64), x, kind="flat")
    with pytest.raises(IndexError_, match="shard ids must be unique and sorted ascending"):
        IndexShard(np.array([4, 4], dtype=np.int64), x, kind="flat")
    IndexShard(np.array([7], dtype=np.int64), x[:1], kind="flat")  # one id is sorted
    shard = IndexShard(np.array([3, 5], dtype=np.int64), x, kind="flat")
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(
        IndexError_, match=r"^queries contain NaN or inf; pass finite, l2-normalised vectors$"
    ):
        shard.search(bad, 1)
    with pytest.raises(ValueError, match=r"^D has shape \(2, 3\) but I has \(2, 2\); they must match$"):
        sort_neighbors(np.zeros((2, 3), np.float32), np.zeros((2, 2), np.int64), 2)


def test_a_hessian_that_no_nudge_can_factor_raises_instead_of_looping() -> None:
    """A non-finite curvature (which validated inputs never produce) ends the jitter loop with one clear
    error, not an endless loop or a NaN factor (kills ``_hessian_cholesky`` mutant 148)."""
    from seals_gpu.learner import _hessian_cholesky

    X = torch.ones(1, 3, 2, dtype=torch.float64)
    D = torch.tensor([[1.0, float("nan"), 1.0]], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"^Hessian factorisation failed$"):
        _hessian_cholesky(X, D, zero, zero)


def test_an_index_build_on_ray_without_a_session_says_how_to_open_one(tmp_path, monkeypatch) -> None:
    """``ray_fill`` outside a Ray session: one ConfigError naming the fix (kills ``ray_fill`` mutant 11).
    Whether another test left a session open in this process does not matter: Ray is asked, and says no."""
    ray = pytest.importorskip("ray")
    from seals_gpu.distributed import ray_fill

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(
        ConfigError, match=r"^ray_fill needs a Ray session; wrap the build in `with ray_session\(address\):`$"
    ):
        ray_fill([tmp_path / "shard-00000"], {"kind": "ivfpq"}, tmp_path / "trained.faiss")


@pytest.mark.parametrize(
    ("embedding", "holds"),
    [
        (pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.int32)), 2), "int32"),
        (pa.array([[1, 2], [3, 4], [5, 6], [7, 8]], type=pa.list_(pa.int64())), "int64"),
    ],
)
def test_integer_embeddings_are_refused_with_the_type_to_write(tmp_path, embedding, holds: str) -> None:
    """A store file whose embeddings are integers names what it holds and the type to write instead (kills
    ``_embedding_dim`` mutant 7 and its list twin)."""
    import pyarrow.parquet as pq

    from seals_gpu.store import Store

    (tmp_path / "s").mkdir()
    table = pa.table({"id": pa.array(np.arange(4, dtype=np.int64)), "embedding": embedding})
    pq.write_table(table, tmp_path / "s" / "part-00000.parquet")
    with pytest.raises(
        StoreError, match=rf"holds {holds}, expected .*; write embeddings as fixed_size_list<float32>\[d\]$"
    ):
        Store(tmp_path / "s")
