"""Test AP where the data lives: exact average precision of many units without one place holding the test split.

The AP is that of each unit's **canonical** logits: ``sum(x_i * w_i)`` in float64, numpy's pairwise sum of
each row (the same bits however many rows are scored together), plus the intercept. AP needs, for each
positive's score ``t``, how many items score at or above it. Two passes, neither of which moves a test
vector or an ``(units, N)`` score matrix:

1. **the positives' scores** (:func:`group_logits`): per concept, its units' canonical logits of its test
   positives, computed where the positives' vectors live. Sorted, they are each unit's thresholds.
2. **the others' counts** (:func:`count_blocks`): wherever test rows live (the in-process backend's shards,
   or each Ray shard actor over its own rows), float64 logits of every unit for a block of rows at once (one
   matrix product), the unit's own positives set aside, then :func:`metrics.count_at_or_above` against each
   threshold widened by the product's error bound (~1e-13 relative) on either side. A row above the band is
   above the threshold, one below it is below; the rare rows inside a band (ties: duplicates of a positive)
   are re-scored canonically and compared exactly. Counts add over blocks and shards: only ``sum_u P_u``
   integers travel back.

The AP is then :func:`metrics.ap_from_counts` in the driver: equal to scikit-learn's on the float64 logits
(up to float64 round-off in its final sum), whatever the block size, shard count or device. Memory: a block
of ``AP_UNITS`` x ``rows`` float64 logits where the rows are, and ``O(sum_u P_u)`` in the driver, whatever N.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch

from .metrics import ap_from_counts, choose_cut, count_at_or_above

AP_UNITS = 256  # units whose logits of one block of test rows exist at once (AP_UNITS x rows float64)

# A group: the units of one concept and that concept's sorted test-positive ids.
Group = tuple[np.ndarray, np.ndarray]


def logits_of(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    """``W @ x.T + bias`` as float64 ``(units, rows)``: one matrix product in ``x``'s dtype (float64 for the
    AP count: its error bound is ~1e-13, so only exact ties of a positive need the canonical re-score)."""
    W = W.to(x.device, x.dtype)
    return torch.addmm(bias.to(x.device, x.dtype)[:, None], W, x.T).double().cpu().numpy()


def canonical_logits(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """float64 ``x @ w + b`` for ``(n, d)`` rows, each row summed by numpy's pairwise sum on its own: a row
    gets the same bits whatever other rows are scored with it (AP's reference scores)."""
    return np.sum(np.asarray(x, np.float64) * np.asarray(w, np.float64), axis=1) + float(b)


def _unit_arrays(W: torch.Tensor, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return W.detach().double().cpu().numpy(), bias.detach().double().cpu().numpy()


def group_logits(
    vectors_of, groups: Sequence[Group], W: torch.Tensor, bias: torch.Tensor
) -> list[np.ndarray]:
    """Pass 1: for each group ``(units, ids)``, the ``(len(units), len(ids))`` canonical float64 logits of
    its units on its ids; ``vectors_of(ids)`` gives the float32 vectors."""
    W64, b64 = _unit_arrays(W, bias)
    out = []
    for units, ids in groups:
        if ids.size == 0 or units.size == 0:
            out.append(np.empty((units.size, ids.size), np.float64))
            continue
        x = np.asarray(vectors_of(ids), dtype=np.float32)
        out.append(np.stack([canonical_logits(x, W64[u], b64[u]) for u in units.tolist()]))
    return out


def error_bound(d: int, x_norm: float, w_norm: float, b: float) -> float:
    """A bound on ``|float64 product - canonical|`` for one logit: ``gamma`` of ``d + 2`` roundings (the
    products' sum in any order, the intercept) of ``sum |x_i w_i| + |b| <= |x| |w| + |b|``, for the product
    and for the canonical sum each (``2 (d + 2) u``, ``u = 2**-53``), times four for margin:
    ``(d + 2) 2**-50``."""
    return (d + 2) * 2.0**-50 * (x_norm * w_norm + abs(b))


def _widen(t: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds outside ``[t - eps, t + eps]``: a product below ``lo`` is below ``t`` and one at or above ``hi``
    is above it, whatever the product's rounding."""
    t = np.asarray(t, np.float64)
    return np.nextafter(t - eps, -np.inf), np.nextafter(t + eps, np.inf)


def unit_positives(groups: Sequence[Group], n_units: int) -> list[np.ndarray]:
    """Each unit's sorted test-positive ids (shared arrays: a concept's units point at one array)."""
    empty = np.empty(0, np.int64)
    pos: list[np.ndarray] = [empty] * n_units
    for units, ids in groups:
        for u in units.tolist():
            pos[u] = ids
    return pos


def count_blocks(
    blocks: Iterable[tuple[np.ndarray, torch.Tensor]],
    W: torch.Tensor,
    bias: torch.Tensor,
    thresholds: Sequence[np.ndarray],
    groups: Sequence[Group],
    *,
    threads: int | None = None,
) -> list[np.ndarray]:
    """Pass 2 over some test rows: ``counts[u][j]`` = rows that are not unit ``u``'s positives and whose
    canonical logit is at or above ``thresholds[u][j]`` (ascending float64). ``blocks`` yields ``(sorted ids,
    vectors)``."""
    U = int(W.shape[0])
    pos = unit_positives(groups, U)
    counts = [np.zeros(t.size, np.int64) for t in thresholds]
    live = [u for u in range(U) if thresholds[u].size]
    if not live:
        return counts
    W64, b64 = _unit_arrays(W, bias)
    w_norm = np.linalg.norm(W64, axis=1)
    threads = max(1, torch.get_num_threads() if threads is None else threads)
    with ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
        for ids, x in blocks:
            if ids.size == 0:
                continue
            block = _Block(ids, x)
            for s in range(0, len(live), AP_UNITS):
                chunk = live[s : s + AP_UNITS]
                idx = torch.as_tensor(chunk, dtype=torch.long, device=W.device)
                logits = logits_of(block.x, W[idx], bias[idx])
                jobs = [
                    (
                        logits[j],
                        pos[u],
                        thresholds[u],
                        block.eps(float(w_norm[u]), float(b64[u])),
                        W64[u],
                        b64[u],
                    )
                    for j, u in enumerate(chunk)
                ]
                parts = (
                    [block.count(*job) for job in jobs]
                    if pool is None
                    else list(pool.map(lambda job: block.count(*job), jobs))  # noqa: B023
                )
                for u, n in zip(chunk, parts, strict=True):
                    counts[u] += n
    return counts


def banded_counts(
    row: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """For ascending bounds ``lo <= hi``: how many of ``row`` are ``>= hi[j]`` (surely at or above threshold
    ``j``), and, for each ``j`` with any, the positions of the ``row`` values in ``[lo[j], hi[j])`` (too close
    to call). The work of :func:`metrics.count_at_or_above`: one comparison pass per threshold below a cut,
    one ordering of the values at or above the cut for the rest (their positions kept, so a band is a
    slice of it)."""
    P = int(lo.size)
    n_hi = np.zeros(P, np.int64)
    bands: list[tuple[int, np.ndarray]] = []
    if P == 0 or row.size == 0:
        return n_hi, bands
    c = choose_cut(row, lo)
    for j in range(c):
        ge_lo = row >= lo[j]
        ge_hi = row >= hi[j]
        n_hi[j] = int(np.count_nonzero(ge_hi))
        if int(np.count_nonzero(ge_lo)) > n_hi[j]:
            bands.append((j, np.flatnonzero(ge_lo & ~ge_hi)))
    sel = np.flatnonzero(row >= lo[c])
    order = np.argsort(row[sel], kind="stable")
    vals = row[sel][order]
    a_lo = np.searchsorted(vals, lo[c:], side="left")
    a_hi = np.searchsorted(vals, hi[c:], side="left")
    n_hi[c:] = vals.size - a_hi
    for k in np.flatnonzero(a_hi > a_lo).tolist():
        bands.append((c + k, sel[order[a_lo[k] : a_hi[k]]]))
    return n_hi, bands


class _Block:
    """One block of test rows: its ids, vectors and largest row norm (for the error bound)."""

    def __init__(self, ids: np.ndarray, x: torch.Tensor):
        self.ids = ids
        self.x = x.double()  # the products in float64 (see logits_of)
        self.d = int(x.shape[1])
        self.x_norm = float(torch.linalg.vector_norm(self.x, dim=1).max())
        self._host: np.ndarray | None = None

    def eps(self, w_norm: float, b: float) -> float:
        return error_bound(self.d, self.x_norm, w_norm, b)

    def host(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of some rows, on the host (fetched once per block, only for a near-tie)."""
        if self._host is None:
            self._host = self.x.cpu().numpy()
        return self._host[rows]

    def count(
        self, row: np.ndarray, positives: np.ndarray, t: np.ndarray, eps: float, w: np.ndarray, b: float
    ) -> np.ndarray:
        """How many of the block's rows (float64 logits ``row``, modified in place) other than ``positives``
        have a canonical logit at or above each threshold ``t``."""
        ids = self.ids
        if positives.size:  # the unit's own positives are set aside (pass 1 scored them)
            loc = np.searchsorted(ids, positives)
            inside = loc < ids.size
            loc = loc[inside][ids[loc[inside]] == positives[inside]]
            if loc.size:
                row[loc] = -np.inf
        lo, hi = _widen(t, eps)
        both = np.concatenate([lo, hi])
        order = np.argsort(both, kind="stable")
        n_ge = np.empty(both.size, np.int64)
        n_ge[order] = count_at_or_above(row, both[order])
        if np.array_equal(n_ge[: t.size], n_ge[t.size :]):  # no row within the error bound of a threshold
            return n_ge[t.size :]
        n_hi, bands = banded_counts(row, lo, hi)  # near-ties (duplicates of a positive): find them
        for j, rows in bands:  # rows within the error bound of threshold j: decided on canonical logits
            n_hi[j] += int(np.count_nonzero(canonical_logits(self.host(rows), w, b) >= t[j]))
        return n_hi


def thresholds_of(
    groups: Sequence[Group], pos_logits: Sequence[np.ndarray], n_units: int
) -> list[np.ndarray]:
    """Each unit's ascending positive scores from pass 1 (empty for a unit whose concept has none)."""
    t: list[np.ndarray] = [np.empty(0, np.float64)] * n_units
    for (units, _), L in zip(groups, pos_logits, strict=True):
        for j, u in enumerate(units.tolist()):
            t[u] = np.sort(L[j])
    return t


def evaluate_ap(backend, W: torch.Tensor, bias: torch.Tensor, groups: Sequence[Group]) -> np.ndarray:
    """Every unit's exact test AP through ``backend`` (``group_logits`` then ``test_counts``, both run
    where the vectors are); NaN for a unit whose concept has no test positive."""
    U = int(W.shape[0])
    thresholds = thresholds_of(groups, backend.group_logits(groups, W, bias), U)
    counts = backend.test_counts(W, bias, thresholds, groups)
    return np.array([ap_from_counts(thresholds[u], counts[u]) for u in range(U)], dtype=np.float64)
