"""Searchers over a fixed set of rows (the train split): exact flat search and a GEMM-batched IVF.

SEALS's neighbourhood ``N(z, k)`` is taken among the *train* rows only (the test split never enters a pool),
so the driver searches a row subset of the index, not the whole store. Both searchers here hold that subset
as one contiguous float32 matrix and answer ``search(xq, k, exclude_ids) -> (D, I)`` exactly like
:meth:`seals_gpu.index.shard.IndexShard.search`: global ids, ``-inf`` / ``-1`` padding (a slot is a
neighbour iff its similarity is finite), similarity descending then id ascending. A row whose k-th and
(k+1)-th candidates are closer than ``merge.TIE_EPS`` is re-scored in float64 (``exact_scores``), so the
ids it returns do not depend on GEMM rounding or the batch; elsewhere similarities keep their float32 GEMM
value (equal across layouts to ~1e-6, not bit for bit).

``FlatSubset``  exact: blocked float32 GEMM + top-(k + margin), then the boundary re-score.
``IvfSubset``   approximate, for many queries against many rows: k-means lists (spherical, FAISS's k-means),
                queries assigned to their ``nprobe`` nearest lists in float64 (so a query's lists do not
                depend on the rest of its batch), then for every list ONE GEMM of all the queries probing it
                against the list's rows (list-major order: each list's rows are read once per batch, at GEMM
                speed). Lists are scanned in two phases: first each query's nearest list, whose
                (k + margin)-th best score bounds the final one from below; then the other lists keep only
                scores above that bound (about a tenth of the rows scanned), and one top-(k + margin) per
                query over the survivors, then the boundary re-score. FAISS's IndexIVFFlat scans a list per query with SIMD dot
                products instead: on 2 cores at 2,000 queries x 65k x 384 it needed the same time as exact
                search at 1/8 of the rows probed; the list-major GEMM runs close to the flat GEMM's rate.
                ``calibrate_nprobe`` picks the smallest nprobe whose recall@k against exact search reaches
                a target on sample queries drawn from the rows themselves (SEALS queries are labeled rows).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import IndexError_
from .merge import TIE_EPS, sort_neighbors
from .shard import _check_queries, exact_scores

PHASE1_LISTS = 3  # nearest lists per query scanned first: their kc-th best score bounds the final one
MARGIN = 8  # candidates kept beyond k so near-ties at the boundary resolve on float64 scores, by id


def _check(
    xq: np.ndarray, dim: int, k: int, exclude_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    if k < 1:
        raise IndexError_(f"k={k}; the number of neighbours must be at least 1")
    xq = _check_queries(xq, dim)  # the same query checks (and messages) as every index shard
    if exclude_ids is not None:
        exclude_ids = np.asarray(exclude_ids, dtype=np.int64)
        if exclude_ids.shape != (xq.shape[0],):
            raise IndexError_(f"exclude_ids must have shape ({xq.shape[0]},), got {exclude_ids.shape}")
    return xq, exclude_ids


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
    # a candidate is dropped by its similarity (-inf), never by its id: every int64 is a legal id
    gids = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
    drop = pos < 0
    if exclude_ids is not None:
        drop |= gids == exclude_ids[:, None]
    sims = np.where(drop, -np.inf, sims).astype(np.float32)
    D, I = sort_neighbors(sims, gids, min(k + 1, sims.shape[1]))
    if D.shape[1] > k:
        with np.errstate(invalid="ignore"):  # -inf - -inf where a row has fewer than k + 1 candidates
            gap = D[:, k - 1] - D[:, k]
        risky = np.flatnonzero(np.isfinite(D[:, k]) & (gap < TIE_EPS))
    else:
        risky = np.empty(0, np.int64)
    D, I = D[:, :k], I[:, :k]
    if risky.size:
        exact = exact_scores(xq[risky], vectors, pos[risky])
        exact = np.where(drop[risky], -np.inf, exact)
        Dr, Ir = sort_neighbors(exact, gids[risky], k)
        D[risky], I[risky] = Dr, Ir
    if D.shape[1] < k:
        D = np.concatenate([D, np.full((D.shape[0], k - D.shape[1]), -np.inf, np.float32)], axis=1)
        I = np.concatenate([I, np.full((I.shape[0], k - I.shape[1]), -1, np.int64)], axis=1)
    return D, I


# FAISS's exact search is the fastest here for big query batches (GEMM + per-query heaps on all cores), but
# for a few hundred queries it was 6x slower than one GEMM + top-k (256 queries x 65k x 384: 0.62 s vs
# ~0.1 s on 2 cores); below this many queries the GEMM path is used.
FAISS_MIN_QUERIES = 1024


def _gemm_topk(xq: np.ndarray, xb: np.ndarray, kc: int, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Top-``kc`` inner products per query by blocked float32 GEMM + top-k (torch): ``(sims, positions)``."""
    with warnings.catch_warnings():  # read-only (memory-mapped) arrays: torch only reads them
        warnings.simplefilter("ignore", UserWarning)
        q = torch.from_numpy(xq)
    best_v = best_i = None
    for s in range(0, xb.shape[0], block):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            blk = torch.from_numpy(np.ascontiguousarray(xb[s : s + block]))
        v, i = torch.topk(q @ blk.T, min(kc, blk.shape[0]), dim=1, sorted=False)
        i = i + s
        if best_v is None:
            best_v, best_i = v, i
        else:
            v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
            best_v, sel = torch.topk(v, kc, dim=1, sorted=False)
            best_i = torch.gather(i, 1, sel)
    assert best_v is not None and best_i is not None
    return best_v.numpy(), best_i.numpy()


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
        if nq < FAISS_MIN_QUERIES:
            sims, pos = _gemm_topk(xq, self.vectors, kc)
        else:
            if self._faiss is None:
                import faiss

                self._faiss = faiss.IndexFlatIP(self.dim)
                self._faiss.add(self.vectors)
            sims, pos = self._faiss.search(xq, kc)
        return _finish(xq, self.vectors, self.ids, sims, pos.astype(np.int64), k, exclude_ids)


def default_nlist(n: int) -> int:
    """About sqrt(n)/2 lists (a power of two, 16 to 65,536) with at least ~64 rows each. k-means costs grow
    with nlist^2 while the search time barely moves with it (measured on WordNet's 65,767 train rows at
    recall@100 0.95: 128 lists build in 0.15 s and search 2,000 queries in 0.26 s; 256 lists: 0.51 s and
    0.24 s; 1,024 lists: 4.0 s and 0.33 s)."""
    if n < 1024:
        return 1
    nlist = 2 ** round(math.log2(math.sqrt(n) / 2))
    return int(max(16, min(nlist, 65_536, n // 64)))


def _ragged_topk(
    q: np.ndarray, s: np.ndarray, p: np.ndarray, nq: int, kc: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``kc`` best of its candidates ``(q[j], s[j], p[j])`` (any order, any count): returns
    ``(nq, kc)`` scores and positions (-inf / -1 where a query has fewer), by one sort of a composite int64
    key (query, then score descending as order-preserving float bits)."""
    out_s = np.full((nq, kc), -np.inf, dtype=np.float32)
    out_p = np.full((nq, kc), -1, dtype=np.int64)
    if q.size == 0:
        return out_s, out_p
    bits = np.ascontiguousarray(s, dtype=np.float32).view(np.int32).astype(np.int64)
    # IEEE floats order like sign-magnitude integers: flip the magnitude of negatives, then negate for
    # descending order; the result fits in 33 bits above a 2**31 offset
    key_s = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = q.astype(np.int64) * (1 << 33) + ((1 << 31) - 1 - key_s)
    o = np.argsort(key, kind="stable")
    qs = q[o]
    counts = np.bincount(qs, minlength=nq)
    start = np.cumsum(counts) - counts
    rank = np.arange(qs.size) - start[qs]
    keep = rank < kc
    o, qs, rank = o[keep], qs[keep], rank[keep]
    out_s[qs, rank] = s[o]
    out_p[qs, rank] = p[o]
    return out_s, out_p


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
        self.threads: int | None = None  # threads scanning lists (default: torch's thread count)

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

    def _probes(self, xq: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """``(nq, nprobe)`` nearest lists per query and their centroid scores, in float64 (so independent of
        the batch a query comes in)."""
        cs = xq.astype(np.float64) @ self.centroids.T
        if nprobe >= self.nlist:
            part = np.broadcast_to(np.arange(self.nlist), (xq.shape[0], self.nlist)).copy()
        else:
            part = np.argpartition(-cs, nprobe - 1, axis=1)[:, :nprobe]
        return part, np.take_along_axis(cs, part, axis=1)

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
        probes, pscore = self._probes(xq, nprobe)  # (nq, P) lists per query and their centroid scores
        P = probes.shape[1]
        F = min(PHASE1_LISTS, P)
        with warnings.catch_warnings():  # read-only queries: torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            xq_t = torch.from_numpy(xq)
        vec_t = torch.from_numpy(self.vectors)
        off = self.offsets
        # Phase 1: each query against its F nearest lists, keeping its best kc per list. The kc-th best of
        # those is a lower bound on its kc-th best over all its lists (thr), so phase 2 keeps only scores
        # >= thr: every candidate of the final top-kc survives, and the survivors are about kc, not every
        # probed row.
        near = np.argpartition(-pscore, F - 1, axis=1)[:, :F] if F < P else np.tile(np.arange(P), (nq, 1))
        first = np.take_along_axis(probes, near, axis=1)  # (nq, F)
        q1 = np.repeat(np.arange(nq), F)
        s1 = np.tile(np.arange(F), nq)
        l1 = first.ravel()
        o1 = np.argsort(l1, kind="stable")
        q1, s1, l1 = q1[o1], s1[o1], l1[o1]
        b1 = np.searchsorted(l1, np.arange(self.nlist + 1))
        buf_v = torch.full((nq, F, kc), -math.inf, dtype=torch.float32)
        buf_p = torch.full((nq, F, kc), -1, dtype=torch.int64)
        # Phase 2: every other (query, list) pair, grouped by list.
        rest = np.ones(probes.shape, dtype=bool)
        np.put_along_axis(rest, near, False, axis=1)
        q2 = np.broadcast_to(np.arange(nq)[:, None], probes.shape)[rest]
        l2 = probes[rest]
        o2 = np.argsort(l2, kind="stable")
        q2, l2 = q2[o2], l2[o2]
        b2 = np.searchsorted(l2, np.arange(self.nlist + 1))
        thr = torch.full((nq,), -math.inf, dtype=torch.float32)
        found: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []

        def scan(lists: list[int], phase: int, out: list) -> None:
            qsel, bnd = (q1, b1) if phase == 1 else (q2, b2)
            for lst in lists:
                a, b = int(off[lst]), int(off[lst + 1])
                lo, hi = int(bnd[lst]), int(bnd[lst + 1])
                qs = torch.from_numpy(qsel[lo:hi])
                S = xq_t[qs] @ vec_t[a:b].T
                if phase == 1:
                    m = min(kc, b - a)
                    v, i = torch.topk(S, m, dim=1, sorted=False) if m < b - a else (S, None)
                    sl = torch.from_numpy(s1[lo:hi])
                    buf_v[qs, sl, :m] = v
                    buf_p[qs, sl, :m] = (i + a) if i is not None else torch.arange(a, b).expand(len(qs), -1)
                else:
                    keep = S >= thr[qs][:, None]
                    r, c = keep.nonzero(as_tuple=True)
                    out.append((qs[r], S[r, c], c + a))

        def run_phase(phase: int, bnd: np.ndarray) -> None:
            todo = np.flatnonzero((bnd[1:] > bnd[:-1]) & (off[1:] > off[:-1])).tolist()
            if not todo:
                return
            workers = max(1, min(self.threads or prev, len(todo) // 8 or 1))
            outs: list[list] = [[] for _ in range(workers)]
            if workers == 1:
                scan(todo, phase, outs[0])
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda w: scan(todo[w::workers], phase, outs[w]), range(workers)))
            found.extend(outs)

        # The per-list products are small: torch's intra-op threads only add synchronisation (and collapse
        # when another process holds a core). Instead, lists are split over Python threads, each running
        # torch single-threaded (torch releases the GIL inside its ops).
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_phase(1, b1)
            flat_v, flat_p = buf_v.view(nq, F * kc), buf_p.view(nq, F * kc)
            if F * kc > kc:
                thr.copy_(torch.topk(flat_v, kc, dim=1).values[:, -1])
            r, c = (flat_v >= thr[:, None]).logical_and(flat_p >= 0).nonzero(as_tuple=True)
            found.append([(r, flat_v[r, c], flat_p[r, c])])
            run_phase(2, b2)
        finally:
            torch.set_num_threads(prev)
        parts = [t for out in found for t in out]
        cq = torch.cat([t[0] for t in parts]).numpy()
        cs = torch.cat([t[1] for t in parts]).numpy()
        cp = torch.cat([t[2] for t in parts]).numpy()
        sims, pos = _ragged_topk(cq, cs, cp, nq, kc)
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
        D0, I0 = exact.search(q, k, exclude_ids=qid)
        valid = np.isfinite(D0)  # a missing neighbour is told by its similarity, not its id
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
