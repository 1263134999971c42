"""Merging kNN results: the one place where shard results (or re-ranked candidates) meet."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sort_neighbors(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, order candidates by similarity descending then id ascending; keep the first ``k``.

    Missing entries are ``I == -1`` (any ``D``); they sort last. Duplicate ids in one row keep their best
    entry only. Returns ``(D, I)`` of shape (nq, k), padded with ``-inf`` / ``-1``.
    """
    D = np.asarray(D, dtype=np.float32)
    I = np.asarray(I, dtype=np.int64)
    nq = I.shape[0]
    if D.shape != I.shape:
        raise ValueError(f"D has shape {D.shape} but I has {I.shape}; they must match")
    valid = I >= 0
    Dm = np.where(valid, D, -np.inf).astype(np.float64)
    Im = np.where(valid, I, np.iinfo(np.int64).max)
    # lexsort: last key is primary. Primary -sim, then id.
    order = np.lexsort((Im, -Dm), axis=1) if nq else np.zeros_like(Im)
    Ds = np.take_along_axis(Dm, order, axis=1)
    Is = np.take_along_axis(Im, order, axis=1)
    # drop duplicate ids within a row (they can arise when shards overlap or on re-rank)
    if Is.shape[1] > 1:
        dup = np.zeros_like(Is, dtype=bool)
        srt = np.sort(Is, axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():
            for r in np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1)):
                _, first = np.unique(Is[r], return_index=True)
                keep = np.zeros(Is.shape[1], dtype=bool)
                keep[first] = True
                dup[r] = ~keep
            Ds = np.where(dup, -np.inf, Ds)
            Is = np.where(dup, np.iinfo(np.int64).max, Is)
            order = np.lexsort((Is, -Ds), axis=1)
            Ds = np.take_along_axis(Ds, order, axis=1)
            Is = np.take_along_axis(Is, order, axis=1)
    out_D = np.full((nq, k), -np.inf, dtype=np.float32)
    out_I = np.full((nq, k), -1, dtype=np.int64)
    w = min(k, Is.shape[1])
    out_D[:, :w] = Ds[:, :w]
    out_I[:, :w] = Is[:, :w]
    missing = out_I == np.iinfo(np.int64).max
    out_I[missing] = -1
    out_D[missing] = -np.inf
    return out_D, out_I


def merge_neighbors(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard kNN results ``[(D_s, I_s), ...]`` (each (nq, k_s)) into the global top-``k``.

    Order-independent: similarity descending, ties by lower id. Equals the top-``k`` of one search over
    the union of the shards when each shard returned its own top-``k``.
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
