"""Merging kNN results: the one place where shard results (or re-ranked candidates) meet."""

from __future__ import annotations

from collections.abc import Sequence

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


def merge_neighbors(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard kNN results ``[(D_s, I_s), ...]`` (each (nq, k_s)) into the global top-``k``.

    Order-independent: similarity descending, ties by lower id. Equals the top-``k`` of one search over
    the union of the shards when each shard returned its own top-``k``. Missing entries are told by a
    non-finite similarity (see :func:`sort_neighbors`), never by their id.
    """
    if not parts:
        raise ValueError("merge_neighbors needs at least one (D, I) pair")
    nq = parts[0][1].shape[0]
    for D, I in parts:
        if I.shape[0] != nq or D.shape != I.shape:
            raise ValueError(f"shard results disagree in shape: {[p[1].shape for p in parts]}")
    D = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts], axis=1)
    I = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    return sort_neighbors(D, I, k)
