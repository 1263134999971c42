"""Searchers over a fixed set of rows (the train split): exact flat search and a GEMM-batched IVF.

SEALS's neighbourhood ``N(z, k)`` is taken among the *train* rows only (the test split never enters a pool),
so the driver searches a row subset of the index, not the whole store. Both searchers here hold that subset
as one contiguous float32 matrix and answer ``search(xq, k, exclude_ids) -> (D, I)`` exactly like
:meth:`seals_gpu.index.shard.IndexShard.search`: global ids, ``-inf`` / ``-1`` padding, similarity
descending then id ascending, similarities re-scored in float64 so every searcher and batch gives the same
bits for the same pair.

``FlatSubset``  exact: blocked float32 GEMM + top-(k + margin), then the float64 re-score of those.
``IvfSubset``   approximate, for many queries against many rows: k-means lists (spherical, FAISS's k-means),
                queries assigned to their ``nprobe`` nearest lists in float64 (so a query's lists do not
                depend on the rest of its batch), then for every list ONE GEMM of all the queries probing it
                against the list's rows (list-major order: each list's rows are read once per batch, at GEMM
                speed), a top-(k + margin) per (query, list), one top-(k + margin) per query over its lists
                and the float64 re-score. FAISS's IndexIVFFlat scans a list per query with SIMD dot
                products instead: on 2 cores at 2,000 queries x 65k x 384 it needed the same time as exact
                search at 1/8 of the rows probed; the list-major GEMM runs close to the flat GEMM's rate.
                ``calibrate_nprobe`` picks the smallest nprobe whose recall@k against exact search reaches
                a target on sample queries drawn from the rows themselves (SEALS queries are labeled rows).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import IndexError_
from .merge import sort_neighbors
from .shard import exact_scores

MARGIN = 8  # candidates kept beyond k so near-ties at the boundary resolve on float64 scores, by id


def _check(
    xq: np.ndarray, dim: int, k: int, exclude_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    if k < 1:
        raise IndexError_(f"k={k}; the number of neighbours must be at least 1")
    xq = np.asarray(xq)
    if xq.ndim != 2 or xq.shape[1] != dim:
        raise IndexError_(f"queries must have shape (nq, {dim}), got {xq.shape}; reshape your data")
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if not np.isfinite(xq).all():
        raise IndexError_("queries contain NaN or inf; pass finite, l2-normalised vectors")
    if exclude_ids is not None:
        exclude_ids = np.asarray(exclude_ids, dtype=np.int64)
        if exclude_ids.shape != (xq.shape[0],):
            raise IndexError_(f"exclude_ids must have shape ({xq.shape[0]},), got {exclude_ids.shape}")
    return xq, exclude_ids


# Float32 GEMM similarities of unit vectors are within ~1e-6 of the float64 value; a row whose k-th and
# (k+1)-th candidates are closer than this is re-scored in float64 so the set of ids it returns is exact.
TIE_EPS = 1e-5


def _finish(
    xq: np.ndarray,
    vectors: np.ndarray,
    ids: np.ndarray,
    sims: np.ndarray,
    pos: np.ndarray,
    k: int,
    exclude_ids: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``(sims, pos)`` (float32 GEMM scores, row positions, -1 = none) to the final ``(D, I)``.

    Each query's own id is dropped, candidates are ordered by similarity then id, and rows where the
    boundary between the k-th and the next candidate is a near-tie (closer than ``TIE_EPS``) are re-scored
    in float64 (:func:`exact_scores`), so the set of ids returned does not depend on GEMM rounding (and so
    not on the batch a query came in); elsewhere ``D`` keeps the float32 GEMM value.
    """
    sims = np.where(pos >= 0, sims, -np.inf).astype(np.float32)
    gids = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
    if exclude_ids is not None:
        own = gids == exclude_ids[:, None]
        gids = np.where(own, -1, gids)
        sims = np.where(own, -np.inf, sims)
    D, I = sort_neighbors(sims, gids, min(k + 1, sims.shape[1]))
    if D.shape[1] > k:
        with np.errstate(invalid="ignore"):  # -inf - -inf where a row has fewer than k + 1 candidates
            gap = D[:, k - 1] - D[:, k]
        risky = np.flatnonzero((I[:, k] >= 0) & (gap < TIE_EPS))
    else:
        risky = np.empty(0, np.int64)
    D, I = D[:, :k], I[:, :k]
    if risky.size:
        exact = exact_scores(xq[risky], vectors, pos[risky])
        own_r = gids[risky] < 0
        exact = np.where(own_r, -np.inf, exact)
        Dr, Ir = sort_neighbors(exact, gids[risky], k)
        D[risky], I[risky] = Dr, Ir
    if D.shape[1] < k:
        D = np.concatenate([D, np.full((D.shape[0], k - D.shape[1]), -np.inf, np.float32)], axis=1)
        I = np.concatenate([I, np.full((I.shape[0], k - I.shape[1]), -1, np.int64)], axis=1)
    return D, I


class FlatSubset:
    """Exact search over ``(ids, vectors)``: sorted unique int64 ids and their float32 rows (n, d)."""

    kind = "flat"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[0] != ids.size:
            raise IndexError_(f"ids {ids.shape} and vectors {vectors.shape} disagree")
        self.ids = ids
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.dim = int(self.vectors.shape[1])
        self._faiss = None  # FAISS IndexFlatIP over the rows, made on first search (BLAS GEMM + heaps)

    @property
    def ntotal(self) -> int:
        return int(self.ids.size)

    def describe(self) -> str:
        return f"exact flat search over {self.ntotal:,} train rows"

    def search(
        self, xq: np.ndarray, k: int, *, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        xq, exclude_ids = _check(xq, self.dim, k, exclude_ids)
        nq = xq.shape[0]
        if nq == 0 or self.ntotal == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        kc = min(self.ntotal, k + (exclude_ids is not None) + MARGIN)
        if self._faiss is None:
            import faiss

            self._faiss = faiss.IndexFlatIP(self.dim)
            self._faiss.add(self.vectors)
        sims, pos = self._faiss.search(xq, kc)
        return _finish(xq, self.vectors, self.ids, sims, pos.astype(np.int64), k, exclude_ids)


def default_nlist(n: int) -> int:
    """About sqrt(n) lists (a power of two, 16 to 65,536) with at least ~32 rows each: lists big enough
    that each list's GEMM runs near full rate, few enough that assigning queries costs little."""
    if n < 512:
        return 1
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    return int(max(16, min(nlist, 65_536, n // 32)))


class IvfSubset:
    """Inverted lists over ``(ids, vectors)``, searched list-major with one GEMM per list (see module doc).

    Build with :meth:`train`. ``nprobe`` is a plain attribute (set it, or use :meth:`calibrate_nprobe`).
    """

    kind = "ivf"

    def __init__(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        centroids: np.ndarray,
        assign: np.ndarray,
        *,
        nprobe: int = 16,
    ):
        ids = np.asarray(ids, dtype=np.int64)
        nlist = int(centroids.shape[0])
        assign = np.asarray(assign, dtype=np.int64)
        if assign.shape != ids.shape or (assign.size and (assign.min() < 0 or assign.max() >= nlist)):
            raise IndexError_(f"IVF list assignment of shape {assign.shape} does not fit {ids.size} rows")
        self.assign = assign  # each row's list, in the order given (what a cache stores)
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=nlist)
        self.offsets = np.zeros(nlist + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        # rows in list-major order: each list is one contiguous block for its GEMM
        self.ids = ids[order]
        self.vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order])
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float64)
        self.dim = int(self.vectors.shape[1])
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.recall: float | None = None  # set by calibrate_nprobe

    @property
    def ntotal(self) -> int:
        return int(self.ids.size)

    def describe(self) -> str:
        rec = f", recall@k {self.recall:.3f} vs exact on sample queries" if self.recall is not None else ""
        return f"IVF over {self.ntotal:,} train rows: {self.nlist} lists, nprobe {self.nprobe}{rec}"

    @classmethod
    def train(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        nlist: int | None = None,
        nprobe: int = 16,
        seed: int = 1234,
        max_points_per_list: int = 64,
        niter: int = 12,
    ) -> IvfSubset:
        """k-means (spherical, FAISS) on a sample of ``max_points_per_list * nlist`` rows, then every row to
        its nearest centroid. Deterministic for a given seed."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vectors.shape
        nlist = int(nlist or default_nlist(n))
        if nlist < 1 or nlist > max(1, n):
            raise IndexError_(f"nlist {nlist} must be between 1 and the {n} rows")
        if nlist == 1:
            centroids = vectors.mean(axis=0, keepdims=True) if n else np.zeros((1, d), np.float32)
            return cls(ids, vectors, centroids, np.zeros(n, np.int64), nprobe=1)
        rng = np.random.default_rng(seed)
        m = min(n, max_points_per_list * nlist)
        sample = vectors[np.sort(rng.choice(n, size=m, replace=False))] if m < n else vectors
        km = faiss.Kmeans(
            d, nlist, niter=niter, spherical=True, seed=seed, max_points_per_centroid=max_points_per_list
        )
        km.train(np.ascontiguousarray(sample))
        centroids = km.centroids.astype(np.float32)
        assign = np.empty(n, dtype=np.int64)
        c_t = torch.from_numpy(centroids)
        for s in range(0, n, 65_536):
            blk = torch.from_numpy(vectors[s : s + 65_536])
            assign[s : s + blk.shape[0]] = torch.argmax(blk @ c_t.T, dim=1).numpy()
        return cls(ids, vectors, centroids, assign, nprobe=min(nprobe, nlist))

    def _probes(self, xq: np.ndarray, nprobe: int) -> np.ndarray:
        """``(nq, nprobe)`` nearest lists per query, from float64 scores (batch-independent)."""
        cs = xq.astype(np.float64) @ self.centroids.T
        if nprobe >= self.nlist:
            return np.broadcast_to(np.arange(self.nlist), (xq.shape[0], self.nlist)).copy()
        part = np.argpartition(-cs, nprobe - 1, axis=1)[:, :nprobe]
        return part

    def search(
        self,
        xq: np.ndarray,
        k: int,
        *,
        exclude_ids: np.ndarray | None = None,
        nprobe: int | None = None,
        q_chunk: int = 4096,
    ) -> tuple[np.ndarray, np.ndarray]:
        xq, exclude_ids = _check(xq, self.dim, k, exclude_ids)
        nq = xq.shape[0]
        if nq == 0 or self.ntotal == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        nprobe = int(min(self.nlist, nprobe or self.nprobe))
        kc = min(self.ntotal, k + (exclude_ids is not None) + MARGIN)
        if nq > q_chunk:
            parts = [
                self.search(
                    xq[s : s + q_chunk],
                    k,
                    exclude_ids=None if exclude_ids is None else exclude_ids[s : s + q_chunk],
                    nprobe=nprobe,
                    q_chunk=q_chunk,
                )
                for s in range(0, nq, q_chunk)
            ]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        probes = self._probes(xq, nprobe)  # (nq, P)
        P = probes.shape[1]
        sizes = (self.offsets[1:] - self.offsets[:-1])[probes]  # (nq, P) rows per probed list
        starts = np.zeros_like(sizes)
        np.cumsum(sizes[:, :-1], axis=1, out=starts[:, 1:])
        width = max(int(sizes.sum(axis=1).max()), 1)
        # every probed list's scores go to its query's row of one (nq, width) block; one top-k per row after
        cand = torch.full((nq, width), -math.inf, dtype=torch.float32)
        flat_lists = probes.ravel()
        order = np.argsort(flat_lists, kind="stable")
        bounds = np.searchsorted(flat_lists[order], np.arange(self.nlist + 1))
        q_of = order // P
        cell0 = torch.from_numpy(q_of * width + starts.ravel()[order])
        q_of_t = torch.from_numpy(q_of)
        xq_t = torch.from_numpy(xq)
        vec_t = torch.from_numpy(self.vectors)
        flat_cand = cand.view(-1)
        for lst in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            a, b = int(self.offsets[lst]), int(self.offsets[lst + 1])
            if a == b:
                continue
            lo, hi = int(bounds[lst]), int(bounds[lst + 1])
            S = xq_t[q_of_t[lo:hi]] @ vec_t[a:b].T
            cells = (cell0[lo:hi, None] + torch.arange(b - a)[None, :]).view(-1)
            flat_cand[cells] = S.view(-1)
        kk = min(kc, width)
        sims_t, col = torch.topk(cand, kk, dim=1, sorted=False)
        col = col.numpy()
        # column -> (slot, offset in list) -> row position in list-major order
        slot = np.empty_like(col)
        for r in range(0, nq, 1024):  # searchsorted per row, vectorised by offsetting rows apart
            st = starts[r : r + 1024]
            base = np.arange(st.shape[0])[:, None] * (width + 1)
            slot[r : r + 1024] = (
                np.searchsorted(
                    (st + base).ravel(), (col[r : r + 1024] + base).ravel(), side="right"
                ).reshape(col[r : r + 1024].shape)
                - 1
                - np.arange(st.shape[0])[:, None] * P
            )
        rows = np.arange(nq)[:, None]
        within = col - starts[rows, slot]
        lst_of = probes[rows, slot]
        pos = self.offsets[lst_of] + within
        sims = sims_t.numpy()
        pos = np.where(np.isfinite(sims), pos, -1)
        return _finish(xq, self.vectors, self.ids, sims, pos, k, exclude_ids)

    def list_of(self, positions: np.ndarray) -> np.ndarray:
        """The list each row position (list-major order) belongs to."""
        return np.searchsorted(self.offsets, positions, side="right") - 1

    def calibrate_nprobe(
        self,
        k: int,
        *,
        target: float = 0.95,
        n_queries: int = 256,
        seed: int = 0,
    ) -> float:
        """Set ``nprobe`` to the smallest value whose mean recall@k against exact search reaches ``target``,
        measured on ``n_queries`` rows of the set used as queries (their own id excluded, as a SEALS query
        is a labeled row); returns that recall (also kept in ``self.recall``).

        One exact search gives every nprobe's recall at once: searching the ``p`` nearest lists returns the
        exact top-k among their rows, so an exact neighbour is found iff its list ranks below ``p`` among
        the query's lists. Reaching the target may take every list (then the search is exact)."""
        if self.ntotal == 0 or self.nlist == 1:
            self.nprobe, self.recall = 1, 1.0
            return 1.0
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(self.ntotal, size=min(n_queries, self.ntotal), replace=False))
        q, qid = self.vectors[pick], self.ids[pick]
        exact = FlatSubset(self.ids, self.vectors)  # list-major rows: positions are this index's own
        _, I0 = exact.search(q, k, exclude_ids=qid)
        valid = I0 >= 0
        pos = np.zeros(I0.shape, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        pos[valid] = order[np.searchsorted(self.ids[order], I0[valid])]
        lists = self.list_of(pos)
        cs = q.astype(np.float64) @ self.centroids.T
        rank_of_list = np.empty_like(cs, dtype=np.int64)
        rank_of_list[np.arange(q.shape[0])[:, None], np.argsort(-cs, axis=1, kind="stable")] = np.arange(
            self.nlist
        )
        need = np.where(valid, np.take_along_axis(rank_of_list, lists, axis=1), -1)  # rank needed, per hit
        hist = np.bincount(need[valid], minlength=self.nlist)
        recall_at = np.cumsum(hist) / max(1, int(valid.sum()))  # recall_at[p - 1] = recall with p lists
        ok = np.flatnonzero(recall_at >= target - 1e-12)
        p = int(ok[0]) + 1 if ok.size else self.nlist
        self.nprobe, self.recall = p, float(recall_at[p - 1])
        return self.recall
