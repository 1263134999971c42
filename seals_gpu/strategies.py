"""Selection strategies: scores from model probabilities, densities, seeded random scores and top-k.

Everything here is a pure function of its tensor arguments and runs on whatever device they are on.
Higher score = more wanted; :func:`select_topk` and :func:`select_topk_segmented` pick the ``b``
highest, breaking ties by the lower id so that selections are deterministic whatever the order of
the candidate pool.

Strategies (Coleman et al., SEALS, section 3):

``maxent``       entropy of the predicted probability (uncertainty sampling);
``mlp``          most-likely positive: the probability itself;
``id``           information density: ``entropy(p) * density ** beta`` with ``density`` the mean
                 cosine similarity to a reference set computed exactly and cheaply as ``x . mean(R)``
                 (:func:`linear_density`);
``id-knn``       the same with ``density`` the mean similarity to the ``k`` nearest neighbours
                 (:func:`knn_density`);
``id-pairwise``  the same with the naive quadratic form (:func:`pairwise_density`), equal to ``id`` up
                 to round-off: kept as a reference and for checking;
``random``       uniform scores hashed from ``(seed, unit, round, id)`` (:func:`random_scores`).

Densities can be negative (cosine similarities are in [-1, 1]); they are clamped at 0 before the
power so that ``id`` scores stay >= 0 and a point dissimilar to the reference set is simply not
preferred (a negative density would otherwise flip the sign of the entropy term, or give NaN for
fractional ``beta``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from .errors import ConfigError

__all__ = [
    "STRATEGIES",
    "check_strategies",
    "binary_entropy",
    "maxent_scores",
    "mlp_scores",
    "id_scores",
    "linear_density",
    "knn_density",
    "pairwise_density",
    "random_scores",
    "select_topk",
    "select_topk_segmented",
]

#: Registry of strategy names (keys) with a one-line description (values).
STRATEGIES: dict[str, str] = {
    "maxent": "max entropy of the predicted probability (uncertainty sampling)",
    "mlp": "most-likely positive: highest predicted probability",
    "id": "information density: entropy * (mean cosine similarity to the reference set) ** beta",
    "id-knn": "information density with the mean similarity to the k nearest neighbours",
    "id-pairwise": "information density with the naive pairwise mean similarity (reference for 'id')",
    "random": "uniform random scores, hashed from (seed, unit, round, id)",
}


def check_strategies(names: str | Iterable[str]) -> list[str]:
    """Validate strategy names.

    Args:
        names: an iterable of names, or one string of comma-separated names
            (``"maxent,id"``). Whitespace around names is ignored.

    Returns:
        The names in the given order, duplicates removed.

    Raises:
        ConfigError: a name is not in :data:`STRATEGIES` (the message names it and lists the valid
            ones), or no name was given.
    """
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise ConfigError(f"strategy names must be strings, got {raw!r}")
        name = raw.strip()
        if name not in STRATEGIES:
            raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"no strategy given; valid strategies: {', '.join(sorted(STRATEGIES))}")
    return out


# ---------------------------------------------------------------------------------------- scores


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of a Bernoulli(p) in nats: ``-p ln p - (1 - p) ln(1 - p)``.

    Args:
        p: probabilities in [0, 1], any shape, floating dtype.

    Returns:
        Same shape and dtype; exactly 0 at p = 0 and p = 1 (``0 ln 0 = 0``), ``ln 2`` at 0.5.
    """
    q = 1.0 - p
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q))


def maxent_scores(p: torch.Tensor) -> torch.Tensor:
    """``maxent``: the entropy of the predicted probability (max at p = 0.5).

    Args:
        p: predicted probabilities, any shape.

    Returns:
        :func:`binary_entropy` of ``p``.
    """
    return binary_entropy(p)


def mlp_scores(p: torch.Tensor) -> torch.Tensor:
    """``mlp`` (most-likely positive): the predicted probability itself.

    Args:
        p: predicted probabilities, any shape.

    Returns:
        ``p`` (the same tensor, not a copy).
    """
    return p


def id_scores(p: torch.Tensor, density: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Information density: ``entropy(p) * max(density, 0) ** beta``.

    Args:
        p: predicted probabilities.
        density: mean cosine similarity of each point to a reference set, broadcastable with ``p``
            (from :func:`linear_density`, :func:`knn_density` or :func:`pairwise_density`).
            Negative values are clamped to 0 (see the module docstring).
        beta: exponent >= 0 of the density term; 0 gives plain ``maxent``.

    Returns:
        Scores >= 0 with the broadcast shape of ``p`` and ``density``.

    Raises:
        ConfigError: ``beta`` is negative or not finite.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ConfigError(f"beta={beta!r}: the density exponent must be a finite number >= 0")
    dens = density.to(p.dtype) if density.is_floating_point() else density.to(torch.float32)
    return binary_entropy(p) * dens.clamp(min=0.0).pow(beta)


# ------------------------------------------------------------------------------------- densities


def linear_density(X: torch.Tensor, ref_mean: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity to a reference set in O(d) per point: ``x . mean(R)``.

    For unit-length rows ``x`` and ``u``, ``mean_u x . u = x . mean_u(u)`` exactly, so the reference
    set enters only through its mean vector.

    Args:
        X: ``(N, d)`` or ``(U, N, d)`` unit-length rows.
        ref_mean: ``(d,)`` mean of the reference rows, or ``(U, d)``, one mean per unit.

    Returns:
        ``(N,)`` for ``X (N, d)`` and ``ref_mean (d,)``; ``(U, N)`` otherwise.
    """
    if X.dim() not in (2, 3) or ref_mean.dim() not in (1, 2) or X.shape[-1] != ref_mean.shape[-1]:
        raise ValueError(
            f"linear_density: X {tuple(X.shape)} must be (N, d) or (U, N, d) and ref_mean "
            f"{tuple(ref_mean.shape)} must be (d,) or (U, d) with the same d"
        )
    ref = ref_mean.to(X.dtype)
    if ref.dim() == 1:
        return X @ ref
    if X.dim() == 2:
        return ref @ X.T
    if X.shape[0] != ref.shape[0]:
        raise ValueError(f"linear_density: X has {X.shape[0]} units but ref_mean has {ref.shape[0]}")
    return torch.bmm(X, ref[:, :, None]).squeeze(-1)


def knn_density(sims: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean similarity to the ``k`` nearest neighbours.

    Args:
        sims: ``(..., k)`` similarities of each point to its neighbours.
        valid: optional bool mask, same shape, false for missing neighbours (e.g. FAISS's ``-1``
            labels); those are left out of the mean. A point with no valid neighbour gets 0.

    Returns:
        ``(...)`` mean similarities.
    """
    if valid is None:
        return sims.mean(dim=-1)
    if valid.shape != sims.shape:
        raise ValueError(f"knn_density: valid {tuple(valid.shape)} must match sims {tuple(sims.shape)}")
    total = torch.where(valid, sims, torch.zeros((), dtype=sims.dtype, device=sims.device)).sum(dim=-1)
    count = valid.sum(dim=-1)
    return torch.where(count > 0, total / count.clamp(min=1).to(sims.dtype), torch.zeros_like(total))


def pairwise_density(X: torch.Tensor, R: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Naive mean similarity ``mean_j X_i . R_j`` by explicit blocks of ``X @ R.T``.

    Memory stays O(chunk^2) whatever the sizes; sums accumulate in float64. Quadratic time: use
    :func:`linear_density` in practice, this is the reference it is checked against.

    Args:
        X: ``(N, d)`` points to score.
        R: ``(M, d)`` reference rows, M >= 1.
        chunk: block edge (rows of X and of R per block), >= 1.

    Returns:
        ``(N,)`` mean similarities in ``X``'s dtype.
    """
    if X.dim() != 2 or R.dim() != 2 or X.shape[1] != R.shape[1]:
        raise ValueError(
            f"pairwise_density: X {tuple(X.shape)} and R {tuple(R.shape)} must be (N, d) and (M, d)"
        )
    if R.shape[0] == 0:
        raise ValueError("pairwise_density: the reference set R is empty")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk={chunk!r}: must be an integer >= 1")
    Rc = R.to(device=X.device, dtype=X.dtype)
    out = torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    for i in range(0, X.shape[0], chunk):
        Xi = X[i : i + chunk]
        for j in range(0, Rc.shape[0], chunk):
            out[i : i + chunk] += (Xi @ Rc[j : j + chunk].T).sum(dim=1, dtype=torch.float64)
    return (out / Rc.shape[0]).to(X.dtype)


# ------------------------------------------------------------------------------------------ random

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed64(x: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``x``."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def _mix64_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (mod 2^64)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def _srl(t: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (t >> s) & ((1 << (64 - s)) - 1)


def _mix64(t: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps mod 2^64 on CPU and CUDA)."""
    t = t ^ _srl(t, 30)
    t = t * _signed64(_MIX1)
    t = t ^ _srl(t, 27)
    t = t * _signed64(_MIX2)
    return t ^ _srl(t, 31)


def _random_key(seed: int, unit: int, round: int) -> int:
    for name, v in (("seed", seed), ("unit", unit), ("round", round)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"random_scores: {name}={v!r} must be an integer")
    key = _mix64_int(int(seed) + _GOLDEN)
    key = _mix64_int((key ^ (int(unit) & _MASK64)) + _GOLDEN)
    return _mix64_int((key ^ (int(round) & _MASK64)) + _GOLDEN)


def random_scores(ids: torch.Tensor | np.ndarray, seed: int, unit: int, round: int) -> torch.Tensor:
    """Deterministic uniform scores in [0, 1): ``splitmix64(id + key(seed, unit, round))``.

    Each score depends only on its own id and the key, never on the pool's order, size or device.
    The key is itself a splitmix64 chain over ``(seed, unit, round)``, so units and rounds draw
    unrelated streams.

    Args:
        ids: integer ids, any shape (torch tensor on any device, or numpy array).
        seed: run seed.
        unit: unit index (e.g. concept x strategy x mode).
        round: active-learning round.

    Returns:
        float64 tensor of the shape of ``ids`` on its device, 53 random bits per score.
    """
    key = _random_key(seed, unit, round)
    t = torch.as_tensor(np.asarray(ids) if isinstance(ids, np.ndarray) else ids)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"random_scores: ids must be integers, got dtype {t.dtype}")
    h = _mix64(t.to(torch.int64) + _signed64(key))
    return _srl(h, 11).to(torch.float64) * (1.0 / (1 << 53))


# ------------------------------------------------------------------------------------------- top-k


def _rank_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores as used for ranking: NaN counts as -inf (ranked last)."""
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    return torch.where(torch.isnan(scores), torch.full_like(scores, -math.inf), scores)


def _order(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by score descending, then id ascending."""
    by_id = torch.argsort(ids, stable=True)
    return by_id[torch.argsort(scores[by_id], descending=True, stable=True)]


def _check_b(b: int) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0:
        raise ConfigError(f"b={b!r}: the number to select must be an integer >= 0")
    return int(b)


def _topk_positions(s: torch.Tensor, ids: torch.Tensor, b: int) -> torch.Tensor:
    """Positions of the ``min(b, n)`` best entries of ``s`` (NaN-free), by score desc then id asc."""
    n = s.shape[0]
    k = min(b, n)
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=s.device)
    if k == n:
        return _order(s, ids)
    thr = torch.topk(s, k, sorted=False).values.min()
    tied = (s == thr).nonzero().squeeze(1)
    above = (s > thr).nonzero().squeeze(1)
    need = k - above.shape[0]
    tied = tied[torch.topk(ids[tied], need, largest=False, sorted=False).indices]
    keep = torch.cat([above, tied])
    return keep[_order(s[keep], ids[keep])]


def select_topk(scores: torch.Tensor, ids: torch.Tensor, b: int) -> torch.Tensor:
    """Ids of the ``b`` highest scores, ties broken by the lower id.

    O(n) via ``topk`` plus a sort of the ``b`` winners. NaN scores rank below everything.

    Args:
        scores: ``(n,)`` scores.
        ids: ``(n,)`` unique int64 ids of the candidates, same device.
        b: how many to select, >= 0.

    Returns:
        ``(min(b, n),)`` int64 ids ordered by score descending, then id ascending.
    """
    b = _check_b(b)
    if scores.dim() != 1 or ids.shape != scores.shape:
        raise ValueError(
            f"select_topk: scores {tuple(scores.shape)} and ids {tuple(ids.shape)} must be equal-length 1-D"
        )
    ids = ids.to(torch.int64)
    return ids[_topk_positions(_rank_scores(scores), ids, b)]


def select_topk_segmented(
    scores: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, b: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-segment :func:`select_topk` over a CSR batch.

    Segment ``u`` is ``scores[offsets[u]:offsets[u + 1]]`` (with the matching ``ids``). Vectorised
    (a dense per-segment threshold, then exact sorts of the survivors) for many segments or on GPU;
    a loop of :func:`select_topk` for up to 256 segments on CPU, or for very uneven segments, where
    that is faster. Results are identical either way.

    Args:
        scores: ``(M,)`` scores of all segments, concatenated.
        ids: ``(M,)`` int64 ids, unique within each segment.
        offsets: ``(U + 1,)`` int64, ``offsets[0] = 0``, non-decreasing, ``offsets[U] = M``; empty
            segments are allowed.
        b: how many to select per segment, >= 0.

    Returns:
        ``(sel_ids, sel_scores, counts)``: ``sel_ids (U, b)`` int64, each row ordered by score
        descending then id ascending and padded with -1; ``sel_scores (U, b)`` the matching scores
        (NaN input scores appear as -inf) padded with NaN; ``counts (U,)`` int64 =
        ``min(b, segment length)``.
    """
    b = _check_b(b)
    if scores.dim() != 1 or ids.shape != scores.shape:
        raise ValueError(
            f"select_topk_segmented: scores {tuple(scores.shape)} and ids {tuple(ids.shape)} "
            "must be equal-length 1-D"
        )
    offsets = torch.as_tensor(offsets, device=scores.device)
    M = scores.shape[0]
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.is_floating_point():
        raise ValueError(
            f"select_topk_segmented: offsets must be a 1-D integer (U + 1,) tensor, got {offsets}"
        )
    offsets = offsets.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != M or bool((lengths < 0).any()):
        raise ValueError(
            f"select_topk_segmented: offsets must start at 0, be non-decreasing and end at M={M}; "
            f"got first {int(offsets[0])}, last {int(offsets[-1])}"
        )
    U = lengths.shape[0]
    dev = scores.device
    s = _rank_scores(scores)
    ids = ids.to(torch.int64)
    sel_ids = torch.full((U, b), -1, dtype=torch.int64, device=dev)
    sel_scores = torch.full((U, b), math.nan, dtype=s.dtype, device=dev)
    counts = lengths.clamp(max=b)
    if M == 0 or b == 0:
        return sel_ids, sel_scores, counts
    max_len = int(lengths.max())
    # On CPU a short loop of O(n) per-segment selections beats the vectorised sorts (measured); so
    # does any loop when segments are so uneven that padding them to a rectangle would be wasteful.
    few = dev.type == "cpu" and U <= 256
    if max_len > b and (few or U * max_len > 4 * M + 4096):
        bounds = offsets.tolist()
        for u in range(U):
            lo, hi = bounds[u], bounds[u + 1]
            pos = lo + _topk_positions(s[lo:hi], ids[lo:hi], b)
            sel_ids[u, : pos.shape[0]] = ids[pos]
            sel_scores[u, : pos.shape[0]] = s[pos]
        return sel_ids, sel_scores, counts
    seg = torch.repeat_interleave(torch.arange(U, device=dev), lengths)
    if max_len > b:
        # Cheap prefilter: each segment's b-th largest score via a dense padded topk; only scores
        # at or above it (b per segment plus ties) go through the exact sorts below.
        start = offsets[:-1]
        dense = torch.full((U, max_len), -math.inf, dtype=s.dtype, device=dev)
        dense[seg, torch.arange(M, device=dev) - start[seg]] = s
        kth = torch.topk(dense, b, dim=1, sorted=True).values[:, b - 1]
        cand = (s >= kth[seg]).nonzero().squeeze(1)
    else:
        cand = torch.arange(M, device=dev)
    c_s, c_ids, c_seg = s[cand], ids[cand], seg[cand]
    order = _order(c_s, c_ids)
    # Group by segment, keeping the (score desc, id asc) order inside each segment.
    order = order[torch.argsort(c_seg[order], stable=True)]
    c_seg = c_seg[order]
    n_cand = torch.bincount(c_seg, minlength=U)
    c_start = torch.cumsum(n_cand, 0) - n_cand
    rank = torch.arange(c_seg.shape[0], device=dev) - c_start[c_seg]
    keep = rank < b
    rows, cols, src = c_seg[keep], rank[keep], order[keep]
    sel_ids[rows, cols] = c_ids[src]
    sel_scores[rows, cols] = c_s[src]
    return sel_ids, sel_scores, counts
