"""Per-round scoring and top-b selection of the SEALS units.

Every round, each unit (concept x strategy x mode) has a linear model ``(w_u, b_u)`` and a strategy kind:

- 0 ``maxent``: the binary entropy ``H(p)`` (natural log) of ``p = sigmoid(w_u . x + b_u)``;
- 1 ``mlp``: ``p`` itself (most likely positive first);
- 2 ``id`` (information density): ``H(p) * max(x . ref_u, 0) ** beta`` with ``ref_u`` a per-unit reference
  mean vector.

Selection keeps the top-``b`` per unit by score descending, ties broken by the LOWER global id, so results
are deterministic whatever the blocking, chunking, device or backend. Scores are computed with a
numerically stable form of ``H`` (``softplus``-based, exact in fp32 for any logit); NaN scores (NaN inputs)
rank as ``-inf``.

- :func:`score_select`: a CSR batch of candidates (rows of a resident embedding matrix); the torch backend
  is the reference and the CPU path, the ``cuda`` backend runs the fused kernels of :mod:`seals_gpu.kernels`.
- :func:`score_all`: All-mode scoring that streams the whole pool in blocks shared by all units.
- :func:`merge_topb`: merges two partial results (associative; equals the top-b of the union).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import kernels
from .errors import ConfigError
from .pool import sorted_unique

__all__ = [
    "TopB",
    "score_select",
    "score_candidates",
    "score_all",
    "merge_topb",
    "strategy_scores",
    "pq_logits",
    "KIND_MAXENT",
    "KIND_MLP",
    "KIND_ID",
    "KIND_NAMES",
    "BACKENDS",
]

KIND_MAXENT, KIND_MLP, KIND_ID = 0, 1, 2
KIND_NAMES = {KIND_MAXENT: "maxent", KIND_MLP: "mlp", KIND_ID: "id"}
BACKENDS = ("auto", "torch", "cuda")
_INT64_MAX = torch.iinfo(torch.int64).max
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------- TopB
@dataclass
class TopB:
    """Per-unit top-b. Row ``u`` holds ``counts[u]`` valid entries first, best first, then padding.

    Validity comes from ``counts`` only: every int64, -1 included, is a legal id.

    Attributes:
        ids: (U, b) int64 global ids, padded with -1.
        scores: (U, b) float32 scores, padded with -inf.
        counts: (U,) int64 number of valid entries per unit.
    """

    ids: torch.Tensor
    scores: torch.Tensor
    counts: torch.Tensor

    @property
    def n_units(self) -> int:
        return int(self.ids.shape[0])

    @property
    def b(self) -> int:
        return int(self.ids.shape[1])

    @property
    def device(self) -> torch.device:
        return self.ids.device

    @classmethod
    def empty(
        cls,
        n_units: int,
        b: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> TopB:
        """All-padding result for ``n_units`` units of width ``b``."""
        return cls(
            torch.full((n_units, b), -1, dtype=torch.int64, device=device),
            torch.full((n_units, b), _NEG_INF, dtype=dtype, device=device),
            torch.zeros(n_units, dtype=torch.int64, device=device),
        )

    def to(self, device: torch.device | str) -> TopB:
        """A copy on ``device``."""
        return TopB(self.ids.to(device), self.scores.to(device), self.counts.to(device))

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, scores, counts)`` as host numpy arrays (int64, float32, int64)."""
        return (
            self.ids.detach().cpu().numpy(),
            self.scores.detach().to(torch.float32).cpu().numpy(),
            self.counts.detach().cpu().numpy(),
        )

    def unit(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """The valid ``(ids, scores)`` of unit ``u`` (host numpy), best first."""
        c = int(self.counts[u])
        return self.ids[u, :c].cpu().numpy(), self.scores[u, :c].to(torch.float32).cpu().numpy()


# ------------------------------------------------------------------------------------------ strategy math
def strategy_scores(
    z: torch.Tensor, kind: torch.Tensor | int, sim: torch.Tensor | None = None, beta: float = 1.0
) -> torch.Tensor:
    """Strategy scores from logits, in ``z``'s dtype (the formula the CUDA kernel uses).

    ``e = exp(-|z|)``, ``p = sigmoid(z)``, ``H = p * softplus(-z) + (1 - p) * softplus(z)`` with
    ``softplus(+-z) = max(+-z, 0) + log1p(e)``: accurate for any ``z``, no ``log(0)``.

    Args:
        z: logits, any shape.
        kind: strategy kind(s), broadcastable to ``z`` (0 maxent, 1 mlp, 2 id).
        sim: ``x . ref_u`` (broadcastable to ``z``); required where kind is 2.
        beta: exponent of the similarity term (kind 2).

    Returns:
        Scores of ``z``'s shape; NaN is mapped to -inf and -0 to +0.
    """
    kind = torch.as_tensor(kind, device=z.device)
    e = torch.exp(-z.abs())
    lg = torch.log1p(e)
    inv = 1.0 / (1.0 + e)
    pos = z >= 0
    p = torch.where(pos, inv, e * inv)
    q = torch.where(pos, e * inv, inv)
    h = p * (torch.clamp_min(-z, 0.0) + lg) + q * (torch.clamp_min(z, 0.0) + lg)
    s = torch.where(kind == KIND_MLP, p, h)
    is_id = kind == KIND_ID
    if bool(is_id.any()):
        if sim is None:
            raise ValueError("kind 2 (id) needs sim = x . ref_u")
        s = torch.where(is_id, s * torch.clamp_min(sim, 0.0).pow(beta), s)
    s = torch.where(torch.isnan(s), torch.full_like(s, _NEG_INF), s)
    return s + 0.0  # -0 -> +0


# ---------------------------------------------------------------------------------------------- validation
def _check_b(b: int) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or int(b) < 1:
        raise ConfigError(f"b={b!r}; the number of items selected per unit must be an integer >= 1")
    return int(b)


def _check_units(
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    d: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Validate the per-unit model tensors; returns them on ``device`` and whether any unit is kind 2."""
    W = torch.as_tensor(W)
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (U, d), got shape {tuple(W.shape)}")
    U, dw = (int(s) for s in W.shape)
    if d is not None and dw != d:
        raise ValueError(f"W has dimension {dw} but the embeddings have {d}")
    if not W.is_floating_point():
        raise ValueError(f"W must be floating point, got {W.dtype}")
    bias = torch.as_tensor(bias)
    if bias.shape != (U,):
        raise ValueError(f"bias must have shape ({U},) to match W, got {tuple(bias.shape)}")
    kind = torch.as_tensor(kind)
    if kind.shape != (U,):
        raise ValueError(f"kind must have shape ({U},) to match W, got {tuple(kind.shape)}")
    if kind.is_floating_point() or kind.dtype == torch.bool:
        raise ValueError(f"kind must be an integer tensor (int8), got {kind.dtype}")
    kind_h = kind.detach().cpu()
    bad = sorted({int(v) for v in kind_h.unique().tolist()} - set(KIND_NAMES))
    if bad:
        raise ValueError(f"kind values {bad} are not strategy kinds; use 0 (maxent), 1 (mlp) or 2 (id)")
    has_id = bool((kind_h == KIND_ID).any())
    if has_id:
        if ref is None:
            raise ValueError("units of kind 2 (id) need ref, a (U, d) tensor of reference vectors")
        ref = torch.as_tensor(ref)
        if ref.shape != (U, dw):
            raise ValueError(f"ref must have shape ({U}, {dw}) to match W, got {tuple(ref.shape)}")
        ref = ref.detach().to(device)
    else:
        ref = None
    if not (
        isinstance(beta, (int, float, np.floating, np.integer)) and math.isfinite(float(beta)) and beta >= 0
    ):
        raise ConfigError(f"beta={beta!r}; the id-strategy exponent must be a finite number >= 0")
    return (
        W.detach().to(device),
        bias.detach().to(device),
        kind.detach().to(device=device, dtype=torch.int8),
        ref,
        has_id,
    )


def _check_offsets(offsets: torch.Tensor, M: int, U: int) -> np.ndarray:
    off = torch.as_tensor(offsets)
    if off.shape != (U + 1,):
        raise ValueError(f"offsets must have shape ({U + 1},) (U+1 for U={U} units), got {tuple(off.shape)}")
    if off.is_floating_point():
        raise ValueError(f"offsets must be int64, got {off.dtype}")
    oh = off.detach().to("cpu", torch.int64).numpy()
    if oh[0] != 0 or oh[-1] != M:
        raise ValueError(
            f"offsets must start at 0 and end at M={M}, got offsets[0]={oh[0]}, offsets[-1]={oh[-1]}"
        )
    dec = np.flatnonzero(np.diff(oh) < 0)
    if dec.size:
        i = int(dec[0])
        raise ValueError(
            f"offsets must be non-decreasing: offsets[{i}]={oh[i]} > offsets[{i + 1}]={oh[i + 1]}"
        )
    return oh


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of {list(BACKENDS)}")


# ------------------------------------------------------------------------------------------ merging top-b
def merge_topb(a: TopB, c: TopB, b: int) -> TopB:
    """Merge two per-unit top-b results into the top-``b`` of their union (score desc, id asc).

    The inputs must hold disjoint ids per unit (e.g. from disjoint blocks of the pool). The merge is
    associative and commutative, and merging partial results of any split of a candidate set gives the
    top-b of the whole set.

    Args:
        a, c: results for the same U units (any widths, same device).
        b: width of the result.

    Returns:
        A :class:`TopB` of shape (U, b) in the wider of the two score dtypes.
    """
    b = _check_b(b)
    if a.n_units != c.n_units:
        raise ValueError(f"cannot merge results for {a.n_units} and {c.n_units} units")
    dev = a.device
    dtype = torch.promote_types(a.scores.dtype, c.scores.dtype)
    ids = torch.cat([a.ids, c.ids.to(dev)], dim=1)
    sc = torch.cat([a.scores.to(dtype), c.scores.to(dev, dtype)], dim=1)
    valid = torch.cat(
        [
            torch.arange(a.b, device=dev)[None, :] < a.counts[:, None],
            torch.arange(c.b, device=dev)[None, :] < c.counts.to(dev)[:, None],
        ],
        dim=1,
    )
    U = a.n_units
    width = ids.shape[1]
    if width < b:
        pad = b - width
        ids = torch.cat([ids, torch.full((U, pad), -1, dtype=torch.int64, device=dev)], dim=1)
        sc = torch.cat([sc, torch.full((U, pad), _NEG_INF, dtype=dtype, device=dev)], dim=1)
        valid = torch.cat([valid, torch.zeros((U, pad), dtype=torch.bool, device=dev)], dim=1)
    key = torch.where(valid, ids, _INT64_MAX)
    sc = torch.where(valid & ~torch.isnan(sc), sc, torch.full_like(sc, _NEG_INF))
    o = torch.argsort(key, dim=1, stable=True)
    key, sc, valid = key.gather(1, o), sc.gather(1, o), valid.gather(1, o)
    sc, o = torch.sort(sc, dim=1, descending=True, stable=True)
    key, valid = key.gather(1, o), valid.gather(1, o)
    # valid entries before padding even where a valid score is -inf (a NaN score) and its id is int64's
    # largest, which ties with the padding's key: validity comes from the counts, never from an id
    o = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    sc, key, valid = sc.gather(1, o), key.gather(1, o), valid.gather(1, o)
    sc, key, valid = sc[:, :b], key[:, :b], valid[:, :b]
    return TopB(
        torch.where(valid, key, -1),
        torch.where(valid, sc, torch.full_like(sc, _NEG_INF)),
        valid.sum(dim=1),
    )


def _topk_cols(S: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``S`` (R, n), the ``kk`` best columns by (score desc, column asc) and their scores, best
    first. Columns stand for ascending ids, so ties go to the lower id."""
    R = S.shape[0]
    t = torch.topk(S, kk, dim=1, largest=True, sorted=False).values.amin(dim=1)
    sel = S >= t[:, None]
    if not bool((sel.sum(dim=1) == kk).all()):  # a tie group straddles the k-th place: take lower ids
        gt = S > t[:, None]
        need = kk - gt.sum(dim=1)
        eq = S == t[:, None]
        sel = gt | (eq & (eq.cumsum(dim=1, dtype=torch.int32) <= need[:, None]))
    cols = sel.nonzero()[:, 1].view(R, kk)  # row-major: ascending columns = ascending ids
    vals, o = torch.sort(S.gather(1, cols), dim=1, descending=True, stable=True)
    return vals, cols.gather(1, o)


def _rowwise_topb(S: torch.Tensor, ids: torch.Tensor, k: int) -> TopB:
    """Top-k of each row of ``S`` (R, n) by (score desc, id asc); ``ids`` (n,) must be ascending.

    -inf entries are never counted (they mark excluded items). Returns a TopB of width min(k, n).
    """
    R, n = S.shape
    kk = min(k, n)
    if kk == 0:
        return TopB.empty(R, 0, S.device, S.dtype)
    vals, cols = _topk_cols(S, kk)
    valid = vals > _NEG_INF
    return TopB(torch.where(valid, ids[cols], -1), vals, valid.sum(dim=1))


# -------------------------------------------------------------------------------------------- score_select
def _unit_range(off_h: np.ndarray, s: int, e: int) -> tuple[int, int]:
    """Units whose segments hold positions s and e-1 (inclusive range)."""
    u0 = int(np.searchsorted(off_h, s, side="right")) - 1
    u1 = int(np.searchsorted(off_h, e - 1, side="right")) - 1
    return u0, u1


def _default_chunk_rows(d: int) -> int:
    return max(256, (1 << 22) // max(d, 1))


def _score_chunk(
    emb: torch.Tensor,
    rows_c: torch.Tensor,
    loc: np.ndarray,
    u0: int,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind_h: np.ndarray,
    ref: torch.Tensor | None,
    beta: float,
    cdt: torch.dtype,
) -> torch.Tensor:
    """Scores of one chunk of candidates whose units are ``u0 + j`` over ``[loc[j], loc[j+1])``.

    Per unit segment: ``(x * w_u).sum(1)``, an elementwise product and a row reduction, so every row is
    reduced the same way wherever it sits (equal rows give bit-equal scores) and W is never gathered."""
    x = emb.index_select(0, rows_c).to(cdt)
    z = torch.empty(x.shape[0], dtype=cdt, device=x.device)
    sim = None
    for j in range(loc.size - 1):
        a, e = int(loc[j]), int(loc[j + 1])
        if a == e:
            continue
        u = u0 + j
        xs = x[a:e]
        z[a:e] = (xs * W[u]).sum(dim=1) + bias[u]
        if kind_h[u] == KIND_ID:
            if sim is None:
                sim = torch.zeros_like(z)
            sim[a:e] = (xs * ref[u]).sum(dim=1)
    lens = torch.from_numpy(np.diff(loc)).to(x.device)
    k_c = torch.repeat_interleave(torch.from_numpy(kind_h[u0 : u0 + loc.size - 1]).to(x.device), lens)
    return strategy_scores(z, k_c, sim, beta)


def _score_select_torch(
    emb: torch.Tensor,
    rows: torch.Tensor,
    ids: torch.Tensor,
    off_h: np.ndarray,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    b: int,
    cdt: torch.dtype,
    chunk_rows: int,
) -> TopB:
    """Chunked scoring (bounded temporaries), then one segmented top-b over all the scores.

    Scores are kept for the whole batch (M floats, a third of the ids' size) so the selection runs once:
    a per-segment ``topk(b)`` prefilter and a sort of the survivors (:func:`strategies.select_topk_segmented`,
    same order: score desc, id asc, NaN last). Merging per-chunk top-b results instead was measured
    1.8-4.7x slower on CPU (three argsorts per chunk plus a (U, 2b) sort per merge)."""
    scores = _score_chunks(emb, rows, off_h, W, bias, kind, ref, beta, cdt, chunk_rows)
    out = _select_segments(scores, ids, torch.from_numpy(off_h).to(emb.device), b)
    out.scores = out.scores.to(torch.float32)
    return out


def _score_chunks(
    emb: torch.Tensor,
    rows: torch.Tensor,
    off_h: np.ndarray,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    cdt: torch.dtype,
    chunk_rows: int,
) -> torch.Tensor:
    """(M,) scores of a CSR batch in ``cdt``, ``chunk_rows`` candidates at a time (bounded temporaries)."""
    M = rows.numel()
    W, bias = W.to(cdt), bias.to(cdt)
    ref = None if ref is None else ref.to(cdt)
    kind_h = kind.cpu().numpy()
    scores = torch.empty(M, dtype=cdt, device=emb.device)
    for s in range(0, M, chunk_rows):
        e = min(M, s + chunk_rows)
        u0, u1 = _unit_range(off_h, s, e)
        loc = np.clip(off_h[u0 : u1 + 2], s, e) - s
        scores[s:e] = _score_chunk(emb, rows[s:e], loc, u0, W, bias, kind_h, ref, beta, cdt)
    return scores


def _select_segments(scores: torch.Tensor, ids: torch.Tensor, off: torch.Tensor, b: int) -> TopB:
    """Top-b per CSR segment (score desc, id asc) as a :class:`TopB` (padding -1 / -inf), by
    :func:`strategies.select_topk_segmented`."""
    from .strategies import select_topk_segmented

    sel_ids, sel_sc, counts = select_topk_segmented(scores, ids, off, b)
    valid = torch.arange(b, device=scores.device)[None, :] < counts[:, None]
    return TopB(sel_ids, torch.where(valid, sel_sc, torch.full_like(sel_sc, _NEG_INF)), counts)


def random_topb(
    ids: np.ndarray, exclude: Sequence[np.ndarray], keys: Sequence[int], seed: int, round_no: int, b: int
) -> TopB:
    """All-mode Random over one block of candidates: per unit, the ``b`` of ``ids`` not in its ``exclude``
    (sorted) with the highest :func:`~seals_gpu.strategies.random_scores` ``(id, seed, key, round_no)``, as a
    float64 :class:`TopB` (score desc, id asc). Over disjoint blocks, :func:`merge_topb` of the parts is the
    top-b of their union (the scores are exact float64), so shards select what one list would."""
    from .pool import isin_sorted
    from .strategies import random_scores

    b = _check_b(b)
    ids = np.asarray(ids, dtype=np.int64)
    U = len(keys)
    out = TopB(
        torch.full((U, b), -1, dtype=torch.int64),
        torch.full((U, b), _NEG_INF, dtype=torch.float64),
        torch.zeros(U, dtype=torch.int64),
    )
    for j, (ex, key) in enumerate(zip(exclude, keys, strict=True)):
        cand = ids[~isin_sorted(ids, np.asarray(ex, dtype=np.int64))] if len(ex) else ids
        sc = random_scores(cand, seed, int(key), round_no)
        top = _select_segments(sc, torch.from_numpy(cand), torch.tensor([0, cand.size]), b)
        out.ids[j], out.scores[j], out.counts[j] = top.ids[0], top.scores[0], top.counts[0]
    return out


def _padded_topb(P: torch.Tensor, I: torch.Tensor, counts: torch.Tensor, k: int) -> TopB:
    """Top-k of each row of ``P`` (U, L) by (score desc, id asc), where row u's ids ``I[u]`` ascend along
    the row (padding: -inf scores at the end). ``counts`` = valid entries kept per row."""
    U, L = P.shape
    kk = min(k, L)
    out = TopB.empty(U, k, P.device, P.dtype)
    out.counts = counts
    if kk == 0 or U == 0:
        return out
    vals, cols = _topk_cols(P, kk)
    valid = torch.arange(kk, device=P.device)[None, :] < counts[:, None]
    out.ids[:, :kk] = torch.where(valid, I.gather(1, cols), -1)
    out.scores[:, :kk] = torch.where(valid, vals, torch.full_like(vals, _NEG_INF))
    return out


def _dense_profitable(
    rows: torch.Tensor, ids: torch.Tensor, off_h: np.ndarray, U: int, n_rows: int
) -> tuple | None:
    """Whether the union-GEMM path beats per-row gathers, and its inputs: the distinct rows of all units
    (pools of one concept's strategies overlap heavily) scored against every unit in one matmul, or every
    row of ``emb`` (``ur`` None) when the pools together cover much of it."""
    M = rows.numel()
    if M == 0 or U == 0 or rows.device.type != "cpu":
        return None
    lens = np.diff(off_h)
    L = int(lens.max())
    if U * L > 4 * M + 1024:
        return None  # very uneven pools: padding would cost more than it saves
    starts = np.zeros(M, dtype=bool)
    starts[off_h[:-1][lens > 0]] = True
    rising = torch.ones(M, dtype=torch.bool)
    rising[1:] = ids[1:] > ids[:-1]
    if not bool((rising | torch.from_numpy(starts)).all()):
        return None  # the padded top-b needs ascending ids within each segment (pools are sorted)
    if U >= 4 and n_rows * U <= 10 * M and n_rows * U <= (1 << 26):
        # the pools cover much of the matrix: a GEMM over every row (no gather at all) costs less than
        # gathering M rows (a GEMM multiply-add is ~10x cheaper than a gathered one)
        return None, rows, lens, L
    if U == 1:
        return None  # nothing to share: one gather per row either way, and the chunked path copies less
    ur = inv = mark = None
    if 8 * M < n_rows:  # few candidates in a big matrix: sort them (O(M log M), nothing of size N)
        ur, inv = torch.unique(rows, return_inverse=True)
        R = ur.numel()
    else:  # many: count the distinct rows with a bitmap over emb's rows (O(M + N), no sort of millions)
        mark = torch.zeros(n_rows, dtype=torch.bool)
        mark[rows] = True
        R = int(mark.sum())
    if R * U > 16 * M or R * U > (1 << 26) or 2 * R > M:  # the GEMM pays only when rows are shared
        return None
    if mark is not None:
        ur = mark.nonzero().squeeze(1)
        inv = (torch.cumsum(mark, 0, dtype=torch.int64) - 1)[rows]
    return ur, inv, lens, L


def _score_select_dense(
    emb: torch.Tensor,
    ids: torch.Tensor,
    off_h: np.ndarray,
    plan: tuple,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    b: int,
    cdt: torch.dtype,
) -> TopB:
    """CPU fast path: logits of the distinct candidate rows for every unit by one GEMM, then a padded top-b.
    Equal to :func:`_score_select_torch` up to float rounding of the dot products (same tie rule)."""
    ur, inv, lens, L = plan
    U = W.shape[0]
    dev = emb.device
    lens_t = torch.from_numpy(lens).to(dev)
    unit_of = torch.repeat_interleave(torch.arange(U, device=dev), lens_t)
    X = (emb if ur is None else emb[ur]).to(cdt)  # ur None: every row of emb (the all-rows plan)
    Wc = W.to(cdt)
    # (U, R) layout: each unit's candidates are read along one row in ascending order (rows ascend with
    # ids in a pool), ~5x faster than picking them out of the columns of an (R, U) product.
    z = torch.addmm(bias.to(cdt)[:, None], Wc, X.T)[unit_of, inv]
    kind_c = kind.to(dev)[unit_of]
    sim = None
    if ref is not None and bool((kind == KIND_ID).any()):
        sim = (ref.to(cdt) @ X.T)[unit_of, inv]
    sc = strategy_scores(z, kind_c, sim, beta)
    # padded (U, L) layout by one flat scatter: position of candidate j = unit * L + (j - offset[unit])
    flat = torch.arange(unit_of.numel(), device=dev) + (
        unit_of * L - torch.from_numpy(off_h[:-1]).to(dev)[unit_of]
    )
    P = torch.full((U * L,), _NEG_INF, dtype=sc.dtype, device=dev)
    P[flat] = sc
    P = P.view(U, L)
    I = torch.full((U * L,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
    I[flat] = ids
    I = I.view(U, L)
    out = _padded_topb(P, I, lens_t.clamp(max=b), b)
    out.scores = out.scores.to(torch.float32)
    return out


def _use_cuda(backend: str, emb: torch.Tensor, b: int, cdt: torch.dtype) -> bool:
    """Resolve ``backend`` for this call; raises ConfigError when 'cuda' cannot be honoured."""
    if backend == "torch":
        return False
    problems = []
    if emb.device.type != "cuda":
        problems.append(f"emb is on {emb.device}, not a cuda device")
    elif not (ok := kernels.available(emb.device, compile=True))[0]:
        problems.append(ok[1])
    if b > kernels.MAX_B:
        problems.append(f"b={b} exceeds the kernel's limit {kernels.MAX_B}")
    if emb.dtype not in (torch.float32, torch.float16):
        problems.append(f"emb dtype {emb.dtype} (the kernel reads float32 or float16)")
    if cdt != torch.float32:
        problems.append(f"compute_dtype={cdt} (the kernel computes in float32)")
    if emb.device.type == "cuda" and not emb.is_contiguous():
        problems.append("emb is not contiguous")
    if backend == "cuda" and problems:
        raise ConfigError(
            "backend='cuda' is not usable: " + "; ".join(problems) + "; use backend='torch' or 'auto'"
        )
    return not problems


def _check_emb(emb: torch.Tensor) -> None:
    if not isinstance(emb, torch.Tensor):
        raise ValueError(
            f"emb must be a 2-D torch.Tensor (N, d), got {type(emb).__name__}; use torch.from_numpy"
        )
    if emb.dim() != 2:
        raise ValueError(f"emb must be a 2-D tensor (N, d), got shape {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise ValueError(f"emb must be floating point, got {emb.dtype}")


def _check_batch(
    emb: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, U: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    dev = emb.device
    rows = torch.as_tensor(rows)
    ids = torch.as_tensor(ids)
    if rows.dim() != 1:
        raise ValueError(f"rows must be 1-D (M,), got shape {tuple(rows.shape)}")
    if ids.shape != rows.shape:
        raise ValueError(f"ids must have the shape of rows {tuple(rows.shape)}, got {tuple(ids.shape)}")
    for name, t in (("rows", rows), ("ids", ids)):
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
    rows = rows.to(device=dev, dtype=torch.int64)
    ids = ids.to(device=dev, dtype=torch.int64)
    M = rows.numel()
    off_h = _check_offsets(offsets, M, U)
    if M:
        lo, hi = int(rows.min()), int(rows.max())
        N = int(emb.shape[0])
        if lo < 0 or hi >= N:
            bad = lo if lo < 0 else hi
            raise ValueError(f"rows must index emb's {N} rows, got row {bad}")
    return rows, ids, off_h


def score_select(
    emb: torch.Tensor,
    rows: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    b: int,
    *,
    backend: str = "auto",
    compute_dtype: torch.dtype = torch.float32,
    chunk_rows: int | None = None,
) -> TopB:
    """Score a CSR batch of candidates and keep each unit's top-``b`` (score desc, id asc).

    Args:
        emb: (N, d) embedding matrix (float32/float16; l2-normalised), resident on the compute device.
        rows: (M,) int64 row positions of the candidates in ``emb``.
        ids: (M,) int64 global ids of the candidates (returned, and the tie-break key).
        offsets: (U+1,) int64 CSR bounds: unit u's candidates are ``[offsets[u], offsets[u+1])``.
        W: (U, d) weights; bias: (U,) biases.
        kind: (U,) int8 strategy kinds (0 maxent, 1 mlp, 2 id).
        ref: (U, d) reference vectors (kind 2), or None when no unit is kind 2.
        beta: exponent of the similarity term of kind 2 (>= 0).
        b: items per unit (>= 1; <= 1024 for the CUDA kernel).
        backend: ``"torch"`` (reference), ``"cuda"`` (fused kernel; ConfigError if unusable) or ``"auto"``
            (kernel when ``emb`` is on CUDA and the kernels work, else torch).
        compute_dtype: float32, or float64 for a test oracle (torch backend only).
        chunk_rows: candidates per chunk of the torch backend (bounds its memory; default ~4M floats).

    Returns:
        :class:`TopB` on ``emb``'s device: ids (U, b) padded -1, scores (U, b) float32 padded -inf,
        counts (U,) = min(b, segment length).
    """
    _check_backend(backend)
    b = _check_b(b)
    _check_emb(emb)
    dev = emb.device
    W_, bias, kind, ref, _ = _check_units(W, bias, kind, ref, beta, int(emb.shape[1]), dev)
    rows, ids, off_h = _check_batch(emb, rows, ids, offsets, int(W_.shape[0]))
    if compute_dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"compute_dtype={compute_dtype}; use torch.float32 (or float64 for a test oracle)")
    if _use_cuda(backend, emb, b, compute_dtype):
        offsets_t = torch.from_numpy(off_h).to(dev)
        out_ids, out_sc, counts = kernels.score_select_cuda(
            emb, rows, ids, offsets_t, W_, bias, kind, ref, float(beta), b, offsets_host=off_h
        )
        return TopB(out_ids, out_sc, counts)
    chunk = _default_chunk_rows(int(emb.shape[1])) if chunk_rows is None else int(chunk_rows)
    if chunk < 1:
        raise ConfigError(f"chunk_rows={chunk_rows}; must be >= 1")
    if backend == "auto" and chunk_rows is None:
        plan = _dense_profitable(rows, ids, off_h, int(W_.shape[0]), int(emb.shape[0]))
        if plan is not None:
            return _score_select_dense(
                emb, ids, off_h, plan, W_, bias, kind, ref, float(beta), b, compute_dtype
            )
    return _score_select_torch(
        emb, rows, ids, off_h, W_, bias, kind, ref, float(beta), b, compute_dtype, chunk
    )


def score_candidates(
    emb: torch.Tensor,
    rows: torch.Tensor,
    offsets: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    *,
    backend: str = "auto",
    compute_dtype: torch.dtype = torch.float32,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """The strategy score of every candidate of a CSR batch (no selection).

    Args:
        emb, rows, offsets, W, bias, kind, ref, beta: as in :func:`score_select`.
        backend: ``"torch"``, ``"cuda"`` or ``"auto"``.
        compute_dtype: float32 or float64 (torch backend).
        chunk_rows: candidates per chunk of the torch backend.

    Returns:
        (M,) scores in CSR order (float32, or ``compute_dtype`` for the torch backend).
    """
    _check_backend(backend)
    _check_emb(emb)
    dev = emb.device
    W_, bias, kind, ref, _ = _check_units(W, bias, kind, ref, beta, int(emb.shape[1]), dev)
    rows, _, off_h = _check_batch(emb, rows, rows, offsets, int(W_.shape[0]))
    if _use_cuda(backend, emb, 1, compute_dtype):
        return kernels.score_candidates_cuda(
            emb, rows, torch.from_numpy(off_h).to(dev), W_, bias, kind, ref, float(beta), offsets_host=off_h
        )
    chunk = _default_chunk_rows(int(emb.shape[1])) if chunk_rows is None else max(1, int(chunk_rows))
    return _score_chunks(emb, rows, off_h, W_, bias, kind, ref, float(beta), compute_dtype, chunk)


# ----------------------------------------------------------------------------------------------- score_all
class _Exclusion:
    """Per-unit sorted id sets to skip, applied to (U, n) score blocks on the device.

    Pairs (unit, id) are encoded as ``unit * L + position of id in the union of all excluded ids``; a
    block first finds its ids in the union (usually few hits), then tests only those (unit, hit) pairs.
    """

    def __init__(self, exclude: Sequence[np.ndarray | None] | None, U: int, device: torch.device) -> None:
        self.active = False
        if exclude is None:
            return
        if len(exclude) != U:
            raise ValueError(f"exclude must hold one id array per unit ({U}), got {len(exclude)}")
        arrays = [sorted_unique(np.asarray([] if e is None else e, dtype=np.int64).ravel()) for e in exclude]
        sizes = [a.size for a in arrays]
        if sum(sizes) == 0:
            return
        union = sorted_unique(np.concatenate(arrays))
        L = int(union.size)
        if U * L >= 2**62:
            raise ValueError(f"too many excluded ids ({L}) for {U} units")
        keys = np.concatenate([u * L + np.searchsorted(union, a) for u, a in enumerate(arrays)])
        self.union = torch.from_numpy(union).to(device)
        self.keys = torch.from_numpy(keys.astype(np.int64)).to(device)
        self.L = L
        self.U = U
        self.active = True

    def pairs(self, units: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Bool mask: whether each ``(units[i], ids[i])`` pair is excluded."""
        pos = torch.searchsorted(self.union, ids).clamp(max=self.L - 1)
        hit = self.union[pos] == ids
        k = units * self.L + pos
        kp = torch.searchsorted(self.keys, k).clamp(max=self.keys.numel() - 1)
        return hit & (self.keys[kp] == k)

    def apply(self, S: torch.Tensor, ids: torch.Tensor) -> None:
        """Set ``S[u, j] = -inf`` where ``ids[j]`` is excluded for unit ``u`` (in place)."""
        if not self.active or ids.numel() == 0:
            return
        pos = torch.searchsorted(self.union, ids).clamp(max=self.L - 1)
        hit = (self.union[pos] == ids).nonzero().squeeze(1)
        if hit.numel() == 0:
            return
        k = torch.arange(self.U, device=ids.device)[:, None] * self.L + pos[hit][None, :]
        kp = torch.searchsorted(self.keys, k).clamp(max=self.keys.numel() - 1)
        m = self.keys[kp] == k
        sub = S[:, hit]
        sub[m] = _NEG_INF
        S[:, hit] = sub


def score_all(
    blocks: Iterable[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    b: int,
    *,
    exclude: Sequence[np.ndarray | None] | None = None,
    device: torch.device | str | None = None,
    compute_dtype: torch.dtype = torch.float32,
    max_elems: int | None = None,
) -> TopB:
    """All-mode scoring: stream the whole pool once, every unit scoring every item it has not labeled.

    Each block is shared by all units (``logits = X @ W.T``); a running per-unit top-b is merged block by
    block with the same order as :func:`score_select` (score desc, id asc), so memory stays bounded by the
    block (split further so that no more than ``max_elems`` scores exist at once), never (N, U).

    Pruning: once a unit holds ``b`` items, only logits that could still beat its b-th score are scored.
    MaxEnt's score decreases with ``|z|`` and MLP's increases with ``z``, so the b-th score ``s_b`` gives a
    logit bound (``H(r) = s_b (1 - 1e-4)``, ``sigmoid(z_b) = s_b (1 - 1e-4)``, in float64). ID's score
    ``H(z) f`` (``f = max(x . ref, 0)^beta``, at most 1 for unit rows and a mean of them; blocks where it is
    not are scored densely) needs both ``H(z) >= s_b`` and ``f >= s_b / ln 2``; its ``f`` always comes from
    the dense product, so a kept pair's score does not depend on what else was kept. The 1e-4 margin is far
    above the float32 rounding of the scores, so every pruned item scores strictly below ``s_b`` and the
    result equals the unpruned one. Blocks where more than 1/8 of the (unit, item) pairs survive are scored
    densely, and the next attempt waits 1, 3, 7, ... (at most 16) blocks, so data that does not prune costs
    little more than the dense pass. Pruning skips most of the elementwise work, the exclusion test and the
    per-block top-b after the first blocks.

    Args:
        blocks: iterable of ``(ids (n,) int64, X (n, d) float)`` (torch or numpy), e.g. a store's batches.
            Ids must be unique across the pool.
        W: (U, d) weights; bias: (U,); kind: (U,) int8; ref: (U, d) or None; beta: kind-2 exponent.
        b: items per unit (>= 1).
        exclude: per unit, a sorted int64 array of ids to skip (its labeled ids), or None.
        device: where to compute (default: W's device).
        compute_dtype: float32, or float64 for a test oracle.
        max_elems: most scores held at once (default 2**24 on CUDA, 2**22 on CPU).

    Returns:
        :class:`TopB` on ``device``: ids (U, b) padded -1, scores (U, b) float32 padded -inf, counts (U,).
    """
    b = _check_b(b)
    W = torch.as_tensor(W)
    dev = torch.device(device) if device is not None else W.device
    if compute_dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"compute_dtype={compute_dtype}; use torch.float32 (or float64 for a test oracle)")
    W, bias, kind, ref, has_id = _check_units(W, bias, kind, ref, beta, None, dev)
    U, d = (int(s) for s in W.shape)
    cdt = compute_dtype
    # Logits as (n, U) = X @ W.T, read through a (U, n) view: this product's rounding was verified not to
    # depend on the block size (the Ray and in-process backends block differently and agree bit for bit).
    Wt = W.to(cdt).t().contiguous()  # (d, U)
    bc = bias.to(cdt)
    idx2 = (kind == KIND_ID).nonzero().squeeze(1)
    R2t = ref.to(cdt)[idx2].t().contiguous() if has_id else None  # (d, U2)
    kind_noid = torch.where(kind == KIND_ID, torch.zeros_like(kind), kind)
    is_maxent = (kind_noid == KIND_MAXENT)[:, None]
    bound: torch.Tensor | None = None  # per-unit pruning bound on the logits (None: recompute from the top-b)
    f_floor: torch.Tensor | None = None  # per-unit floor on id's density factor, with the bound
    have_top = False  # the running top-b has been merged at least once
    backoff = skip = 0  # after a pruning attempt that kept too much, skip the next `skip` blocks (doubling)
    excl = _Exclusion(exclude, U, dev)
    if max_elems is None:
        max_elems = (1 << 24) if dev.type == "cuda" else (1 << 22)
    step = max(1, int(max_elems) // max(U, 1))
    out = TopB.empty(U, b, dev, cdt)
    for bi, (ids_blk, X_blk) in enumerate(blocks):
        ids_t = torch.as_tensor(ids_blk).to(device=dev, dtype=torch.int64).reshape(-1)
        X = torch.as_tensor(X_blk)
        if X.dim() != 2 or X.shape[1] != d or X.shape[0] != ids_t.numel():
            raise ValueError(
                f"block {bi}: X must have shape ({ids_t.numel()}, {d}) to match its ids and W, "
                f"got {tuple(X.shape)}"
            )
        n = ids_t.numel()
        if n == 0 or U == 0:
            continue
        X = X.to(dev)
        if n > 1 and not bool((ids_t[1:] >= ids_t[:-1]).all()):
            perm = torch.argsort(ids_t, stable=True)
            ids_t, X = ids_t[perm], X[perm]
        for s in range(0, n, step):
            e = min(n, s + step)
            Xs = X[s:e].to(cdt)
            ids_s = ids_t[s:e]
            Z = (Xs @ Wt + bc).t()  # (U, n_s) view of the logits
            # id's density factor f = max(x . ref, 0)^beta, always from this one dense product (the factor of a
            # pair must not depend on what else the pruning kept)
            sim = torch.clamp_min(Xs @ R2t, 0.0).pow(beta).t() if R2t is not None else None  # (U2, n_s)
            if have_top and _PRUNE and skip == 0:
                if bound is None:
                    bound, f_floor = _prune_bound(out, kind_noid, b), _density_floor(out, b, cdt)
                keep = torch.where(is_maxent, Z.abs() <= bound[:, None], Z >= bound[:, None])
                if sim is not None:
                    # score = H(z) f >= s_b needs H(z) >= s_b (so |z| <= r, valid while f <= 1: unit rows, a
                    # mean of unit rows) and f >= s_b / ln 2; blocks where f > 1 (or NaN) are scored densely
                    keep = keep if bool(sim.max() <= 1.0) else None
                    if keep is not None:
                        keep[idx2] &= sim >= f_floor[idx2, None]
                if keep is not None and 8 * int(keep.sum()) <= keep.numel():
                    sparse = _sparse_topb(Z, keep, ids_s, kind_noid, beta, excl, b, idx2, sim)
                    out = merge_topb(out, sparse, b)
                    bound, backoff = None, 0
                    continue
                backoff = min(2 * backoff + 1, _PRUNE_MAX_BACKOFF)  # it did not pay: try again later
                skip = backoff
            elif skip:
                skip -= 1
            S = strategy_scores(Z, kind_noid[:, None], None, beta).contiguous()
            if sim is not None:
                S[idx2] = S[idx2] * sim
            S = torch.where(torch.isnan(S), torch.full_like(S, _NEG_INF), S) + 0.0
            excl.apply(S, ids_s)
            out = merge_topb(out, _rowwise_topb(S, ids_s, b), b)
            bound, have_top = None, True  # the bound follows the new top-b, computed when next tried
    out.scores = out.scores.to(torch.float32)
    return out


_PRUNE = True  # tests switch it off to compare against the unpruned computation
_PRUNE_MARGIN = 1e-4  # relative; float32 scores are accurate to ~1e-6 relative
_PRUNE_MIN_SCORE = 1e-20  # below this (near float32 underflow) no pruning
_PRUNE_MAX_BACKOFF = 16  # blocks skipped at most between pruning attempts that keep too much


def _density_floor(out: TopB, b: int, cdt: torch.dtype) -> torch.Tensor:
    """Per-unit floor on id's density factor: ``f >= s_b (1 - margin) / ln 2`` (entropy is at most ln 2),
    rounded down into ``cdt``; ``-inf`` (keep everything) for units without a usable b-th score."""
    sb = out.scores[:, b - 1].to(torch.float64)
    ok = (out.counts >= b) & torch.isfinite(sb) & (sb >= _PRUNE_MIN_SCORE)
    floor = (sb * (1.0 - _PRUNE_MARGIN) / math.log(2.0)).to(cdt)
    floor = torch.nextafter(floor, torch.full_like(floor, -math.inf))
    return torch.where(ok, floor, torch.full_like(floor, -math.inf))


def _prune_bound(out: TopB, kind: torch.Tensor, b: int) -> torch.Tensor:
    """Per-unit logit bound: maxent units keep ``|z| <= r``, mlp units keep ``z >= z_b`` (see score_all).

    Units that do not hold ``b`` items yet, or whose b-th score is not a normal positive number, get a
    bound that keeps everything (+inf for maxent, -inf for mlp); NaN logits are always dropped by the
    comparisons, which is right only once a unit's b-th score is finite and positive."""
    dev = out.scores.device
    sb = out.scores[:, b - 1].to(torch.float64)
    ok = (out.counts >= b) & torch.isfinite(sb) & (sb >= _PRUNE_MIN_SCORE)
    target = torch.where(ok, sb * (1.0 - _PRUNE_MARGIN), torch.full_like(sb, 0.5))
    maxent = kind == KIND_MAXENT
    # maxent: H is decreasing in |z| from ln 2; bisection for H(r) = target on [0, 200]
    lo = torch.zeros_like(sb)
    hi = torch.full_like(sb, 200.0)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = strategy_scores(mid, KIND_MAXENT) >= target  # float64: the exact maxent score
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    r = hi
    zb = torch.log(target) - torch.log1p(-target.clamp(max=1.0 - 1e-16))  # mlp: sigmoid(z_b) = target
    inf = torch.full_like(sb, math.inf)
    bound = torch.where(maxent, torch.where(ok, r, inf), torch.where(ok, zb, -inf))
    cdt = out.scores.dtype
    # round outwards into the compute dtype so the comparison never drops an item inside the exact bound
    bc = bound.to(cdt)
    return torch.where(
        maxent,
        torch.nextafter(bc, torch.full_like(bc, math.inf)),
        torch.nextafter(bc, torch.full_like(bc, -math.inf)),
    ).to(dev)


def _sparse_topb(
    Z: torch.Tensor,
    keep: torch.Tensor,
    ids: torch.Tensor,
    kind: torch.Tensor,
    beta: float,
    excl: _Exclusion,
    b: int,
    idx2: torch.Tensor | None = None,
    sim: torch.Tensor | None = None,
) -> TopB:
    """Top-b per unit over the (unit, item) pairs of ``keep`` only (Z, keep: (U, n); ids (n,) ascending).
    Units ``idx2`` (id) multiply their entropy by their row of ``sim`` ((U2, n) density factors)."""
    U = Z.shape[0]
    dev = Z.device
    u_idx, j_idx = keep.nonzero(as_tuple=True)  # row-major: grouped by unit, items ascending
    sc = strategy_scores(Z[u_idx, j_idx], kind[u_idx], None, beta)
    if sim is not None and idx2 is not None and idx2.numel():
        row = torch.full((U,), -1, dtype=torch.int64, device=dev)
        row[idx2] = torch.arange(idx2.numel(), device=dev)
        r = row[u_idx]
        sc = torch.where(r >= 0, sc * sim[r.clamp(min=0), j_idx], sc)
    sc = torch.where(torch.isnan(sc), torch.full_like(sc, _NEG_INF), sc) + 0.0
    ids_sel = ids[j_idx]
    if excl.active and u_idx.numel():
        live = ~excl.pairs(u_idx, ids_sel)
        u_idx, sc, ids_sel = u_idx[live], sc[live], ids_sel[live]
    off = torch.zeros(U + 1, dtype=torch.int64, device=dev)
    off[1:] = torch.cumsum(torch.bincount(u_idx, minlength=U), 0)
    return _select_segments(sc, ids_sel, off, b)


# ------------------------------------------------------------------------------------------------ PQ logits
def pq_logits(
    codes: torch.Tensor,
    list_ids: torch.Tensor | None,
    offsets: torch.Tensor,
    lut: torch.Tensor,
    coarse: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Logits of IVF-PQ encoded CSR candidates through per-unit lookup tables (see ``kernels/pq_score.cu``).

    Args:
        codes: (M, m_sub) uint8; list_ids: (M,) int inverted list of each candidate (for a 2-D ``coarse``).
        offsets: (U+1,) int64 CSR bounds.
        lut: (U, m_sub, 256) float32 tables (:func:`seals_gpu.kernels.reference.pq_tables`).
        coarse: (U, nlist) table ``w_u . c_l`` or (M,) per-candidate coarse term.
        bias: (U,) or None.
        backend: ``"torch"``, ``"cuda"`` or ``"auto"`` (kernel when ``codes`` is on CUDA and it works).

    Returns:
        (M,) float32 logits.
    """
    from .kernels import reference

    _check_backend(backend)
    on_cuda = codes.device.type == "cuda"
    if backend == "cuda" or (
        backend == "auto" and on_cuda and kernels.available(codes.device, compile=True)[0]
    ):
        if not on_cuda:
            raise ConfigError(f"backend='cuda' needs codes on a cuda device, got {codes.device}")
        return kernels.pq_logits_cuda(codes, list_ids, offsets, lut, coarse, bias)
    return reference.pq_logits_torch(codes, list_ids, offsets, lut, coarse, bias)
