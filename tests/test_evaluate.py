"""Test AP where the data lives (seals_gpu/evaluate.py): exact against scikit-learn, whatever the shards, the
blocks or whether the test rows are kept; counts against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from seals_gpu import backend as backend_mod
from seals_gpu import evaluate
from seals_gpu.backend import LocalBackend
from seals_gpu.device import resolve_device
from seals_gpu.evaluate import evaluate_ap
from seals_gpu.index.build import IndexSpec, LocalIndex, build_index
from seals_gpu.metrics import ap_from_counts, count_at_or_above
from seals_gpu.store import write_store


@pytest.mark.parametrize("seed", range(6))
def test_count_at_or_above_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30_000))
    scores = rng.integers(-40, 40, size=n).astype(np.float32) / 8  # many ties
    if seed % 2:
        scores[rng.random(n) < 0.1] = -np.inf  # set-aside rows count nowhere
    t = np.sort(rng.choice(scores[np.isfinite(scores)], size=int(rng.integers(1, 300))))
    t[-1] = max(t[-1], 100.0) if seed == 3 else t[-1]  # a threshold above every score
    want = np.array([(scores >= v).sum() for v in t])
    assert np.array_equal(count_at_or_above(scores, t), want)
    # additive over any split of the rows (blocks, shards)
    cut = int(rng.integers(0, n + 1))
    parts = count_at_or_above(scores[:cut], t) + count_at_or_above(scores[cut:], t)
    assert np.array_equal(parts, want)


def test_ap_from_counts_with_tied_positives_equals_scikit_learn() -> None:
    s = np.array([3, 3, 2, 2, 2, 1, 0, 0], np.float64)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    t = np.sort(s[y])
    others = np.array([(s[~y] >= v).sum() for v in t])
    assert ap_from_counts(t, others) == pytest.approx(average_precision_score(y, s), abs=1e-15)
    assert np.isnan(ap_from_counts(np.empty(0), np.empty(0, np.int64)))


def _exact_store(tmp_path, seed: int, n: int = 3000, d: int = 12, min_pos: int = 1):
    """Vectors of +-1/2 entries and small-integer weights: every logit is exact in float32 whatever the order of additions,
    so AP computed anywhere must equal scikit-learn's to the last bit (and ties are plentiful)."""
    rng = np.random.default_rng(seed)
    # any int64 is an id: negatives, huge values, unsorted
    ids = np.unique(rng.integers(-(2**63), 2**63 - 1, size=n + 64, dtype=np.int64))[:n]
    ids[:2] = [-(2**63), 2**63 - 1]  # the ends of the range
    ids = rng.permutation(np.unique(ids))
    n = ids.size
    x = np.zeros((n, d), np.float32)  # four entries of +-1/2 per row: unit length, exact in float32
    for i in range(n):
        x[i, rng.choice(d, size=4, replace=False)] = rng.choice([-0.5, 0.5], size=4)
    split = np.where(rng.random(n) < 0.3, "test", "train")
    n_concepts = 5
    labels: list[list[int]] = [[] for _ in range(n)]
    for c in range(n_concepts - 1):  # the last concept has no positive at all
        for m in rng.choice(n, size=int(rng.integers(min_pos, 60)), replace=False):
            labels[m].append(c)
    store = write_store(tmp_path / "store", ids, x, labels=labels, split=split, normalize=False)
    return store, ids, x, split == "test", labels, n_concepts


def _reference(ids, x, is_test, labels, W, b, units_concept):
    xt = x[is_test].astype(np.float64)
    logits = xt @ W.T.astype(np.float64) + b.astype(np.float64)
    out = []
    for u, c in enumerate(units_concept):
        y = np.array([c in labels[i] for i in np.flatnonzero(is_test)])
        out.append(average_precision_score(y, logits[:, u]) if y.any() else np.nan)
    return np.array(out)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shards,kept", [(1, True), (3, True), (3, False)])
def test_evaluate_ap_equals_scikit_learn(tmp_path, monkeypatch, seed: int, shards: int, kept: bool) -> None:
    store, ids, x, is_test, labels, n_concepts = _exact_store(tmp_path, seed)
    if not kept:  # test rows gathered block by block, blocks smaller than a shard
        monkeypatch.setattr(backend_mod, "CANDIDATE_CACHE_BYTES", 0)
        monkeypatch.setattr(backend_mod, "TEST_BLOCK_ROWS", 97)
    monkeypatch.setattr(evaluate, "AP_UNITS", 4)  # several unit chunks
    index = (
        build_index(store, tmp_path / "idx", IndexSpec(kind="flat", shards=shards))
        if shards > 1
        else LocalIndex.in_memory(store)
    )
    test_ids = np.sort(ids[is_test])
    be = LocalBackend(index, resolve_device("cpu"), excluded=test_ids)
    rng = np.random.default_rng(100 + seed)
    units_concept = [c for c in range(n_concepts) for _ in range(2)]  # two units per concept
    W = rng.integers(-2, 3, size=(len(units_concept), x.shape[1])).astype(np.float32)
    b = rng.integers(-2, 3, size=len(units_concept)).astype(np.float32)
    groups = []
    for c in range(n_concepts):
        pos = np.sort(np.array([i for i, lab in zip(ids, labels, strict=True) if c in lab], np.int64))
        pos = pos[np.isin(pos, test_ids)]
        groups.append((np.array([u for u, cc in enumerate(units_concept) if cc == c], np.int64), pos))
    got = evaluate_ap(be, torch.from_numpy(W), torch.from_numpy(b), groups)
    want = _reference(ids, x, is_test, labels, W, b, units_concept)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.abs(got[ok] - want[ok]).max() <= 1e-12


def test_driver_records_the_same_ap_as_scikit_learn(tmp_path) -> None:
    """Through a run: every recorded test AP equals scikit-learn's on the unit's final model."""
    from seals_gpu.driver import run

    store, ids, x, is_test, labels, _ = _exact_store(tmp_path, 7, n=2500, d=8, min_pos=40)
    r = run(store, tmp_path / "run", concepts=[0, 1], strategies=("maxent", "random"), budget=200, batch=50)
    last = [m for m in r.metrics if m["round"] == r.round]
    xt = x[is_test].astype(np.float32)
    test_labels = [labels[i] for i in np.flatnonzero(is_test)]
    for u in r.units:
        logits = xt.astype(np.float64) @ r.model.W[u.index].double().numpy() + float(r.model.b[u.index])
        y = np.array([u.concept in lab for lab in test_labels])
        got = next(
            m["test_ap"]
            for m in last
            if (m["concept"], m["strategy"], m["mode"]) == (u.concept, u.strategy, u.mode)
        )
        assert got == pytest.approx(average_precision_score(y, logits), abs=1e-12)


def test_near_ties_are_decided_on_the_float64_logits(tmp_path, monkeypatch) -> None:
    """Exact duplicates of a positive among the negatives tie with it in float64 but may not in float32
    products of different shapes: the band re-scores them, and AP equals scikit-learn's on float64 logits."""
    rng = np.random.default_rng(5)
    n, d = 4000, 24
    base = rng.normal(size=(200, d)).astype(np.float32)
    x = base[rng.integers(0, 200, size=n)]  # every vector ~20 times: ties everywhere
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(n).astype(np.int64) * 3 - 5000
    split = np.where(rng.random(n) < 0.4, "test", "train")
    labels = [[0] if rng.random() < 0.05 else [] for _ in range(n)]
    store = write_store(tmp_path / "s", ids, x, labels=labels, split=split)
    test_ids = np.sort(ids[split == "test"])
    be = LocalBackend(LocalIndex.in_memory(store), resolve_device("cpu"), excluded=test_ids)
    xs = be.vectors(test_ids)
    W = torch.from_numpy(rng.normal(size=(3, d)).astype(np.float32))
    b = torch.from_numpy(rng.normal(size=3).astype(np.float32))
    pos = np.sort(ids[[bool(lab) for lab in labels]])
    pos = pos[np.isin(pos, test_ids)]
    calls = []
    real = evaluate.canonical_logits
    monkeypatch.setattr(evaluate, "canonical_logits", lambda *a: calls.append(1) or real(*a))
    got = evaluate_ap(be, W, b, [(np.arange(3), pos)])
    y = np.isin(test_ids, pos)
    for u in range(3):
        want = average_precision_score(y, xs.astype(np.float64) @ W[u].double().numpy() + float(b[u]))
        assert got[u] == pytest.approx(want, abs=1e-12)
    assert len(calls) > 3  # pass 1 (one call per unit) and at least one band


def test_canonical_logits_do_not_depend_on_the_other_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 384)).astype(np.float32)
    w = rng.normal(size=384)
    all_rows = evaluate.canonical_logits(x, w, 0.25)
    for i in (0, 17, 999):
        assert evaluate.canonical_logits(x[i : i + 1], w, 0.25)[0] == all_rows[i]
        assert evaluate.canonical_logits(x[[i, 3, 5]], w, 0.25)[0] == all_rows[i]


@pytest.mark.parametrize("seed", range(5))
def test_banded_counts_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20_000))
    row = (rng.integers(-300, 300, size=n) / 16).astype(np.float32)
    row[rng.random(n) < 0.05] = -np.inf
    lo = np.sort(rng.choice(row[np.isfinite(row)], size=int(rng.integers(1, 200))))
    hi = lo + rng.choice([0.0, 0.0625, 0.5], size=lo.size).astype(np.float32)
    hi = np.maximum.accumulate(hi)  # ascending, each hi >= its lo
    n_hi, bands = evaluate.banded_counts(row, lo, hi)
    assert np.array_equal(n_hi, [(row >= h).sum() for h in hi])
    got = dict(bands)
    for j in range(lo.size):
        want = np.flatnonzero((row >= lo[j]) & (row < hi[j]))
        assert np.array_equal(np.sort(got.get(j, np.empty(0, np.int64))), want)
