"""Exact inner-product search with torch: the GPU index for stores that fit in GPU memory.

Vectors are kept on the device (float16 on CUDA, float32 on CPU by default) in id order. A search runs a
blocked matmul (query chunk x database block, similarities accumulated in float32) and keeps a per-query
top-(k + margin) per block, merged across blocks; the survivors are re-scored exactly (float64 per-pair dot
products of the stored vectors) and ordered by (similarity desc, id asc) -- the order of the FAISS shards of
:mod:`seals_gpu.index.shard`. Re-scoring makes similarities independent of the blocking, so equal vectors
tie exactly and resolve to the lower id (for tie groups straddling the k-th place up to the margin; a matmul
may order larger groups of exactly-equal vectors by rounding). Missing entries (k > ntotal) are padded with
``-inf`` / ``-1``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import IndexError_
from ..scoring import TopB, _rowwise_topb, merge_topb

__all__ = ["TorchExactIndex", "RESCORE_MARGIN"]

#: extra candidates per query re-scored exactly, so boundary ties resolve by id
RESCORE_MARGIN = 8


class TorchExactIndex:
    """Exact top-k by inner product (cosine on unit vectors), blocked matmul on GPU or CPU.

    Args:
        ids: (n,) int64 unique global ids.
        vectors: (n, d) float array or tensor (numpy memmaps are copied block by block).
        device: where to keep the vectors and search (default: cuda when available, else cpu).
        dtype: storage dtype (default float16 on CUDA, float32 on CPU).
        block_rows: database rows per matmul block.
        max_tmp_elems: most similarities held at once (query chunk x block); default 2**27 on CUDA,
            2**24 on CPU.
    """

    def __init__(
        self,
        ids: np.ndarray,
        vectors: np.ndarray | torch.Tensor,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        block_rows: int = 262_144,
        max_tmp_elems: int | None = None,
    ) -> None:
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise IndexError_(f"ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if vectors.ndim != 2 or vectors.shape[0] != ids.size:
            raise IndexError_(
                f"vectors must have shape ({ids.size}, d) to match ids, got {tuple(vectors.shape)}"
            )
        if block_rows < 1:
            raise IndexError_(f"block_rows={block_rows}; must be >= 1")
        self.device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise IndexError_(f"dtype {dtype} is not a float dtype")
        self.dtype = dtype
        self.block_rows = int(block_rows)
        self.max_tmp_elems = int(max_tmp_elems or ((1 << 27) if self.device.type == "cuda" else (1 << 24)))

        order = None
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            srt = ids[order]
            dup = np.flatnonzero(srt[1:] == srt[:-1])
            if dup.size:
                raise IndexError_(f"ids must be unique; repeated: {np.unique(srt[dup])[:5].tolist()}")
            ids = srt
        self._ids = np.ascontiguousarray(ids)
        self._ids_t = torch.from_numpy(self._ids).to(self.device)
        n, d = int(vectors.shape[0]), int(vectors.shape[1])
        self._vec = torch.empty((n, d), dtype=dtype, device=self.device)
        step = max(1, (1 << 24) // max(d, 1))
        for s in range(0, n, step):
            e = min(n, s + step)
            sel = slice(s, e) if order is None else order[s:e]
            if isinstance(vectors, torch.Tensor):
                blk = vectors[torch.as_tensor(sel) if order is not None else sel]
            else:
                blk = torch.from_numpy(np.ascontiguousarray(vectors[sel]))
            self._vec[s:e] = blk.to(device=self.device, dtype=dtype)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self._ids.size)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._vec.shape[1])

    @property
    def ids(self) -> np.ndarray:
        """The indexed ids, ascending (read-only view)."""
        v = self._ids.view()
        v.flags.writeable = False
        return v

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids``; raises :class:`IndexError_` naming the ids that are not indexed."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self._ids.size == 0:
            if ids.size:
                raise IndexError_(f"ids {ids[:5].tolist()} are not in this index (it is empty)")
            return np.empty(0, np.int64)
        pos = np.minimum(np.searchsorted(self._ids, ids), self._ids.size - 1)
        ok = self._ids[pos] == ids
        if not bool(ok.all()):
            bad = ids[~ok]
            raise IndexError_(
                f"{bad.size} id(s) are not in this index, e.g. {bad[:5].tolist()}; pass ids of the indexed store"
            )
        return pos

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (in the order given) as float32 (lossy if stored as float16).

        Args:
            ids: (m,) int64 ids, all indexed.

        Returns:
            (m, d) float32 array.
        """
        pos = torch.from_numpy(self.positions(ids)).to(self.device)
        return self._vec.index_select(0, pos).to(torch.float32).cpu().numpy()

    # -------------------------------------------------------------------------------------------- search
    def _sims(self, q: torch.Tensor, blk: torch.Tensor) -> torch.Tensor:
        """(nq, n_blk) float32 similarities, accumulating in float32 whatever the storage dtype."""
        if blk.dtype == torch.float32:
            return q @ blk.t()
        if q.device.type == "cuda" and blk.dtype in (torch.float16, torch.bfloat16):
            try:
                return torch.mm(q, blk.t(), out_dtype=torch.float32)
            except (TypeError, RuntimeError, NotImplementedError):
                pass
        return (q.to(torch.float32) @ blk.t().to(torch.float32)).to(torch.float32)

    def _rescore(
        self, xq: np.ndarray, cand: torch.Tensor, valid: torch.Tensor, kk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact float64 similarities of the candidates where ``valid`` (any id, negative ones included, is
        legal: validity never comes from the id), ordered (sim desc, id asc), first kk; missing slots get
        ``-inf`` / ``-1``.

        The per-pair dot product does not depend on where a vector sat in its matmul block, so equal vectors
        get equal similarities and ties resolve by id (within the candidate margin)."""
        # the candidates' own rows (a missing slot's is any row: it is masked below)
        pos = torch.searchsorted(self._ids_t, cand).clamp(max=max(self.ntotal - 1, 0))
        q64 = torch.from_numpy(xq).to(device=self.device, dtype=torch.float64)
        V = self._vec[pos].to(torch.float64)  # (nq, kc, d)
        sims = (V * q64[:, None, :]).sum(dim=-1)
        sims = torch.where(valid, sims, torch.full_like(sims, float("-inf")))
        key = torch.where(valid, cand, torch.iinfo(torch.int64).max)
        o = torch.argsort(key, dim=1, stable=True)
        key, sims, valid = key.gather(1, o), sims.gather(1, o), valid.gather(1, o)
        sims, o = torch.sort(sims, dim=1, descending=True, stable=True)
        key, valid = key.gather(1, o)[:, :kk], valid.gather(1, o)[:, :kk]
        return sims[:, :kk].to(torch.float32), torch.where(valid, key, -1)

    def search(
        self, xq: np.ndarray, k: int, *, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each query by inner product.

        Args:
            xq: (nq, d) float queries (l2-normalised for cosine similarity).
            k: neighbours per query (>= 1).
            exclude_ids: (nq,) int64, an id to drop from each query's result (its own id).

        Returns:
            ``(D (nq, k) float32, I (nq, k) int64)``: similarity descending then id ascending; a slot is a
            neighbour iff its ``D`` is finite (missing slots: ``-inf`` / ``-1``; -1 is also a legal id).
        """
        if isinstance(k, bool) or int(k) < 1:
            raise IndexError_(f"k={k}; the number of neighbours must be at least 1")
        k = int(k)
        xq = np.asarray(xq)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise IndexError_(f"queries must have shape (nq, {self.dim}), got {xq.shape}")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if not np.isfinite(xq).all():
            raise IndexError_("queries contain NaN or inf; pass finite, l2-normalised vectors")
        nq = xq.shape[0]
        ex = None
        if exclude_ids is not None:
            ex = np.asarray(exclude_ids, dtype=np.int64)
            if ex.shape != (nq,):
                raise IndexError_(f"exclude_ids must have shape ({nq},), got {ex.shape}")
        kk = k + (1 if ex is not None else 0)
        kc = kk + RESCORE_MARGIN
        D = np.full((nq, k), -np.inf, dtype=np.float32)
        nn = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0 or self.ntotal == 0:
            return D, nn
        n = self.ntotal
        blk_rows = min(self.block_rows, n)
        q_chunk = max(1, self.max_tmp_elems // blk_rows)
        qdtype = self.dtype if self.device.type == "cuda" else torch.float32
        for qs in range(0, nq, q_chunk):
            qe = min(nq, qs + q_chunk)
            q = torch.from_numpy(xq[qs:qe]).to(device=self.device, dtype=qdtype)
            res = TopB.empty(qe - qs, kc, self.device)
            for s in range(0, n, blk_rows):
                e = min(n, s + blk_rows)
                S = self._sims(q, self._vec[s:e])
                res = merge_topb(res, _rowwise_topb(S, self._ids_t[s:e], kc), kc)
            found = torch.arange(res.b, device=self.device)[None, :] < res.counts[:, None]
            sc, ids_c = self._rescore(xq[qs:qe], res.ids, found, kk)
            if ex is not None:
                ex_t = torch.from_numpy(ex[qs:qe]).to(self.device)
                match = (ids_c == ex_t[:, None]) & torch.isfinite(sc)
                keep = ~match
                keep[:, -1] &= match.any(dim=1)  # no match: drop the (k+1)-th instead
                ids_c = ids_c[keep].view(qe - qs, k)
                sc = sc[keep].view(qe - qs, k)
            D[qs:qe] = sc.to(torch.float32).cpu().numpy()
            nn[qs:qe] = ids_c.cpu().numpy()
        return D, nn

    def __repr__(self) -> str:
        return (
            f"TorchExactIndex(ntotal={self.ntotal}, dim={self.dim}, device={self.device}, dtype={self.dtype})"
        )
