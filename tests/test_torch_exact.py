"""Tests of TorchExactIndex: brute-force numpy and faiss.IndexFlatIP agreement, ties, exclusion, lookups."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from seals_gpu.errors import IndexError_
from seals_gpu.index.torch_exact import TorchExactIndex


def _data(n: int = 2000, d: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = (rng.permutation(n) * 5 + 7).astype(np.int64)  # unsorted, offset: ids != positions
    q = rng.normal(size=(37, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return ids, x, q


def _check_against(
    D: np.ndarray, nn: np.ndarray, sims: np.ndarray, ids: np.ndarray, k: int, atol: float
) -> None:
    """(D, I) is the exact top-k of ``sims`` (nq, n): values match; ids match wherever sims are distinct."""
    order = np.lexsort((np.broadcast_to(ids, sims.shape), -sims), axis=1)[:, :k]
    ref_D = np.take_along_axis(sims, order, axis=1)
    ref_nn = ids[order]
    np.testing.assert_allclose(D, ref_D, atol=atol, rtol=0)
    gaps = np.diff(np.sort(sims, axis=1)[:, ::-1][:, : k + 1], axis=1)
    for r in range(D.shape[0]):
        if (np.abs(gaps[r]) > 10 * atol).all():  # no near-ties in this row: ids must agree exactly
            assert nn[r].tolist() == ref_nn[r].tolist()
        else:
            assert set(nn[r][np.abs(D[r] - ref_D[r]) <= atol].tolist()) <= set(ids.tolist())
    pos = {int(i): p for p, i in enumerate(ids)}
    got_sims = np.array([[sims[r, pos[int(i)]] for i in nn[r]] for r in range(nn.shape[0])])
    np.testing.assert_allclose(got_sims, D, atol=atol, rtol=0)


@pytest.mark.parametrize("block_rows", [128, 999, 262_144])
def test_matches_bruteforce_numpy(block_rows: int) -> None:
    ids, x, q = _data()
    idx = TorchExactIndex(ids, x, device="cpu", block_rows=block_rows, max_tmp_elems=5000)
    assert idx.ntotal == 2000 and idx.dim == 24
    D, nn = idx.search(q, 10)
    assert D.dtype == np.float32 and nn.dtype == np.int64 and D.shape == nn.shape == (37, 10)
    _check_against(D, nn, q.astype(np.float64) @ x.T.astype(np.float64), ids, 10, atol=1e-5)


def test_matches_faiss_flat_ip() -> None:
    ids, x, q = _data(seed=1)
    fa = faiss.IndexIDMap(faiss.IndexFlatIP(x.shape[1]))
    fa.add_with_ids(x, ids)
    Df, If = fa.search(q, 15)
    D, nn = TorchExactIndex(ids, x, device="cpu", block_rows=300).search(q, 15)
    np.testing.assert_allclose(D, Df, atol=1e-5)
    for r in range(q.shape[0]):
        distinct = np.abs(np.diff(Df[r])) > 1e-5
        if distinct.all():
            assert nn[r].tolist() == If[r].tolist()
        else:
            assert set(nn[r]) <= set(ids.tolist())


def test_ties_resolve_to_lower_id_across_blocks() -> None:
    ids, x, q = _data(n=300, seed=2)
    dup = np.arange(0, 300, 50)  # six equal vectors, in different blocks, nearest to the query
    x[dup] = q[0]
    for block_rows in (17, 64, 300):
        idx = TorchExactIndex(ids, x, device="cpu", block_rows=block_rows)
        D, nn = idx.search(q[:1], 4)
        assert nn[0].tolist() == np.sort(ids[dup])[:4].tolist()
        assert (D[0] == D[0, 0]).all()
        D2, nn2 = idx.search(q[:1], 8)
        assert nn2[0, :6].tolist() == np.sort(ids[dup]).tolist()


def test_exclude_own_id() -> None:
    ids, x, _ = _data(n=500, seed=3)
    idx = TorchExactIndex(ids, x, device="cpu", block_rows=64)
    D, nn = idx.search(x[:20], 5, exclude_ids=ids[:20])
    D1, nn1 = idx.search(x[:20], 6)
    for r in range(20):
        assert ids[r] not in nn[r]
        assert nn1[r, 0] == ids[r]  # itself is its own nearest neighbour
        assert nn[r].tolist() == nn1[r, 1:].tolist()
        np.testing.assert_allclose(D[r], D1[r, 1:])
    # an id that is not in the result (or -1) drops the (k+1)-th instead
    D2, nn2 = idx.search(x[:2], 5, exclude_ids=np.array([-1, 123456]))
    assert nn2.tolist() == nn1[:2, :5].tolist()
    with pytest.raises(IndexError_, match="exclude_ids must have shape"):
        idx.search(x[:2], 5, exclude_ids=ids[:3])


def test_padding_when_k_exceeds_ntotal() -> None:
    ids, x, q = _data(n=4, seed=4)
    D, nn = TorchExactIndex(ids, x, device="cpu").search(q[:2], 6)
    assert (nn[:, 4:] == -1).all() and np.isneginf(D[:, 4:]).all()
    assert sorted(nn[0, :4].tolist()) == sorted(ids.tolist())
    D, nn = TorchExactIndex(ids, x, device="cpu").search(q[:2], 4, exclude_ids=ids[:2])
    assert (nn[:, 3] == -1).all() and all(ids[r] not in nn[r] for r in range(2))
    empty = TorchExactIndex(np.empty(0, np.int64), np.empty((0, 24), np.float32), device="cpu")
    D, nn = empty.search(q[:2], 3)
    assert (nn == -1).all() and np.isneginf(D).all()


def test_vectors_lookup_and_errors() -> None:
    ids, x, _ = _data(n=50, seed=5)
    idx = TorchExactIndex(ids, torch.from_numpy(x), device="cpu")
    got = idx.vectors(ids[[3, 0, 3]])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[[3, 0, 3]])
    with pytest.raises(IndexError_, match=r"\[1, 2\]"):
        idx.vectors(np.array([ids[0], 1, 2]))
    half = TorchExactIndex(ids, x, device="cpu", dtype=torch.float16)
    np.testing.assert_allclose(half.vectors(ids[:5]), x[:5], atol=1e-3)


def test_constructor_validation() -> None:
    ids, x, q = _data(n=10, seed=6)
    with pytest.raises(IndexError_, match="unique"):
        TorchExactIndex(np.array([1, 2, 2, 3, 4, 5, 6, 7, 8, 9]), x, device="cpu")
    with pytest.raises(IndexError_, match=r"shape \(10, d\)"):
        TorchExactIndex(ids, x[:5], device="cpu")
    idx = TorchExactIndex(ids, x, device="cpu")
    with pytest.raises(IndexError_, match="k=0"):
        idx.search(q, 0)
    with pytest.raises(IndexError_, match=r"shape \(nq, 24\)"):
        idx.search(q[:, :3], 2)
    bad = q[:2].copy()
    bad[0, 0] = np.nan
    with pytest.raises(IndexError_, match="NaN"):
        idx.search(bad, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp16_matches_faiss() -> None:
    ids, x, q = _data(n=20_000, d=64, seed=7)
    idx = TorchExactIndex(ids, x, device="cuda", block_rows=4096)
    assert idx.dtype == torch.float16
    D, nn = idx.search(q, 10)
    fa = faiss.IndexIDMap(faiss.IndexFlatIP(x.shape[1]))
    fa.add_with_ids(x, ids)
    Df, If = fa.search(q, 10)
    np.testing.assert_allclose(D, Df, atol=3e-3)  # fp16 storage
    overlap = np.mean([len(set(nn[r]) & set(If[r])) / 10 for r in range(q.shape[0])])
    assert overlap > 0.9
