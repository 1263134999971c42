"""Properties of test AP where the data lives (seals_gpu/evaluate.py) that `make mutate` found untested.

As in tests/test_mutants.py, each test states one property a user relies on and names in its docstring the
mutants it kills (mutmut's names without the ``seals_gpu.`` prefix). Survivors that no test can observe are
listed with the reason in ``benchmarks/mutation_equivalent.json``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from seals_gpu import evaluate
from seals_gpu.metrics import choose_cut


class _Rows:
    """A minimal backend over in-memory test rows: pass 1 and pass 2 of evaluate.py, in blocks of
    ``block_rows``, single-threaded unless ``threads`` says otherwise."""

    def __init__(self, ids: np.ndarray, x: np.ndarray, block_rows: int = 64, threads: int = 1):
        order = np.argsort(ids)
        self.ids, self.x = ids[order], np.ascontiguousarray(x[order], np.float32)
        self.block_rows, self.threads = block_rows, threads

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.x[np.searchsorted(self.ids, ids)]

    def blocks(self):
        for b in range(0, self.ids.size, self.block_rows):
            yield self.ids[b : b + self.block_rows], torch.from_numpy(self.x[b : b + self.block_rows])

    def group_logits(self, groups, W, bias):
        return evaluate.group_logits(self.vectors, groups, W, bias)

    def test_counts(self, W, bias, thresholds, groups):
        return evaluate.count_blocks(self.blocks(), W, bias, thresholds, groups, threads=self.threads)


def _random_model(rng: np.random.Generator, units: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``units`` random float32 logistic models over ``d`` dimensions: ``(W (units, d), bias (units,))``."""
    W = torch.from_numpy(rng.normal(size=(units, d)).astype(np.float32))
    return W, torch.from_numpy(rng.normal(size=units).astype(np.float32))


def _random_rows(
    rng: np.random.Generator, n: int, d: int, block_rows: int
) -> tuple[np.ndarray, np.ndarray, _Rows]:
    """``n`` random float32 rows with shuffled ids, and a :class:`_Rows` over them."""
    x = rng.normal(size=(n, d)).astype(np.float32)
    ids = rng.permutation(n).astype(np.int64)
    return ids, x, _Rows(ids, x, block_rows=block_rows)


def _canonical(x: np.ndarray, W: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    """(units, rows) canonical float64 logits: the scores AP is defined on."""
    W64, b64 = W.double().numpy(), bias.double().numpy()
    return np.stack([evaluate.canonical_logits(x, W64[u], b64[u]) for u in range(W64.shape[0])])


def _brute_counts(rows: _Rows, W, bias, thresholds, groups) -> list[np.ndarray]:
    L = _canonical(rows.x, W, bias)
    pos = evaluate.unit_positives(groups, L.shape[0])
    out = []
    for u, t in enumerate(thresholds):
        keep = ~np.isin(rows.ids, pos[u])
        out.append(np.array([int((L[u][keep] >= v).sum()) for v in t], np.int64))
    return out


def _exact_dot(x: np.ndarray, w: np.ndarray, b: float) -> Fraction:
    return sum((Fraction(float(a)) * Fraction(float(c)) for a, c in zip(x, w, strict=True)), Fraction(b))


def _cancelling(rng, n: int, d: int, big: float = 2.0**20) -> tuple[np.ndarray, np.ndarray]:
    """Rows and a weight vector whose two first terms are +-``big`` and cancel: the logits are small while
    the partial sums are not, so the float64 product (any summation order) and the canonical pairwise sum
    round differently, by many ulps of the logit."""
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :2] = 1.0
    w = rng.normal(size=d).astype(np.float32)
    w[:2] = [big, -big]
    return x, w


# ------------------------------------------------------------------------------------------ error bound


@pytest.mark.parametrize(
    ("d", "scale", "b", "cancel"),
    [(1, 3.0, -2.0, False), (16, 0.01, 1.0e4, False), (64, 1.0e3, 0.5, False), (64, 1.0, 0.25, True)],
)
def test_error_bound_bounds_the_rounding_of_products_and_canonical_sums_and_is_tight(d, scale, b, cancel):
    """For every row, the float64 matrix product and the canonical sum are each within half of
    ``error_bound`` of the exact (rational) logit, so within the bound of one another (what makes a row
    outside the band decidable on the product); and the bound is not grossly loose (within 32x of the
    ``(d + 2) 2**-50`` relative bound), else every row near nothing would be re-scored. Covers d = 1, an
    intercept far larger than ``|x| |w|``, large weights, and cancelling terms whose roundings really differ
    (evaluate.x_error_bound__mutmut_1, _2, _3, _7, _9, _10)."""
    rng = np.random.default_rng(d)
    if cancel:
        x, w = _cancelling(rng, 300, d)
    else:
        x = rng.normal(size=(300, d)).astype(np.float32)
        w = (rng.normal(size=d) * scale).astype(np.float32)
    W, bias = torch.from_numpy(w[None, :]), torch.tensor([b], dtype=torch.float32)
    prod = evaluate.logits_of(torch.from_numpy(x).double(), W, bias)[0]
    canon = evaluate.canonical_logits(x, w.astype(np.float64), float(bias[0]))
    x_norm = float(np.linalg.norm(x.astype(np.float64), axis=1).max())
    w_norm = float(np.linalg.norm(w.astype(np.float64)))
    eps = evaluate.error_bound(d, x_norm, w_norm, float(bias[0]))
    S = x_norm * w_norm + abs(float(bias[0]))
    assert 0 < eps <= 2.0**-45 * (d + 2) * S
    exact = [_exact_dot(x[i], w, float(bias[0])) for i in range(x.shape[0])]
    err_prod = max(abs(float(Fraction(float(p)) - e)) for p, e in zip(prod, exact, strict=True))
    err_canon = max(abs(float(Fraction(float(c)) - e)) for c, e in zip(canon, exact, strict=True))
    assert err_prod <= eps / 2 and err_canon <= eps / 2
    assert np.abs(prod - canon).max() <= eps
    if cancel:  # the data does exercise the bound: the two sums disagree by far more than an ulp
        assert np.abs(prod - canon).max() > 1e4 * np.spacing(np.abs(canon).max())


def test_ap_is_exact_when_products_and_canonical_sums_round_differently():
    """Negatives that duplicate a positive tie with it on the canonical logits, but their float64 matrix
    products differ from the canonical sums by many ulps (cancelling terms): the band around each threshold
    must be wide enough to catch them, so the AP still equals scikit-learn's on the canonical logits
    (evaluate.x_error_bound__mutmut_1, _10)."""
    rng = np.random.default_rng(11)
    d, n_pos = 64, 40
    x, w = _cancelling(rng, 600, d)
    x[n_pos : 3 * n_pos] = np.tile(x[:n_pos], (2, 1))  # two duplicates of every positive among the negatives
    ids = rng.permutation(x.shape[0]).astype(np.int64) * 7 - 1000
    rows = _Rows(ids, x, block_rows=128)
    W = torch.from_numpy(w[None, :])
    bias = torch.tensor([0.125])
    prod = evaluate.logits_of(torch.from_numpy(x).double(), W, bias)[0]
    canon = _canonical(x, W, bias)[0]
    dup = slice(n_pos, 3 * n_pos)
    assert (prod[dup] < np.nextafter(np.nextafter(canon[dup], -np.inf), -np.inf)).sum() >= 5  # premise
    pos = np.sort(ids[:n_pos])
    got = evaluate.evaluate_ap(rows, W, bias, [(np.array([0]), pos)])
    y = np.isin(ids, pos)
    assert got[0] == pytest.approx(average_precision_score(y, canon), abs=1e-12)


def test_well_separated_logits_take_the_fast_path_and_rescore_nothing(monkeypatch):
    """With no test row anywhere near a positive's score (random vectors, no duplicates), counting is one
    comparison pass per block: no banded search and no canonical re-score of any row in pass 2 (the cost a
    user pays grows with the rows inside the error band, which is ~1e-13 relative), and the counts are
    exact (evaluate.x_error_bound__mutmut_2, _7; x_count_blocks; x_Block.count__mutmut_21, _37, _38)."""
    rng = np.random.default_rng(3)
    n, d = 3000, 32
    ids, x, rows = _random_rows(rng, n, d, block_rows=700)
    W, bias = _random_model(rng, 3, d)
    groups = [(np.array([0, 2]), np.sort(ids[:50])), (np.array([1]), np.sort(ids[50:53]))]
    thresholds = evaluate.thresholds_of(groups, rows.group_logits(groups, W, bias), 3)
    calls = {"banded": 0, "canonical": 0}
    real_banded, real_canonical = evaluate.banded_counts, evaluate.canonical_logits

    def banded(*a):
        calls["banded"] += 1
        return real_banded(*a)

    def canonical(*a):
        calls["canonical"] += 1
        return real_canonical(*a)

    monkeypatch.setattr(evaluate, "banded_counts", banded)
    monkeypatch.setattr(evaluate, "canonical_logits", canonical)
    got = rows.test_counts(W, bias, thresholds, groups)
    assert calls == {"banded": 0, "canonical": 0}
    monkeypatch.undo()
    want = _brute_counts(rows, W, bias, thresholds, groups)
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


# ------------------------------------------------------------------------------------- pass 1: groups


def test_group_logits_handles_groups_without_units_or_ids_and_fetches_only_what_it_scores():
    """One result per group, in order, each ``(len(units), len(ids))`` of canonical logits, also for a group
    with one unit, with no ids, or with no units (a concept whose units were all dropped); ``vectors_of`` is
    never asked for a group that scores nothing (in the Ray backend it is a remote fetch)
    (evaluate.x_group_logits__mutmut_7, _11, _17)."""
    rng = np.random.default_rng(0)
    ids = np.arange(10, dtype=np.int64) * 5
    x = rng.normal(size=(10, 6)).astype(np.float32)
    rows = _Rows(ids, x)
    W, bias = _random_model(rng, 4, 6)
    groups = [
        (np.array([0]), np.empty(0, np.int64)),
        (np.array([1, 2]), ids[[1, 4, 7]]),
        (np.empty(0, np.int64), ids[[2, 3]]),
        (np.array([3]), ids[[0, 9]]),
    ]
    asked = []

    def vectors_of(q):
        asked.append(q.tolist())
        return rows.vectors(q)

    got = evaluate.group_logits(vectors_of, groups, W, bias)
    assert [g.shape for g in got] == [(1, 0), (2, 3), (0, 2), (1, 2)]
    L = _canonical(x, W, bias)
    assert np.array_equal(got[1], L[[1, 2]][:, [1, 4, 7]])
    assert np.array_equal(got[3], L[[3]][:, [0, 9]])
    assert asked == [ids[[1, 4, 7]].tolist(), ids[[0, 9]].tolist()]


def test_thresholds_of_refuses_pass1_results_that_do_not_match_the_groups():
    """A pass-1 result list shorter than the groups (a shard that lost a group) is an error, not units
    silently scored NaN (evaluate.x_thresholds_of__mutmut_10, _13, _14)."""
    groups = [(np.array([0]), np.array([1, 2])), (np.array([1]), np.array([3]))]
    with pytest.raises(ValueError):
        evaluate.thresholds_of(groups, [np.array([[0.5, 0.1]])], 2)


def test_a_unit_in_no_group_has_no_positives_and_a_nan_ap():
    """A unit that no group names (its concept has no test positive listed) has no positives and no
    thresholds, and its AP is NaN, not a number made up from an unset threshold; while its rows still
    count for a caller who passes it thresholds (evaluate.x_unit_positives__mutmut_1, _6;
    x_thresholds_of__mutmut_7)."""
    groups = [(np.array([0, 2]), np.array([4, 8], np.int64))]
    pos = evaluate.unit_positives(groups, 4)
    assert [p.tolist() for p in pos] == [[4, 8], [], [4, 8], []]
    t = evaluate.thresholds_of(groups, [np.array([[0.5, -0.25], [1.0, 2.0]])], 4)
    assert [v.tolist() for v in t] == [[-0.25, 0.5], [], [1.0, 2.0], []]

    rng = np.random.default_rng(1)
    ids = np.arange(12, dtype=np.int64) * 4
    x = rng.normal(size=(12, 5)).astype(np.float32)
    rows = _Rows(ids, x, block_rows=5)
    W = torch.from_numpy(rng.normal(size=(4, 5)).astype(np.float32))
    bias = torch.zeros(4)
    ap = evaluate.evaluate_ap(rows, W, bias, groups)
    assert np.isnan(ap[[1, 3]]).all() and not np.isnan(ap[[0, 2]]).any()
    # unit 1 in no group, given thresholds by hand: every row counts (none is set aside)
    thr = [np.empty(0), np.sort(_canonical(x, W, bias)[1][[0, 5]]), np.empty(0), np.empty(0)]
    got = evaluate.count_blocks(rows.blocks(), W, bias, thr, groups, threads=1)
    assert np.array_equal(got[1], _brute_counts(rows, W, bias, thr, groups)[1])


# -------------------------------------------------------------------------------------- pass 2: counts


def test_count_blocks_counts_every_block_whatever_its_size_into_int64_totals():
    """Blocks come as the backend cuts them: empty ones (a shard without test rows) and single rows among
    them; every row is counted once, and the counts are integers that add into the int64 totals the Ray
    backend sums shards into (evaluate.x_count_blocks__mutmut_11, _13, _43, _44)."""
    rng = np.random.default_rng(4)
    n, d = 40, 8
    x = rng.normal(size=(n, d)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) * 3
    rows = _Rows(ids, x)
    W, bias = _random_model(rng, 2, d)
    groups = [(np.array([0]), ids[[3, 17, 30]]), (np.array([1]), ids[[0, 39]])]
    thresholds = evaluate.thresholds_of(groups, rows.group_logits(groups, W, bias), 2)
    cuts = [0, 0, 1, 1, 2, 9, 9, 10, 25, 26, 40]  # sizes 0, 1, 0, 1, 7, 0, 1, 15, 1, 14
    blocks = [(ids[a:b], torch.from_numpy(x[a:b])) for a, b in zip(cuts, cuts[1:], strict=False)]
    got = evaluate.count_blocks(iter(blocks), W, bias, thresholds, groups, threads=1)
    want = _brute_counts(rows, W, bias, thresholds, groups)
    total = [np.zeros(t.size, np.int64) for t in thresholds]
    for u, c in enumerate(got):
        total[u] += c  # what RayBackend.test_counts does with each shard's counts
    assert all(np.array_equal(a, b) for a, b in zip(total, want, strict=True))


class _SpyPool:
    """ThreadPoolExecutor that records its size and how many jobs went through ``map``."""

    made: list = []
    mapped = 0

    def __init__(self, n):
        _SpyPool.made.append(n)
        self._pool = ThreadPoolExecutor(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown()

    def map(self, fn, jobs):
        jobs = list(jobs)
        _SpyPool.mapped += len(jobs)
        return self._pool.map(fn, jobs)


def test_count_blocks_uses_as_many_threads_as_asked_and_none_for_one(monkeypatch):
    """``threads=1`` counts in the calling thread (no pool: e.g. inside a Ray actor given one CPU),
    ``threads=k > 1`` counts the units on a pool of exactly k threads, the default is torch's thread count;
    the counts are the same every way (evaluate.x_count_blocks__mutmut_33, _35, _37-41, _83, _85-90)."""
    rng = np.random.default_rng(6)
    n, d = 500, 12
    ids, x, rows = _random_rows(rng, n, d, block_rows=128)
    W, bias = _random_model(rng, 5, d)
    groups = [(np.array([0, 1, 4]), np.sort(ids[:20])), (np.array([2, 3]), np.sort(ids[20:30]))]
    thresholds = evaluate.thresholds_of(groups, rows.group_logits(groups, W, bias), 5)
    want = _brute_counts(rows, W, bias, thresholds, groups)
    monkeypatch.setattr(evaluate, "ThreadPoolExecutor", _SpyPool)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    for threads, pools in ((1, []), (2, [2]), (None, [3])):
        _SpyPool.made, _SpyPool.mapped = [], 0
        got = evaluate.count_blocks(rows.blocks(), W, bias, thresholds, groups, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
        assert _SpyPool.made == pools
        assert _SpyPool.mapped == (0 if threads == 1 else 5 * 4)  # 5 units x 4 blocks, all on the pool


# ------------------------------------------------------------------------------------ banded counts


def test_banded_counts_without_thresholds_or_with_one_row():
    """No bounds: nothing to count, whatever the row; a single-row block is counted like any other
    (evaluate.x_banded_counts__mutmut_9, _13)."""
    n_hi, bands = evaluate.banded_counts(np.array([0.5, 1.0]), np.empty(0), np.empty(0))
    assert n_hi.tolist() == [] and bands == []
    n_hi, bands = evaluate.banded_counts(
        np.array([0.5]), np.array([0.1, 0.45, 0.6]), np.array([0.2, 0.55, 0.7])
    )
    assert n_hi.tolist() == [1, 0, 0] and [(j, r.tolist()) for j, r in bands] == [(1, [0])]


def test_banded_counts_lists_only_the_bands_that_hold_rows():
    """A band is listed only when some row lies in it: each listed band costs a host copy of the block and a
    canonical re-score in the count (a GPU-to-host transfer per block), so an empty one must not be listed;
    checked on both sides of the cut between comparison passes and the sorted tail
    (evaluate.x_banded_counts__mutmut_29, _66)."""
    rng = np.random.default_rng(2)
    row = rng.normal(size=20_000)
    lo = np.sort(np.r_[rng.choice(row, 3) - 3.0, rng.choice(row, 40)])  # three deep ones, below the cut
    lo[-1] = row.max() + 1.0  # a threshold above every row
    hi = np.maximum.accumulate(lo + rng.choice([0.0, 1e-9, 0.05], size=lo.size))
    assert 0 < choose_cut(row, lo) < lo.size  # premise: both ways of counting are used
    n_hi, bands = evaluate.banded_counts(row, lo, hi)
    assert np.array_equal(n_hi, [(row >= h).sum() for h in hi])
    assert all(r.size > 0 for _, r in bands)
    want = {j for j in range(lo.size) if ((row >= lo[j]) & (row < hi[j])).any()}
    assert {j for j, _ in bands} == want
