"""Evaluation metrics in float64 numpy: average precision (as scikit-learn computes it) and recall.

Inputs may be numpy arrays, lists or torch tensors (moved to the CPU).
"""

from __future__ import annotations

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
    """The vectorised AP of already-checked ``(U, N)`` float64 0/1 labels and finite scores (any float dtype:
    only their order and ties matter; torch sorts every row on all cores). No validation: callers check."""
    U, N = y.shape
    out = np.full(U, np.nan)
    if N == 0 or U == 0:
        return out
    order = torch.argsort(-s, dim=1, stable=True)
    s = torch.gather(s, 1, order)
    y = torch.gather(y, 1, order)
    tps = torch.cumsum(y, dim=1)
    precision = tps / torch.arange(1, N + 1, dtype=torch.float64)
    # Every position takes the precision at the end of its tie group (the group's threshold), so
    # AP = sum over positives of that precision / number of positives.
    is_end = torch.ones((U, N), dtype=torch.bool)
    is_end[:, :-1] = s[:, 1:] != s[:, :-1]
    end = torch.where(is_end, torch.arange(N), torch.tensor(N))
    end = torch.flip(torch.cummin(torch.flip(end, [1]), dim=1).values, [1])
    total = tps[:, -1]
    ap = (y * torch.gather(precision, 1, end)).sum(dim=1)
    has_pos = (total > 0).numpy()
    res = torch.clamp(ap / torch.where(total > 0, total, torch.ones_like(total)), max=1.0).numpy()
    out[has_pos] = res[has_pos]
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
