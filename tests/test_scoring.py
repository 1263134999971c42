"""Tests of seals_gpu.scoring (CPU): the torch reference vs a float64 per-unit loop, ties, exclusion,
score_all vs concatenate-and-score, merge_topb algebra, validation messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seals_gpu import scoring
from seals_gpu.errors import ConfigError
from seals_gpu.scoring import TopB, merge_topb, score_all, score_select, strategy_scores


# ------------------------------------------------------------------------------------------------ helpers
def batch(seed: int, lens: list[int], *, N: int = 200, d: int = 16, kinds: list[int] | None = None) -> dict:
    """Random CSR batch; the second half of emb duplicates the first (equal scores, different ids)."""
    g = torch.Generator().manual_seed(seed)
    U = len(lens)
    emb = torch.nn.functional.normalize(torch.randn(N, d, generator=g), dim=1)
    emb[N // 2 :] = emb[: N - N // 2]
    off = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int64)
    M = int(off[-1])
    return dict(
        emb=emb,
        rows=torch.randint(0, N, (M,), generator=g),
        ids=torch.randperm(max(5 * M, 10), generator=g)[:M] + 100,
        offsets=off,
        W=2.0 * torch.randn(U, d, generator=g),
        bias=0.3 * torch.randn(U, generator=g),
        kind=torch.tensor(kinds if kinds is not None else [i % 3 for i in range(U)], dtype=torch.int8),
        ref=torch.nn.functional.normalize(torch.randn(U, d, generator=g), dim=1),
        beta=1.5,
    )


def args(bt: dict) -> tuple:
    return (
        bt["emb"],
        bt["rows"],
        bt["ids"],
        bt["offsets"],
        bt["W"],
        bt["bias"],
        bt["kind"],
        bt["ref"],
        bt["beta"],
    )


def naive_scores(bt: dict) -> list[list[tuple[float, int]]]:
    """Per unit, [(score, id)] with a plain float64 python loop: the oracle."""
    emb = bt["emb"].double().numpy()
    off = bt["offsets"].numpy()
    out = []
    for u in range(off.size - 1):
        w = bt["W"][u].double().numpy()
        r = bt["ref"][u].double().numpy()
        k = int(bt["kind"][u])
        res = []
        for i in range(off[u], off[u + 1]):
            x = emb[int(bt["rows"][i])]
            z = float(w @ x) + float(bt["bias"][u])
            p = 1.0 / (1.0 + math.exp(-z))
            h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
            s = p if k == 1 else h
            if k == 2:
                s = h * max(float(x @ r), 0.0) ** bt["beta"]
            res.append((s, int(bt["ids"][i])))
        out.append(res)
    return out


def check_against_naive(res: TopB, oracle: list[list[tuple[float, int]]], b: int, atol: float) -> None:
    """``res`` is a valid top-b within ``atol`` of the oracle, ordered (score desc, id asc)."""
    ids, sc, counts = res.numpy()
    for u, cand in enumerate(oracle):
        c = min(b, len(cand))
        assert counts[u] == c
        assert (ids[u, c:] == -1).all() and np.isneginf(sc[u, c:]).all()
        truth = dict((i, s) for s, i in cand)
        got = ids[u, :c]
        assert len(set(got.tolist())) == c and all(i in truth for i in got)
        got_truth = np.array([truth[i] for i in got])
        np.testing.assert_allclose(sc[u, :c], got_truth, atol=atol, rtol=0)
        best = np.array(sorted((s for s, _ in cand), reverse=True)[:c])
        np.testing.assert_allclose(got_truth, best, atol=atol, rtol=0)
        assert (np.diff(sc[u, :c]) <= 0).all()
        assert (np.diff(got)[np.diff(sc[u, :c]) == 0] > 0).all()


def exact_topb(cand: list[tuple[float, int]], b: int) -> list[int]:
    return [i for _, i in sorted(cand, key=lambda t: (-t[0], t[1]))[:b]]


# ---------------------------------------------------------------------------------------- strategy math
def test_strategy_scores_match_textbook_formulas() -> None:
    z = torch.linspace(-30, 30, 601, dtype=torch.float64)
    p = torch.sigmoid(z)
    h = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
    torch.testing.assert_close(strategy_scores(z, 0), h, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(strategy_scores(z, 1), p)
    sim = torch.linspace(-1, 1, 601, dtype=torch.float64)
    torch.testing.assert_close(
        strategy_scores(z, 2, sim, 2.0), h * sim.clamp_min(0) ** 2, atol=1e-12, rtol=1e-9
    )
    extreme = strategy_scores(torch.tensor([-1e4, -100.0, 100.0, 1e4]), 0)
    assert torch.isfinite(extreme).all() and (extreme >= 0).all()
    assert strategy_scores(torch.tensor([0.0]), 0).item() == pytest.approx(math.log(2))
    assert strategy_scores(torch.tensor([float("nan")]), 0).item() == float("-inf")
    with pytest.raises(ValueError, match="sim"):
        strategy_scores(z, 2)


# ----------------------------------------------------------------------------------------- score_select
@pytest.mark.parametrize("seed", [0, 1])
def test_score_select_torch_matches_naive_loop(seed: int) -> None:
    bt = batch(seed, [0, 1, 5, 40, 120, 9, 300])
    oracle = naive_scores(bt)
    for b in (1, 7, 50):
        check_against_naive(score_select(*args(bt), b, backend="torch"), oracle, b, atol=2e-6)
        r64 = score_select(*args(bt), b, backend="torch", compute_dtype=torch.float64)
        check_against_naive(r64, oracle, b, atol=1e-6)  # float32 output of float64 math
        # the float64 oracle path picks exactly the naive top-b (distinct scores are far apart in float64)
        for u, cand in enumerate(oracle):
            assert r64.unit(u)[0].tolist() == exact_topb(cand, b)


def test_score_select_auto_on_cpu_is_torch_and_cuda_is_refused() -> None:
    bt = batch(2, [10, 20])
    a = score_select(*args(bt), 4)
    t = score_select(*args(bt), 4, backend="torch")
    assert torch.equal(a.ids, t.ids) and torch.equal(a.scores, t.scores)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="backend='cuda'"):
            score_select(*args(bt), 4, backend="cuda")


def test_ties_resolve_to_lower_id() -> None:
    bt = batch(3, [30, 30, 30], kinds=[0, 1, 2])
    bt["rows"][:] = 7  # same row everywhere: all scores of a unit are equal
    res = score_select(*args(bt), 8, backend="torch", chunk_rows=11)
    ids = bt["ids"].numpy()
    for u in range(3):
        seg = ids[30 * u : 30 * (u + 1)]
        assert res.unit(u)[0].tolist() == np.sort(seg)[:8].tolist()


def test_tie_group_straddling_the_boundary() -> None:
    """The b-th and (b+1)-th candidates tie: the lower id wins, whatever the order and chunking."""
    bt = batch(4, [12], kinds=[0])
    bt["rows"] = torch.tensor([1, 2, 3, 3, 3, 3, 4, 5, 6, 7, 8, 9])
    bt["ids"] = torch.tensor([50, 51, 70, 60, 80, 65, 52, 53, 54, 55, 56, 57])
    oracle = naive_scores(bt)
    s3 = next(s for s, i in oracle[0] if i == 70)
    rank = sorted(oracle[0], key=lambda t: (-t[0], t[1]))
    pos = [i for _, i in rank].index(60)  # the first of the tie group
    b = pos + 2  # takes two of the four tied candidates: ids 60 and 65
    for chunk in (1, 3, 5, 100):
        got = score_select(*args(bt), b, backend="torch", chunk_rows=chunk).unit(0)
        assert got[0].tolist() == exact_topb(oracle[0], b)
        assert got[0].tolist()[-2:] == [60, 65] and got[1][-1] == pytest.approx(s3, abs=1e-6)


def test_chunking_does_not_change_the_result() -> None:
    bt = batch(5, [3, 0, 77, 140, 1])
    ref = score_select(*args(bt), 9, backend="torch")
    for chunk in (1, 2, 13, 64, 10_000):
        got = score_select(*args(bt), 9, backend="torch", chunk_rows=chunk)
        assert torch.equal(got.ids, ref.ids) and torch.equal(got.counts, ref.counts)
        assert torch.equal(got.scores, ref.scores)  # each row is reduced the same way in any chunk


def test_fp16_embeddings() -> None:
    bt = batch(6, [20, 50, 7])
    bt16 = dict(bt, emb=bt["emb"].half())
    got = score_select(*args(bt16), 5, backend="torch")
    same = score_select(*args(dict(bt, emb=bt["emb"].half().float())), 5, backend="torch")
    assert torch.equal(got.ids, same.ids) and torch.equal(got.scores, same.scores)
    check_against_naive(got, naive_scores(bt), 5, atol=5e-3)  # fp16 rounding of the inputs


def test_empty_batch_and_empty_units() -> None:
    bt = batch(7, [0, 0])
    res = score_select(*args(bt), 3, backend="torch")
    assert res.counts.tolist() == [0, 0] and (res.ids == -1).all() and torch.isinf(res.scores).all()
    assert res.scores.dtype == torch.float32 and res.ids.dtype == torch.int64


def test_score_candidates_matches_naive() -> None:
    bt = batch(8, [4, 0, 30])
    s = scoring.score_candidates(
        bt["emb"],
        bt["rows"],
        bt["offsets"],
        bt["W"],
        bt["bias"],
        bt["kind"],
        bt["ref"],
        bt["beta"],
        chunk_rows=5,
    )
    flat = [sc for unit in naive_scores(bt) for sc, _ in unit]
    np.testing.assert_allclose(s.numpy(), flat, atol=2e-6)


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        (dict(b=0), ConfigError, "b=0"),
        (dict(beta=-1.0), ConfigError, "beta"),
        (dict(backend="gpu"), ConfigError, "backend='gpu'"),
        (dict(offsets=torch.tensor([0, 9, 5, 30])), ValueError, r"offsets\[1\]=9 > offsets\[2\]=5"),
        (dict(offsets=torch.tensor([0, 5, 10, 29])), ValueError, "end at M=30"),
        (dict(offsets=torch.tensor([0, 30])), ValueError, r"shape \(4,\)"),
        (dict(rows=torch.full((30,), 500)), ValueError, "row 500"),
        (dict(ids=torch.zeros(29, dtype=torch.int64)), ValueError, "ids must have the shape"),
        (dict(W=torch.zeros(3, 5)), ValueError, "dimension 5"),
        (dict(bias=torch.zeros(2)), ValueError, r"bias must have shape \(3,\)"),
        (dict(kind=torch.tensor([0, 4, 1], dtype=torch.int8)), ValueError, r"kind values \[4\]"),
        (dict(ref=None), ValueError, "kind 2"),
        (dict(ref=torch.zeros(3, 3)), ValueError, "ref must have shape"),
        (dict(compute_dtype=torch.float16), ConfigError, "compute_dtype"),
    ],
)
def test_validation_messages_name_the_bad_value(change: dict, exc: type, match: str) -> None:
    bt = batch(9, [5, 5, 20])
    kw = dict(
        emb=bt["emb"], rows=bt["rows"], ids=bt["ids"], offsets=bt["offsets"], W=bt["W"], bias=bt["bias"],
        kind=bt["kind"], ref=bt["ref"], beta=bt["beta"], b=3,
    )  # fmt: skip
    kw.update(change)
    with pytest.raises(exc, match=match):
        score_select(**kw)


# -------------------------------------------------------------------------------------------- merge_topb
def _random_topb_parts(seed: int, U: int, n: int, parts: int, b: int):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    scores = rng.integers(0, 5, size=(U, n)).astype(np.float32)  # many ties
    cuts = np.sort(rng.choice(np.arange(1, n), size=parts - 1, replace=False))
    bounds = np.concatenate([[0], cuts, [n]])
    out = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        S = torch.from_numpy(scores[:, s:e])
        i = torch.from_numpy(ids[s:e])
        o = torch.argsort(i)
        out.append(scoring._rowwise_topb(S[:, o].contiguous(), i[o], b))
    whole_o = np.argsort(ids)
    whole = scoring._rowwise_topb(
        torch.from_numpy(scores[:, whole_o]).contiguous(), torch.from_numpy(ids[whole_o]), b
    )
    return out, whole, scores, ids


def _eq(a: TopB, c: TopB) -> bool:
    return torch.equal(a.ids, c.ids) and torch.equal(a.scores, c.scores) and torch.equal(a.counts, c.counts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_topb_is_associative_and_equals_global_topb(seed: int) -> None:
    b = 6
    (p, q, r), whole, scores, ids = _random_topb_parts(seed, U=4, n=40, parts=3, b=b)
    left = merge_topb(merge_topb(p, q, b), r, b)
    right = merge_topb(p, merge_topb(q, r, b), b)
    assert _eq(left, right)
    assert _eq(left, merge_topb(merge_topb(r, p, b), q, b))  # commutative too
    assert _eq(left, whole)
    for u in range(4):
        cand = list(zip(scores[u].tolist(), ids.tolist(), strict=True))
        assert left.unit(u)[0].tolist() == exact_topb(cand, b)


def test_merge_topb_widths_and_padding() -> None:
    a = TopB(torch.tensor([[5, -1]]), torch.tensor([[1.0, -math.inf]]), torch.tensor([1]))
    c = TopB(torch.tensor([[3]]), torch.tensor([[1.0]]), torch.tensor([1]))
    m = merge_topb(a, c, 4)
    assert m.ids.tolist() == [[3, 5, -1, -1]] and m.counts.tolist() == [2]
    assert merge_topb(TopB.empty(1, 3), TopB.empty(1, 2), 2).counts.tolist() == [0]
    with pytest.raises(ValueError, match="units"):
        merge_topb(TopB.empty(2, 1), TopB.empty(3, 1), 1)


# --------------------------------------------------------------------------------------------- score_all
def _pool(seed: int, n: int = 600, d: int = 16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = (rng.permutation(n) * 3 + 11).astype(np.int64)
    return ids, x


def _blocks(ids: np.ndarray, x: np.ndarray, size: int, as_torch: bool = False):
    for s in range(0, ids.size, size):
        if as_torch:
            yield torch.from_numpy(ids[s : s + size]), torch.from_numpy(x[s : s + size])
        else:
            yield ids[s : s + size], x[s : s + size]


@pytest.mark.parametrize("max_elems", [None, 50])
def test_score_all_equals_concatenate_and_score(max_elems: int | None) -> None:
    ids, x = _pool(0)
    U, d = 5, x.shape[1]
    g = torch.Generator().manual_seed(1)
    W, bias = 2 * torch.randn(U, d, generator=g), 0.2 * torch.randn(U, generator=g)
    kind = torch.tensor([0, 1, 2, 0, 2], dtype=torch.int8)
    ref = torch.nn.functional.normalize(torch.randn(U, d, generator=g), dim=1)
    rng = np.random.default_rng(2)
    exclude = [np.sort(rng.choice(ids, size=k, replace=False)) for k in (0, 5, 40, 1, 599)]
    exclude[0] = None
    b = 9
    got = score_all(_blocks(ids, x, 128), W, bias, kind, ref, 1.5, b, exclude=exclude, max_elems=max_elems)
    # the same through score_select over an explicit CSR batch of every non-excluded item per unit
    emb = torch.from_numpy(x)
    rows_l, ids_l = [], []
    for u in range(U):
        keep = np.ones(ids.size, bool) if exclude[u] is None else ~np.isin(ids, exclude[u])
        rows_l.append(np.flatnonzero(keep))
        ids_l.append(ids[keep])
    off = torch.tensor(np.concatenate([[0], np.cumsum([r.size for r in rows_l])]))
    rows, cids = torch.from_numpy(np.concatenate(rows_l)), torch.from_numpy(np.concatenate(ids_l))
    bt = dict(emb=emb, rows=rows, ids=cids, offsets=off, W=W, bias=bias, kind=kind, ref=ref, beta=1.5)
    check_against_naive(got, naive_scores(bt), b, atol=2e-6)
    ref_sel = score_select(*args(bt), b, backend="torch", compute_dtype=torch.float64)
    got64 = score_all(
        _blocks(ids, x, 100, as_torch=True), W, bias, kind, ref, 1.5, b, exclude=exclude,
        compute_dtype=torch.float64, max_elems=max_elems,
    )  # fmt: skip
    assert torch.equal(got64.ids, ref_sel.ids) and torch.equal(got64.counts, ref_sel.counts)
    assert got.counts.tolist() == [b, b, b, b, 1]  # unit 4 excluded all but one item
    for u in range(U):
        if exclude[u] is not None:
            assert not np.isin(got.unit(u)[0], exclude[u]).any()


def test_score_all_ties_and_block_order() -> None:
    """All scores equal (w = 0): every unit gets the b smallest non-excluded ids, whatever the blocking."""
    ids, x = _pool(3, n=300)
    U, d = 3, x.shape[1]
    W, bias = torch.zeros(U, d), torch.zeros(U)
    kind = torch.tensor([0, 1, 2], dtype=torch.int8)
    ref = torch.zeros(U, d)
    exclude = [np.sort(ids)[:4], None, np.sort(ids)[1:2]]
    expect = [np.sort(ids)[4:14], np.sort(ids)[:10], np.delete(np.sort(ids), 1)[:10]]
    for size in (7, 64, 300):
        got = score_all(_blocks(ids, x, size), W, bias, kind, ref, 1.0, 10, exclude=exclude)
        for u in range(U):
            assert got.unit(u)[0].tolist() == expect[u].tolist()
    assert got.scores[0, 0].item() == pytest.approx(math.log(2))


def test_score_all_validation() -> None:
    ids, x = _pool(4, n=20)
    W, bias, kind = torch.zeros(2, 16), torch.zeros(2), torch.zeros(2, dtype=torch.int8)
    with pytest.raises(ValueError, match="block 0"):
        score_all([(ids, x[:, :8])], W, bias, kind, None, 1.0, 3)
    with pytest.raises(ValueError, match="one id array per unit"):
        score_all([(ids, x)], W, bias, kind, None, 1.0, 3, exclude=[ids])
    with pytest.raises(ConfigError, match="b=0"):
        score_all([(ids, x)], W, bias, kind, None, 1.0, 0)
    empty = score_all([], W, bias, kind, None, 1.0, 3)
    assert empty.counts.tolist() == [0, 0]


def overlapping_pools(
    seed: int, N: int, d: int, U: int, *, span: int, first: int, step: int, w_scale: float = 20.0
):
    """A CSR batch whose U sorted pools (``first + step * u`` of the rows below ``span``) overlap heavily,
    as one concept's strategies do: ``(emb, rows, ids, offsets, W, bias, kind, ref)``; kinds cycle mlp,
    maxent, id."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(N, d, generator=g), dim=1)
    pools = [torch.sort(torch.randperm(span, generator=g)[: first + step * u]).values for u in range(U)]
    rows = torch.cat(pools)
    ids = rows * 5 + 3
    off = torch.tensor([0] + [int(p.numel()) for p in pools]).cumsum(0)
    W = torch.randn(U, d, generator=g) * w_scale
    bias = torch.randn(U, generator=g)
    kind = torch.tensor([1, 0, 2] * (U // 3), dtype=torch.int8)
    ref = torch.nn.functional.normalize(torch.randn(U, d, generator=g), dim=1)
    return emb, rows, ids, off, W, bias, kind, ref


@pytest.mark.parametrize("N", [3000, 40_000, 60_000])  # all rows / bitmap plan / sorted plan
def test_dense_union_path_equals_reference_on_separated_scores(N):
    """The CPU union-GEMM fast path (auto) selects what the per-row reference selects; scores agree to
    float rounding. Scores are well separated here (mlp on a wide logit range) so rounding cannot reorder."""
    from seals_gpu import scoring

    U = 9
    emb, rows, ids, off, W, bias, kind, ref = overlapping_pools(11, N, 32, U, span=2000, first=400, step=50)
    plan = scoring._dense_profitable(rows, ids, off.numpy(), U, N)
    assert plan is not None, "this batch should take the dense path"
    assert (plan[0] is None) == (N == 3000), "a small matrix is scored whole, a large one by its used rows"
    n0 = int(off[1])  # one unit: nothing is shared, the per-row path is taken
    assert scoring._dense_profitable(rows[:n0], ids[:n0], np.array([0, n0]), 1, N) is None
    fast = scoring.score_select(emb, rows, ids, off, W, bias, kind, ref, 1.0, 37, backend="auto")
    slow = scoring.score_select(emb, rows, ids, off, W, bias, kind, ref, 1.0, 37, backend="torch")
    mlp = kind == 1
    assert torch.equal(fast.ids[mlp], slow.ids[mlp])
    assert torch.equal(fast.counts, slow.counts)
    assert torch.allclose(fast.scores, slow.scores, atol=1e-5)
    # every unit: the selected ids are sorted by (score desc, id asc) and belong to the unit's pool
    for u in range(U):
        got = fast.ids[u, : int(fast.counts[u])]
        assert bool(torch.isin(got, ids[off[u] : off[u + 1]]).all())
        sc = fast.scores[u, : int(fast.counts[u])]
        assert bool((sc[1:] <= sc[:-1]).all())


@pytest.mark.parametrize("with_id", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_score_all_pruning_changes_nothing(seed, with_id, monkeypatch) -> None:
    """Units prune once they hold b items (MaxEnt/MLP by a logit bound from their b-th score; ID by the
    entropy bound and a floor on its density factor): same ids, scores and counts as the unpruned pass, bit
    for bit (ties, NaN rows, exclusions and saturated scores included), and the pruned path really runs."""
    from seals_gpu import scoring

    rng = np.random.default_rng(seed)
    n, d, U, b = 4000, 16, 6, 25
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[rng.choice(n, 5, replace=False)] = np.nan  # NaN rows score -inf
    dup = rng.choice(n, 40, replace=False)
    x[dup] = x[dup[0]]  # a block of exact ties
    ids = (rng.permutation(n) * 3 + 5).astype(np.int64)
    g = torch.Generator().manual_seed(seed)
    flat = seed % 2 == 1  # a unit with w = 0: every item ties, it keeps all its pairs (no pruning benefit)
    scale = torch.tensor([0.0 if flat else 8.0, 0.5, 4.0, 30.0, 4.0, 200.0])[:, None]  # mild .. saturated
    W = torch.randn(U, d, generator=g) * scale
    bias = torch.randn(U, generator=g) * 2 - 3
    kind = torch.tensor([2, 0, 2, 1, 2, 0] if with_id else [0, 0, 0, 1, 1, 0], dtype=torch.int8)
    ref = None
    beta = 1.0 + seed % 3 * 0.5
    if with_id:  # mean-like references of norm <= 1 (one of norm 1.5: its blocks are scored densely)
        W[[2, 4]] *= 4  # rare-concept-like: most items confidently negative
        ref = torch.nn.functional.normalize(torch.randn(U, d, generator=g), dim=1)
        ref = ref * torch.tensor([0.3, 1.0, 0.8, 1.0, 1.5 if flat else 1.0, 1.0])[:, None]
    exclude = [np.sort(rng.choice(ids, size=k, replace=False)) for k in (0, 30, 300, 7, 0, 50)]
    calls = []
    real = scoring._sparse_topb
    monkeypatch.setattr(scoring, "_sparse_topb", lambda *a: calls.append(1) or real(*a))
    for blk in (97, 500):
        got = score_all(_blocks(ids, x, blk), W, bias, kind, ref, beta, b, exclude=exclude, max_elems=600)
        monkeypatch.setattr(scoring, "_PRUNE", False)
        want = score_all(_blocks(ids, x, blk), W, bias, kind, ref, beta, b, exclude=exclude, max_elems=600)
        monkeypatch.setattr(scoring, "_PRUNE", True)
        assert torch.equal(got.counts, want.counts)
        assert torch.equal(got.ids, want.ids)
        assert torch.equal(got.scores, want.scores)
    assert calls or flat, "the pruned path never ran"
    for u in range(U):  # and the result is the top-b of the float64 reference (up to float32 near-ties)
        keep = ~np.isin(ids, exclude[u]) & ~np.isnan(x).any(axis=1)
        z = x[keep].astype(np.float64) @ W[u].double().numpy() + float(bias[u])
        s = 1 / (1 + np.exp(-z)) if kind[u] == 1 else strategy_scores(torch.from_numpy(z), 0).numpy()
        if kind[u] == 2:
            s = s * np.maximum(x[keep].astype(np.float64) @ ref[u].double().numpy(), 0.0) ** beta
        kth = np.sort(s)[::-1][b - 1]
        sel = got.unit(u)[1]
        assert sel.size == b and sel.min() >= kth * (1 - 1e-5) - 1e-12
