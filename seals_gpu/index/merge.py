"""Merging kNN results: the one place where shard results (or re-ranked candidates) meet."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def sort_neighbors(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, order candidates by similarity descending then id ascending; keep the first ``k``.

    Missing entries are those whose similarity is not finite (``-inf`` padding, NaN); their ``I`` is
    ignored, so every int64, -1 included, is a legal id. Duplicate ids in one row keep their best entry
    only. Returns ``(D, I)`` of shape (nq, k): a slot is a neighbour iff its ``D`` is finite; missing slots
    hold ``-inf`` / ``-1``.
    """
    D = np.asarray(D, dtype=np.float32)
    I = np.asarray(I, dtype=np.int64)
    nq = I.shape[0]
    if D.shape != I.shape:
        raise ValueError(f"D has shape {D.shape} but I has {I.shape}; they must match")
    valid = np.isfinite(D)  # unit vectors: a real neighbour's similarity is finite, a missing one -inf
    Dm = np.where(valid, D, -np.inf).astype(np.float64)
    Im = np.where(valid, I, -1)
    # lexsort: last key is primary. Primary -sim, then id; missing entries (-sim = +inf) sort last.
    order = np.lexsort((Im, -Dm), axis=1) if nq else np.zeros_like(Im)
    Ds = np.take_along_axis(Dm, order, axis=1)
    Is = np.take_along_axis(Im, order, axis=1)
    # drop duplicate ids within a row (they can arise when shards overlap or on re-rank): the first
    # occurrence in sorted order is the best one, and a missing entry never precedes a real one
    if Is.shape[1] > 1:
        srt = np.sort(Is, axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():
            dup = np.zeros_like(Is, dtype=bool)
            for r in np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1)):
                _, first = np.unique(Is[r], return_index=True)
                keep = np.zeros(Is.shape[1], dtype=bool)
                keep[first] = True
                dup[r] = ~keep
            Ds = np.where(dup, -np.inf, Ds)
            Is = np.where(dup, -1, Is)
            order = np.lexsort((Is, -Ds), axis=1)
            Ds = np.take_along_axis(Ds, order, axis=1)
            Is = np.take_along_axis(Is, order, axis=1)
    out_D = np.full((nq, k), -np.inf, dtype=np.float32)
    out_I = np.full((nq, k), -1, dtype=np.int64)
    w = min(k, Is.shape[1])
    out_D[:, :w] = Ds[:, :w]
    out_I[:, :w] = np.where(np.isfinite(Ds[:, :w]), Is[:, :w], -1)
    return out_D, out_I


# Float32 GEMM similarities of unit vectors are within ~1e-6 of the float64 value; two candidates closer than
# this may be ordered by rounding, so a k-th place this close to the next is decided on float64 scores.
TIE_EPS = 1e-5

# rescore(rows, ids): float32-rounded float64 similarities of the queries ``rows`` with candidates ``ids``
Rescore = Callable[[np.ndarray, np.ndarray], np.ndarray]


def merge_neighbors(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, rescore: Rescore | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard kNN results ``[(D_s, I_s), ...]`` (each (nq, k_s)) into the global top-``k``.

    Order-independent: similarity descending, ties by lower id. Equals the top-``k`` of one search over
    the union of the shards when each shard returned its own top-``k``. Missing entries are told by a
    non-finite similarity (see :func:`sort_neighbors`), never by their id.

    Shards' similarities come from products of different shapes and can differ from one another's in the
    last bit; with ``rescore`` (see :func:`rescorer`), a row whose merged k-th and (k+1)-th candidates are
    closer than ``TIE_EPS`` has every candidate re-scored in float64 and is ordered again, so the ids a row
    returns do not depend on how the data was sharded.
    """
    if not parts:
        raise ValueError("merge_neighbors needs at least one (D, I) pair")
    nq = parts[0][1].shape[0]
    for D, I in parts:
        if I.shape[0] != nq or D.shape != I.shape:
            raise ValueError(f"shard results disagree in shape: {[p[1].shape for p in parts]}")
    D = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts], axis=1)
    I = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    if rescore is None or D.shape[1] <= k:
        return sort_neighbors(D, I, k)
    Dk, Ik = sort_neighbors(D, I, k + 1)
    with np.errstate(invalid="ignore"):  # -inf - -inf where a row has fewer than k + 1 candidates
        risky = np.flatnonzero(np.isfinite(Dk[:, k]) & (Dk[:, k - 1] - Dk[:, k] < TIE_EPS))
    Dk, Ik = Dk[:, :k], Ik[:, :k]
    if risky.size:
        valid = np.isfinite(D[risky])
        some = Ik[risky, :1]  # a real id of each row stands in for its missing slots (then set to -inf)
        ids = np.where(valid, I[risky], some)
        exact = np.where(valid, rescore(risky, ids), -np.inf)
        Dk[risky], Ik[risky] = sort_neighbors(exact, ids, k)
    return Dk, Ik


def rescorer(xq: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray]) -> Rescore:
    """A ``rescore`` for :func:`merge_neighbors`: float64 per-pair dot products (the shards' own
    :func:`~seals_gpu.index.shard.exact_scores`, so a pair gets the same bits wherever it is re-scored) of
    queries ``xq`` with the vectors ``vectors_of(ids)`` gives."""
    from .shard import exact_scores

    def rescore(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        uniq, pos = np.unique(ids, return_inverse=True)
        return exact_scores(xq[rows], np.asarray(vectors_of(uniq), np.float32), pos.reshape(ids.shape))

    return rescore
