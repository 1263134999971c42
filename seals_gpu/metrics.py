"""Evaluation metrics in float64 numpy: average precision (as scikit-learn computes it) and recall.

Inputs may be numpy arrays, lists or torch tensors (moved to the CPU).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["ap_rows", "average_precision", "average_precision_many", "recall"]


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of an array-like; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(y_true: Any, scores: Any, ndim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _to_numpy(y_true)
    s = _to_numpy(scores)
    if y.ndim != ndim or s.shape != y.shape:
        want = "(N,)" if ndim == 1 else "(U, N)"
        raise ValueError(f"{name}: y_true {y.shape} and scores {s.shape} must both have shape {want}")
    if y.dtype != np.bool_:
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise ValueError(f"{name}: y_true must hold 0/1 labels, got dtype {y.dtype}")
        if not np.isin(y, (0, 1)).all():
            bad = y[~np.isin(y, (0, 1))][0]
            raise ValueError(f"{name}: y_true must hold 0/1 labels, found {bad!r}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{name}: scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores contain NaN or infinite values")
    return y.astype(np.float64), s


def average_precision(y_true: Any, scores: Any) -> float:
    """Average precision, equal to ``sklearn.metrics.average_precision_score(y_true, scores)``.

    The step-wise area under the precision-recall curve, ``sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds (tied scores form one threshold, as in scikit-learn's
    ``precision_recall_curve``). The same float64 operations in the same order as scikit-learn,
    so results are bit-identical.

    Args:
        y_true: ``(N,)`` 0/1 or bool labels.
        scores: ``(N,)`` finite scores, higher = more likely positive.

    Returns:
        The average precision in [0, 1]; NaN when there is no positive (scikit-learn warns and
        returns 0 there instead).

    Raises:
        ValueError: shapes differ or are not 1-D, labels other than 0/1, non-finite scores.
    """
    y, s = _check_inputs(y_true, scores, 1, "average_precision")
    if y.size == 0 or not y.any():
        return float("nan")
    order = np.argsort(s, kind="stable")[::-1]
    s, y = s[order], y[order]
    thresholds = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    ps = tps + fps
    precision = tps / ps  # ps = threshold index + 1 >= 1 (scikit-learn guards ps == 0 for weights)
    recall_ = tps / tps[-1]
    precision = np.concatenate((np.flip(precision), np.asarray([1.0])))
    recall_ = np.concatenate((np.flip(recall_), np.asarray([0.0])))
    return float(max(0.0, -np.sum(np.diff(recall_) * precision[:-1])))


def average_precision_many(y_true: Any, scores: Any) -> np.ndarray:
    """:func:`average_precision` for ``U`` rankings at once, vectorised.

    Equal to the one-at-a-time function up to float64 round-off (summation order differs; the
    difference is ~1e-16).

    Args:
        y_true: ``(U, N)`` 0/1 or bool labels.
        scores: ``(U, N)`` finite scores.

    Returns:
        ``(U,)`` float64 average precisions, NaN for rows without a positive.

    Raises:
        ValueError: shapes differ or are not 2-D, labels other than 0/1, non-finite scores.
    """
    y, s = _check_inputs(y_true, scores, 2, "average_precision_many")
    return ap_rows(torch.from_numpy(y), torch.from_numpy(s))


def ap_rows(y: torch.Tensor, s: torch.Tensor) -> np.ndarray:
    """The vectorised AP of already-checked ``(U, N)`` labels (bool, or 0/1 floats) and finite scores (any
    float dtype: only their order and ties matter). No validation: callers check.

    Only the positives' ranks matter, so nothing of size N is sorted: with the ``P`` positive scores of a
    row sorted (``P << N`` for rare concepts), one batched binary search places every score among them,
    which counts the items scoring at least each positive; then ``AP = (1/P) sum_j TP(>= t_j) / ALL(>= t_j)``
    over the positives' scores ``t_j`` (tied scores share one threshold, as in scikit-learn). O(N log P)
    per row instead of a sort's O(N log N): 8x less work at 160k test rows and 250 positives.
    """
    U, N = y.shape
    out = np.full(U, np.nan)
    if N == 0 or U == 0:
        return out
    pos = y if y.dtype == torch.bool else y > 0.5
    n_pos = pos.sum(dim=1)
    m = int(n_pos.max())
    if m == 0:
        return out
    s = s.contiguous()
    # each row's positive scores, ascending, padded with +inf (the padding is past column n_pos)
    top = torch.topk(torch.where(pos, s, torch.tensor(-math.inf, dtype=s.dtype)), m, dim=1).values
    thr = torch.where(torch.isneginf(top), torch.tensor(math.inf, dtype=s.dtype), top)
    thr = torch.sort(thr, dim=1).values
    # ALL(>= thr[j]) = #{i: s_i >= thr[j]} = #{i: (number of thresholds <= s_i) > j}
    c = torch.searchsorted(thr, s, right=True)  # (U, N) in [0, m]
    bins = torch.zeros((U, m + 1), dtype=torch.int64).scatter_add_(1, c, torch.ones_like(c))
    all_ge = torch.flip(torch.cumsum(torch.flip(bins[:, 1:], [1]), dim=1), [1])  # (U, m): suffix sums
    # TP(>= thr[j]) = P - #{positives < thr[j]}
    tp_ge = n_pos[:, None] - torch.searchsorted(thr, thr, right=False)
    valid = torch.arange(m)[None, :] < n_pos[:, None]
    prec = torch.where(valid, tp_ge.to(torch.float64) / all_ge.clamp(min=1).to(torch.float64), 0.0)
    ap = prec.sum(dim=1) / n_pos.clamp(min=1).to(torch.float64)
    has = (n_pos > 0).numpy()
    out[has] = torch.clamp(ap, max=1.0).numpy()[has]
    return out


def recall(n_found: Any, n_total: Any) -> Any:
    """Fraction of the positives found: ``n_found / n_total``.

    Args:
        n_found: positives found so far (scalar or array).
        n_total: all positives (scalar or array, broadcastable).

    Returns:
        A float for scalar inputs, else a float64 array; NaN where ``n_total == 0``.

    Raises:
        ValueError: negative counts, or ``n_found > n_total``.
    """
    found = np.asarray(_to_numpy(n_found), dtype=np.float64)
    total = np.asarray(_to_numpy(n_total), dtype=np.float64)
    if (found < 0).any() or (total < 0).any():
        raise ValueError(f"recall: counts must be >= 0, got n_found={n_found!r}, n_total={n_total!r}")
    if (found > total).any():
        raise ValueError(f"recall: n_found={n_found!r} exceeds n_total={n_total!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, found / np.where(total > 0, total, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out
