"""Scores, densities, seeded random scores and deterministic top-k selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seals_gpu.errors import ConfigError
from seals_gpu.strategies import (
    STRATEGIES,
    binary_entropy,
    check_strategies,
    id_scores,
    knn_density,
    linear_density,
    maxent_scores,
    mlp_scores,
    pairwise_density,
    random_scores,
    select_topk,
    select_topk_segmented,
)

# ------------------------------------------------------------------------------------- registry


def test_registry_and_check() -> None:
    assert set(STRATEGIES) == {"maxent", "mlp", "id", "id-knn", "id-pairwise", "random"}
    assert check_strategies(["id", "maxent", "id"]) == ["id", "maxent"]
    assert check_strategies(" random, mlp ") == ["random", "mlp"]
    with pytest.raises(ConfigError, match=r"unknown strategy 'maxnet'.*valid strategies: id, id-knn"):
        check_strategies(["maxent", "maxnet"])
    with pytest.raises(ConfigError, match="no strategy"):
        check_strategies([])


# ---------------------------------------------------------------------------------------- scores


def test_entropy_matches_formula() -> None:
    p = torch.linspace(1e-9, 1 - 1e-9, 1001, dtype=torch.float64)
    expected = -p * torch.log(p) - (1 - p) * torch.log(1 - p)
    torch.testing.assert_close(binary_entropy(p), expected, rtol=1e-12, atol=1e-15)
    edge = binary_entropy(torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert edge[0] == 0 and edge[1] == 0
    assert edge[2] == pytest.approx(math.log(2), abs=1e-15)
    assert binary_entropy(torch.tensor([0.0, 1.0])).isfinite().all()
    torch.testing.assert_close(maxent_scores(p), binary_entropy(p))


def test_mlp_and_id_scores() -> None:
    p = torch.tensor([0.1, 0.5, 0.9, 0.5])
    assert mlp_scores(p) is p
    dens = torch.tensor([0.5, -0.3, 1.0, 0.25])
    out = id_scores(p, dens, beta=2.0)
    expected = binary_entropy(p) * torch.tensor([0.25, 0.0, 1.0, 0.0625])
    torch.testing.assert_close(out, expected)
    assert (out >= 0).all()
    torch.testing.assert_close(id_scores(p, dens, beta=0.0), binary_entropy(p))
    torch.testing.assert_close(id_scores(p, dens.clamp(min=0), beta=0.5), id_scores(p, dens, beta=0.5))
    with pytest.raises(ConfigError, match="beta=-1"):
        id_scores(p, dens, beta=-1)


# ------------------------------------------------------------------------------------- densities


def _unit_rows(g: torch.Generator, n: int, d: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def test_linear_density_is_mean_cosine_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    X, R = _unit_rows(g, 50, 16), _unit_rows(g, 73, 16)
    naive = (X @ R.T).mean(dim=1)
    torch.testing.assert_close(linear_density(X, R.mean(dim=0)), naive)
    torch.testing.assert_close(pairwise_density(X, R, chunk=7), naive)
    torch.testing.assert_close(pairwise_density(X.float(), R.float(), chunk=1000), naive.float())
    # One mean per unit: shared rows (U, N) and per-unit rows (U, N).
    means = torch.stack([R[:10].mean(0), R[10:].mean(0)])
    shared = linear_density(X, means)
    assert shared.shape == (2, 50)
    torch.testing.assert_close(shared[1], (X @ R[10:].T).mean(1))
    per_unit = linear_density(torch.stack([X, X.flip(0)]), means)
    torch.testing.assert_close(per_unit[1], (X.flip(0) @ R[10:].T).mean(1))
    with pytest.raises(ValueError):
        linear_density(X, torch.zeros(5))
    with pytest.raises(ValueError, match="empty"):
        pairwise_density(X, R[:0])


def test_knn_density() -> None:
    sims = torch.tensor([[0.9, 0.5, 0.1], [0.2, -0.4, 0.0]])
    torch.testing.assert_close(knn_density(sims), sims.mean(1))
    valid = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(knn_density(sims, valid), torch.tensor([0.7, 0.0]))


# ---------------------------------------------------------------------------------------- random


def _splitmix_reference(ids: np.ndarray, key: int) -> np.ndarray:
    """Plain numpy-uint64 splitmix64(id + key) -> [0, 1), the definition random_scores follows."""
    x = ids.astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(key)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def test_random_scores_deterministic_and_order_free() -> None:
    from seals_gpu.strategies import _random_key

    rng = np.random.default_rng(0)
    ids = rng.choice(2**40, size=5000, replace=False).astype(np.int64)
    ids[:3] = [0, -1, 2**63 - 1]
    s = random_scores(torch.from_numpy(ids), seed=7, unit=3, round=2)
    assert s.dtype == torch.float64 and s.shape == (5000,)
    assert ((s >= 0) & (s < 1)).all()
    np.testing.assert_array_equal(s.numpy(), _splitmix_reference(ids, _random_key(7, 3, 2)))
    # Same id -> same score whatever the order, the pool or the input type.
    perm = rng.permutation(5000)
    np.testing.assert_array_equal(random_scores(ids[perm], 7, 3, 2).numpy(), s.numpy()[perm])
    np.testing.assert_array_equal(random_scores(ids[:10], 7, 3, 2).numpy(), s.numpy()[:10])
    # Different seed / unit / round -> different streams.
    for other in ((8, 3, 2), (7, 4, 2), (7, 3, 3)):
        assert not np.array_equal(random_scores(ids, *other).numpy(), s.numpy())
    # Roughly uniform.
    assert abs(float(s.mean()) - 0.5) < 0.02
    assert random_scores(ids.reshape(50, 100), 7, 3, 2).shape == (50, 100)
    with pytest.raises(ValueError, match="integers"):
        random_scores(torch.zeros(3), 1, 2, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_random_scores_same_on_cuda() -> None:
    ids = torch.randint(0, 2**50, (10_000,))
    cpu = random_scores(ids, 1, 2, 3)
    gpu = random_scores(ids.cuda(), 1, 2, 3)
    assert torch.equal(gpu.cpu(), cpu)


# ----------------------------------------------------------------------------------------- top-k


def _reference_topk(scores: np.ndarray, ids: np.ndarray, b: int) -> np.ndarray:
    s = np.where(np.isnan(scores), -np.inf, scores)
    order = sorted(range(len(ids)), key=lambda i: (-s[i], ids[i]))
    return ids[order[:b]]


def test_topk_tie_break_by_lower_id() -> None:
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.1, float("nan")])
    ids = torch.tensor([40, 7, 12, 3, 99, 1])
    assert select_topk(scores, ids, 3).tolist() == [7, 3, 12]
    assert select_topk(scores, ids, 10).tolist() == [7, 3, 12, 40, 99, 1]
    assert select_topk(scores, ids, 0).tolist() == []
    assert select_topk(scores[:0], ids[:0], 5).tolist() == []
    with pytest.raises(ConfigError, match="b=-1"):
        select_topk(scores, ids, -1)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=300),
    b=st.integers(min_value=0, max_value=320),
    levels=st.integers(min_value=1, max_value=50),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_topk_properties(n: int, b: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**6, size=n, replace=False).astype(np.int64)
    scores = (rng.integers(0, levels, n) / levels).astype(np.float32)  # plenty of ties
    out = select_topk(torch.from_numpy(scores), torch.from_numpy(ids), b).numpy()
    assert out.dtype == np.int64 and len(out) == min(b, n)
    assert len(np.unique(out)) == len(out)
    assert np.isin(out, ids).all()
    np.testing.assert_array_equal(out, _reference_topk(scores, ids, b))
    # Independent of the pool's order.
    perm = rng.permutation(n)
    again = select_topk(torch.from_numpy(scores[perm]), torch.from_numpy(ids[perm]), b).numpy()
    np.testing.assert_array_equal(again, out)


def _check_segmented(lengths: list[int], b: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    M = int(offsets[-1])
    ids = np.concatenate([rng.choice(10**6, size=n, replace=False) for n in lengths] + [np.zeros(0)])
    ids = ids.astype(np.int64)
    scores = rng.integers(0, levels, M) / levels
    sel, sel_s, counts = select_topk_segmented(
        torch.from_numpy(scores), torch.from_numpy(ids), torch.from_numpy(offsets), b
    )
    U = len(lengths)
    assert sel.shape == (U, b) and sel_s.shape == (U, b) and counts.shape == (U,)
    for u in range(U):
        lo, hi = offsets[u], offsets[u + 1]
        want = select_topk(torch.from_numpy(scores[lo:hi]), torch.from_numpy(ids[lo:hi]), b).numpy()
        c = int(counts[u])
        assert c == min(b, hi - lo)
        np.testing.assert_array_equal(sel[u, :c].numpy(), want)
        assert (sel[u, c:] == -1).all()
        assert torch.isnan(sel_s[u, c:]).all()
        by_id = dict(zip(ids[lo:hi].tolist(), scores[lo:hi].tolist(), strict=True))
        np.testing.assert_array_equal(sel_s[u, :c].numpy(), [by_id[i] for i in want.tolist()])


@pytest.mark.parametrize(
    ("lengths", "b"),
    [
        ([5, 0, 12, 3, 40], 4),  # few segments: the per-segment loop
        ([0, 0, 0], 3),
        ([7, 2], 10),  # every segment shorter than b
        ([], 3),
        ([5, 9], 0),
    ],
)
def test_segmented_equals_per_segment_loop(lengths: list[int], b: int) -> None:
    _check_segmented(lengths, b, levels=6, seed=len(lengths) + b)


def test_segmented_vectorised_paths() -> None:
    rng = np.random.default_rng(1)
    # > 256 segments of similar size: the dense-prefilter path.
    _check_segmented(rng.integers(0, 30, 300).tolist(), 5, levels=8, seed=1)
    # > 256 segments, all short: the sort-everything path.
    _check_segmented(rng.integers(0, 4, 300).tolist(), 5, levels=3, seed=2)
    # > 256 segments, very uneven: the loop again.
    _check_segmented([0] * 299 + [5000], 7, levels=20, seed=3)


def test_segmented_validation() -> None:
    s = torch.rand(5)
    ids = torch.arange(5)
    with pytest.raises(ValueError, match="offsets"):
        select_topk_segmented(s, ids, torch.tensor([0, 3, 4]), 2)
    with pytest.raises(ValueError, match="offsets"):
        select_topk_segmented(s, ids, torch.tensor([0, 4, 3, 5]), 2)
    with pytest.raises(ValueError, match="equal-length"):
        select_topk_segmented(s, ids[:4], torch.tensor([0, 5]), 2)
