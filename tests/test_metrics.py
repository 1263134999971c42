"""Average precision against scikit-learn (ties included) and recall."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from seals_gpu.metrics import average_precision, average_precision_many, recall


def _sk(y: np.ndarray, s: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(average_precision_score(y, s))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=200),
    levels=st.integers(min_value=1, max_value=1000),
    frac=st.floats(min_value=0.0, max_value=1.0),
    f32=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_average_precision_equals_sklearn(n: int, levels: int, frac: float, f32: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < frac
    # Few levels -> many tied scores; many levels -> mostly distinct.
    s = rng.integers(0, levels, n) / levels
    s = s.astype(np.float32) if f32 else s
    ours = average_precision(y, s)
    if not y.any():
        assert math.isnan(ours)
        return
    assert ours == _sk(y, s)  # bit-identical
    many = average_precision_many(y[None], s[None])
    assert abs(many[0] - ours) <= 1e-12


def test_ties_by_hand() -> None:
    # Scores: 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (pos). Thresholds: 0.9 -> P=1, R=1/3;
    # 0.5 -> P=2/3, R=2/3; 0.1 -> P=3/4, R=1. AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4.
    y = np.array([1, 1, 0, 1])
    s = np.array([0.9, 0.5, 0.5, 0.1])
    expected = (1 + 2 / 3 + 3 / 4) / 3
    assert average_precision(y, s) == pytest.approx(expected, abs=1e-15)
    assert average_precision(y, s) == _sk(y, s)
    # Order inside a tie does not matter.
    assert average_precision(y[[0, 2, 1, 3]], s[[0, 2, 1, 3]]) == average_precision(y, s)
    # All scores tied: AP is the positive rate.
    assert average_precision(y, np.zeros(4)) == pytest.approx(0.75)


def test_average_precision_many_matches_rows() -> None:
    rng = np.random.default_rng(3)
    U, N = 30, 257
    y = rng.random((U, N)) < rng.random((U, 1)) * 0.2
    y[0] = False  # a row without positives
    s = np.round(rng.random((U, N)), 2)  # ties
    many = average_precision_many(y, s)
    assert math.isnan(many[0])
    for u in range(1, U):
        assert abs(many[u] - _sk(y[u], s[u])) <= 1e-12
    # torch input and integer labels
    many_t = average_precision_many(torch.from_numpy(y.astype(np.int64)), torch.from_numpy(s))
    np.testing.assert_array_equal(many_t, many)
    assert average_precision_many(np.zeros((2, 0), bool), np.zeros((2, 0))).shape == (2,)


def test_average_precision_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        average_precision([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        average_precision([0, 2], [0.5, 0.1])
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0, 1], [0.5, float("nan")])
    with pytest.raises(ValueError, match="shape"):
        average_precision_many([0, 1], [0.5, 0.1])
    assert math.isnan(average_precision([], []))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert average_precision(torch.tensor([True, False]), torch.tensor([0.9, 0.1])) == 1.0


def test_recall() -> None:
    assert recall(3, 4) == 0.75
    assert isinstance(recall(3, 4), float)
    assert math.isnan(recall(0, 0))
    out = recall(np.array([0, 2, 0]), np.array([5, 2, 0]))
    np.testing.assert_array_equal(out[:2], [0.0, 1.0])
    assert math.isnan(out[2])
    with pytest.raises(ValueError, match="exceeds"):
        recall(5, 4)
    with pytest.raises(ValueError, match=">= 0"):
        recall(-1, 4)


def test_ap_rows_equals_scikit_learn_with_ties_and_rare_positives() -> None:
    """The O(N log P) row kernel (positives' thresholds, one binary search per score) equals scikit-learn's
    average precision, ties included, for rows with 0, 1, few or many positives."""
    from sklearn.metrics import average_precision_score

    from seals_gpu.metrics import ap_rows

    rng = np.random.default_rng(7)
    for trial in range(60):
        U, N = 4, int(rng.integers(1, 300))
        y = (rng.random((U, N)) < rng.uniform(0.005, 0.6)).astype(np.float64)
        y[0] = 0.0  # no positive: NaN
        y[1, : N // 2] = 0.0
        s = np.round(rng.standard_normal((U, N)), int(rng.integers(0, 3))).astype(np.float32)  # ties
        got = ap_rows(torch.from_numpy(y), torch.from_numpy(s))
        assert np.isnan(got[0])
        for u in range(1, U):
            if y[u].sum() == 0:
                assert np.isnan(got[u])
            else:
                ref = average_precision_score(y[u], s[u].astype(np.float64))
                assert abs(got[u] - ref) < 1e-12, (trial, u, got[u], ref)


@pytest.mark.parametrize("seed", range(4))
def test_ap_positives_equals_scikit_learn_with_deep_positives(seed) -> None:
    """Rare positives mostly on top with a few deep among the negatives (the cut between counting passes
    and the sorted top moves with them), ties included: equal to scikit-learn, whatever the cut."""
    from seals_gpu import metrics
    from seals_gpu.metrics import ap_positives

    rng = np.random.default_rng(seed)
    for trial in range(40):
        n = int(rng.integers(1, 30_000))
        s = rng.integers(0, 30, size=n).astype(np.float32) if trial % 4 == 0 else rng.normal(size=n)
        s = s.astype(np.float32)
        y = rng.random(n) < rng.uniform(0.001, 0.3)
        if not y.any():
            y[rng.integers(n)] = True
        s[y] += rng.uniform(0, 5)
        deep = np.flatnonzero(y)[: int(rng.integers(0, 12))]
        s[deep] -= rng.uniform(0, 8)
        want = average_precision_score(y, s)
        assert ap_positives(s, np.flatnonzero(y)) == pytest.approx(want, abs=1e-12)
    # every cut gives the same counts: force the extremes
    s = rng.normal(size=5000).astype(np.float32)
    y = rng.random(5000) < 0.02
    want = average_precision_score(y, s)
    for compare, sort in ((1e9, 0.0), (0.0, 1e9)):  # all by sorting / all by comparison passes
        old = metrics._NS_COMPARE, metrics._NS_SORT_PER_LEVEL
        metrics._NS_COMPARE, metrics._NS_SORT_PER_LEVEL = compare, sort
        try:
            assert ap_positives(s, np.flatnonzero(y)) == pytest.approx(want, abs=1e-12)
        finally:
            metrics._NS_COMPARE, metrics._NS_SORT_PER_LEVEL = old
