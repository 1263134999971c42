"""Where the vectors live: search, gather and scoring pushed to the data.

The driver talks to a backend through this small interface, so one process (:class:`LocalBackend`) and a
Ray cluster (``seals_gpu.distributed.RayBackend``) look the same to it:

- ``search(xq, k, exclude_ids) -> (D, I)``      kNN with global ids
- ``vectors(ids) -> float32 (n, d)``            exact vectors (labeled sets, small batches only)
- ``score_pool(ids, offsets, model, kind, ref, beta, b) -> TopB``   SEALS: score each unit's candidates
- ``score_all(exclude, model, kind, ref, beta, b) -> TopB``         All: stream every candidate id
- ``random_all(exclude, keys, seed, round, b) -> TopB``             All-mode Random, on the shards
- ``sum_vectors(ids) -> float64 (d,)`` and ``candidate_sum() -> (float64 (d,), count)``
- ``group_logits(groups, W, b)`` and ``test_counts(W, b, thresholds, groups)``   test AP (evaluate.py)
- ``split -> Split``                              the train/test split: sizes, membership, ids by rank

Only ids, scores, counts and small weight matrices cross this interface; vectors stay in the backend except
for the labeled sets, which the driver needs to fit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .device import DeviceChoice
from .errors import IndexError_
from .evaluate import Group, count_blocks, group_logits
from .index.build import LocalIndex
from .pool import isin_sorted
from .scoring import TopB, merge_topb, random_topb, score_all, score_select
from .split import ShardSplit, Split


def sub_csr(ids: np.ndarray, offsets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``ids[mask]`` in every segment; return ``(ids, offsets)`` of the same number of segments."""
    c = np.zeros(mask.size + 1, dtype=np.int64)
    np.cumsum(mask, out=c[1:])
    return ids[mask], c[offsets]


# All mode reads every train row each round; up to this many bytes of them are kept filtered in memory.
CANDIDATE_CACHE_BYTES = 1 << 30
# test rows per block of the AP count: AP_UNITS x this many float64 logits at once (512 MiB at 256 units),
# plus the block's float64 copy (rows x d x 8 bytes)
TEST_BLOCK_ROWS = 262_144


class LocalBackend:
    """All shards of a :class:`LocalIndex` in this process, with their vectors resident on ``device``.

    ``candidates``: sorted ids that may be labeled (the train split); everything else (the test split) is
    never scored or added to a pool.
    """

    def __init__(
        self,
        index: LocalIndex,
        device: DeviceChoice,
        *,
        excluded: np.ndarray | None = None,
        block_rows: int = 131_072,
        scoring_backend: str = "auto",
        search_method: str = "flat",
        search_recall: float = 0.95,
        search_k: int = 100,
        cache_key: dict | None = None,
        log=None,
    ):
        if search_method not in ("flat", "ivf", "index"):
            raise ValueError(f"search_method {search_method!r}: choose flat, ivf or index")
        self.index = index
        self.search_method = search_method
        self.search_recall = float(search_recall)
        self.search_k = int(search_k)
        self._log = log
        self._cache_key = cache_key  # with it, a built IVF is kept in (and reused from) the cache folder
        self._subsets: list | None = None
        self._restricted = False
        self.search_build_seconds = 0.0
        self.device = device
        self.excluded = np.sort(np.asarray(excluded if excluded is not None else [], dtype=np.int64))
        self.block_rows = block_rows
        self.scoring_backend = scoring_backend
        self._emb: list[torch.Tensor | None] = [None] * len(index.shards)
        self._cand_sum: tuple[np.ndarray, int] | None = None
        # (shard, test?) -> that split's rows of the shard, when kept (see _split_rows)
        self._kept: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._test_dev: dict[int, torch.Tensor] = {}  # shard -> its kept test rows on the device
        self._gpu_search: list | None = None
        self._faiss_on_gpu = False
        self._faiss_res = None
        self.dim = index.dim
        self._split_parts: dict[int, ShardSplit] = {}
        self._split: Split | None = None

    # ------------------------------------------------------------------ plumbing
    def _shard_emb(self, s: int) -> torch.Tensor:
        if self._emb[s] is None:
            v = np.ascontiguousarray(self.index.shards[s].vectors, dtype=np.float32)
            if self.device.kind == "cpu":
                # on CPU the tensor reads the memory-mapped shard in place: a run's memory apart from the
                # index stays flat in |U| (torch warns that the mapping is read-only; it is only read)
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    self._emb[s] = torch.from_numpy(v)
            else:
                if isinstance(v, np.memmap) or not v.flags.writeable:
                    v = np.array(v)
                self._emb[s] = torch.from_numpy(v).to(self.device.torch_device)
        return self._emb[s]  # type: ignore[return-value]

    def _train_subsets(self) -> list:
        """Per shard, a searcher over its train rows only (built on first use; see index/subset.py)."""
        if self._subsets is None:
            import time

            from .index.subset import FlatSubset

            t0 = time.perf_counter()
            subs = []
            for s_i in range(len(self.index.shards)):
                ids, vec = self._train_rows(s_i)
                if self.search_method == "ivf" and ids.size:
                    sub = self._ivf(s_i, ids, vec)
                else:
                    sub = FlatSubset(ids, vec)
                subs.append(sub)
            self._subsets = subs
            self.search_build_seconds += time.perf_counter() - t0
            if self._log is not None:
                self._log(
                    f"search index: {'; '.join(s.describe() for s in subs)} "
                    f"(built in {time.perf_counter() - t0:.1f} s)"
                )
        return self._subsets

    @property
    def _keep_train_rows(self) -> bool:
        """Whether the filtered train rows are kept in memory (see ``CANDIDATE_CACHE_BYTES``)."""
        return self.index.ntotal * self.dim * 4 <= CANDIDATE_CACHE_BYTES

    def _train_mask(self, s: int) -> np.ndarray:
        """Which rows of shard ``s`` are train rows (everything but ``excluded``, the test split)."""
        return ~self.split_part(s).is_test

    def split_part(self, s: int) -> ShardSplit:
        """Shard ``s``'s train/test rows as a :class:`ShardSplit` (made once)."""
        if s not in self._split_parts:
            ids = self.index.shards[s].ids
            self._split_parts[s] = ShardSplit(ids, isin_sorted(ids, self.excluded))
        return self._split_parts[s]

    @property
    def split(self) -> Split:
        """The train/test split over this backend's shards (see :mod:`seals_gpu.split`)."""
        if self._split is None:
            self._split = Split.of_parts([self.split_part(s) for s in range(len(self.index.shards))])
        return self._split

    def _train_rows(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``s``'s train rows as ``(ids, contiguous float32 vectors)`` (see :meth:`_split_rows`)."""
        return self._split_rows(s, test=False)

    def _split_rows(self, s: int, *, test: bool) -> tuple[np.ndarray, np.ndarray]:
        """Shard ``s``'s train (or test) rows as ``(ids, contiguous float32 vectors)``: one filtered copy,
        kept and shared (by the search structures and All mode, or by the AP count) when every shard's rows
        fit ``CANDIDATE_CACHE_BYTES``, else made afresh on each call."""
        if (s, test) in self._kept:
            return self._kept[(s, test)]
        sh = self.index.shards[s]
        keep = self.split_part(s).rows(test)
        rows = (sh.ids[keep], np.ascontiguousarray(np.asarray(sh.vectors)[keep], dtype=np.float32))
        if self._keep_train_rows:
            self._kept[(s, test)] = rows
        return rows

    def _ivf(self, shard: int, ids: np.ndarray, vec: np.ndarray):
        """Shard ``shard``'s IVF over its train rows: from the cache when an earlier run built the same one,
        else trained, calibrated and cached."""
        from . import cache
        from .index.subset import IvfSubset

        key = None
        if self._cache_key is not None:
            key = {**self._cache_key, "shard": shard, "rows": int(ids.size), "ids": cache.ids_digest(ids)}
            key.update(k=self.search_k, recall=self.search_recall)
            hit = cache.load("ivf", key)
            if hit is not None:
                try:
                    sub = IvfSubset(ids, vec, hit["centroids"], hit["assign"], nprobe=int(hit["nprobe"]))
                    sub.recall = float(hit["recall"])
                    if self._log is not None:
                        self._log(
                            f"search index: reused the IVF an earlier run built for this store ({cache.cache_root()})"
                        )
                    return sub
                except Exception:  # noqa: BLE001 - a stale or damaged cache entry is rebuilt, never trusted
                    pass
        sub = IvfSubset.train(ids, vec)
        sub.calibrate_nprobe(self.search_k, target=self.search_recall)
        if key is not None:
            cache.save(
                "ivf",
                key,
                {
                    "centroids": sub.centroids.astype(np.float32),
                    "assign": sub.assign.astype(np.int32),
                    "nprobe": np.array(sub.nprobe),
                    "recall": np.array(sub.recall),
                },
            )
        return sub

    @property
    def search_path(self) -> str:
        """How ``search`` runs here, for the run log (``--device auto`` says what it chose and why)."""
        if self.device.kind == "cpu" and self.search_method in ("flat", "ivf"):
            return (
                "exact flat search over the train rows (FAISS GEMM), near-ties re-scored in float64"
                if self.search_method == "flat"
                else f"IVF search over the train rows, nprobe calibrated to recall@{self.search_k} >= "
                f"{self.search_recall:g} against exact search"
            )
        if self.device.kind == "cuda" and self.index.kind == "flat":
            return "exact search by torch matmul + top-k on the GPU (vectors resident, fp32)"
        if self.device.kind == "cuda" and self.device.faiss_gpu:
            return "FAISS GPU IVF-PQ with exact re-rank"
        if self.device.kind == "cuda":
            return "FAISS CPU IVF-PQ with exact re-rank (the installed faiss has no GPU support)"
        return f"{self.index.kind} search on the CPU"

    def search(self, xq: np.ndarray, k: int, exclude_ids: np.ndarray | None = None):
        """k nearest neighbours among the train rows (the test split never enters), ``(D, I)``."""
        if self.device.kind == "cpu" and self.search_method in ("flat", "ivf"):
            from .index.merge import merge_neighbors, rescorer

            parts = [s.search(xq, k, exclude_ids=exclude_ids) for s in self._train_subsets()]
            return parts[0] if len(parts) == 1 else merge_neighbors(parts, k, rescorer(xq, self.vectors))
        if self.device.kind == "cuda" and self.index.kind == "flat":
            from .index.merge import merge_neighbors, rescorer
            from .index.torch_exact import TorchExactIndex

            if self._gpu_search is None:
                self._gpu_search = [
                    TorchExactIndex(
                        sh.ids[keep],
                        self._shard_emb(s)[torch.from_numpy(keep).to(self.device.torch_device)],
                        device=self.device.torch_device,
                        dtype=torch.float32,
                    )
                    for s, sh in enumerate(self.index.shards)
                    for keep in [self._train_mask(s)]  # train rows only
                ]
            parts = [t.search(xq, k, exclude_ids=exclude_ids) for t in self._gpu_search]
            return parts[0] if len(parts) == 1 else merge_neighbors(parts, k, rescorer(xq, self.vectors))
        if self.device.kind == "cuda" and self.device.faiss_gpu and not self._faiss_on_gpu:
            import faiss

            res = faiss.StandardGpuResources()
            for sh in self.index.shards:
                if sh.index is not None:
                    sh.index = faiss.index_cpu_to_gpu(res, self.device.torch_device.index or 0, sh.index)
            self._faiss_res = res
            self._faiss_on_gpu = True
        if not self._restricted:
            # IVF-PQ shards: search only their train rows (FAISS ID selector), so every query still gets k
            # train neighbours (the paper's N(z, k)) instead of losing the test ids after the search
            for s, sh in enumerate(self.index.shards):
                sh.restrict_search(self._train_mask(s) if self.excluded.size else None)
            self._restricted = True
        return self.index.search(xq, k, exclude_ids=exclude_ids)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.index.vectors(ids)

    def _owners(self, ids: np.ndarray) -> np.ndarray:
        """The shard owning each id by the index's id ranges; raises naming ids above every range (an id
        inside a range that its shard does not hold raises in that shard's lookup)."""
        owner = self.index.shard_of(ids)
        if ids.size and int(owner.max()) >= len(self.index.shards):
            bad = ids[owner >= len(self.index.shards)][:5].tolist()
            raise IndexError_(f"ids {bad} are not in index {self.index.path}; pass ids from its store")
        return owner

    def sum_vectors(self, ids: np.ndarray) -> np.ndarray:
        """float64 sum of the vectors of ``ids``: per shard (in 65,536-id chunks), then the shard sums in
        shard order -- the same order of additions as the Ray backend, so both agree bit for bit."""
        out = np.zeros(self.dim, dtype=np.float64)
        ids = np.asarray(ids, dtype=np.int64)
        owner = self._owners(ids)
        for sh in np.unique(owner):
            part = np.zeros(self.dim, dtype=np.float64)
            sids = ids[owner == sh]
            for s in range(0, sids.size, 65_536):
                part += self.index.shards[sh].vectors_of(sids[s : s + 65_536]).astype(np.float64).sum(axis=0)
            out += part
        return out

    def candidate_sum(self) -> tuple[np.ndarray, int]:
        """Sum and count of the vectors of every candidate id (the whole train split), computed once."""
        if self._cand_sum is None:
            total = np.zeros(self.dim, dtype=np.float64)
            count = 0
            for ids, x in self._candidate_blocks_np():
                total += x.astype(np.float64).sum(axis=0)
                count += ids.size
            self._cand_sum = (total, count)
        return self._cand_sum

    def n_candidates(self) -> int:
        return self.candidate_sum()[1]

    def _candidate_blocks_np(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The train rows in blocks (All mode streams them every round): views of the kept train rows when
        they fit in memory (no filtering copy per round), else filtered block by block from the shards."""
        if self._keep_train_rows:
            for s in range(len(self.index.shards)):
                ids, x = self._train_rows(s)
                for b in range(0, ids.size, self.block_rows):
                    yield ids[b : b + self.block_rows], x[b : b + self.block_rows]
            return
        for ids, x in self.index.iter_vectors(self.block_rows):
            keep = ~isin_sorted(ids, self.excluded)
            if not keep.all():
                ids, x = ids[keep], x[keep]
            if ids.size:
                yield ids, x

    # ------------------------------------------------------------------ scoring
    def score_pool(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        W: torch.Tensor,
        bias: torch.Tensor,
        kind: torch.Tensor,
        ref: torch.Tensor | None,
        beta: float,
        b: int,
    ) -> TopB:
        dev = self.device.torch_device
        result: TopB | None = None
        owner = self._owners(ids) if len(self.index.shards) > 1 else np.zeros(ids.size, np.int64)
        for s in range(len(self.index.shards)):
            m = owner == s
            sids, soff = (ids, offsets) if m.all() else sub_csr(ids, offsets, m)
            rows = self.index.shards[s].positions(sids)
            part = score_select(
                self._shard_emb(s),
                torch.from_numpy(rows).to(dev),
                torch.from_numpy(sids).to(dev),
                torch.from_numpy(soff).to(dev),
                W,
                bias,
                kind,
                ref,
                beta,
                b,
                backend=self.scoring_backend,
            )
            result = part if result is None else merge_topb(result, part, b)
        assert result is not None
        return result

    def score_all(
        self,
        exclude: list[np.ndarray],
        W: torch.Tensor,
        bias: torch.Tensor,
        kind: torch.Tensor,
        ref: torch.Tensor | None,
        beta: float,
        b: int,
    ) -> TopB:
        dev = self.device.torch_device

        def blocks():
            for ids, x in self._candidate_blocks_np():
                yield torch.from_numpy(ids).to(dev), torch.from_numpy(x).to(dev)

        return score_all(blocks(), W, bias, kind, ref, beta, b, exclude=exclude, device=dev)

    def random_all(
        self, exclude: list[np.ndarray], keys: list[int], seed: int, round_no: int, b: int
    ) -> TopB:
        """All-mode Random: per unit, the ``b`` train rows not in its ``exclude`` with the highest random
        scores (see :func:`~seals_gpu.scoring.random_topb`), shard by shard, merged."""
        result = TopB.empty(len(keys), int(b))
        for s in range(len(self.index.shards)):
            top = random_topb(self.split_part(s).side_ids(False), exclude, keys, seed, round_no, b)
            result = top if s == 0 else merge_topb(result, top, b)
        return result

    # ------------------------------------------------------------------ test AP (see evaluate.py)
    def _test_blocks(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """The test rows (``excluded``) of every shard as ``(sorted ids, float32 vectors on the device)`` in
        blocks of at most ``TEST_BLOCK_ROWS``: the kept copy of :meth:`_split_rows` when the index fits
        ``CANDIDATE_CACHE_BYTES``, else gathered block by block each time (memory bounded by a block)."""
        dev = self.device.torch_device
        for s, sh in enumerate(self.index.shards):
            if self._keep_train_rows:
                ids, x_np = self._split_rows(s, test=True)
                if s not in self._test_dev:  # on the CPU a view of the kept copy; on a GPU resident there
                    self._test_dev[s] = torch.from_numpy(x_np).to(dev)
                x = self._test_dev[s]
                for b in range(0, ids.size, TEST_BLOCK_ROWS):
                    yield ids[b : b + TEST_BLOCK_ROWS], x[b : b + TEST_BLOCK_ROWS]
                continue
            pos = self.split_part(s).rows(test=True)  # positions found once, not per round
            for b in range(0, pos.size, TEST_BLOCK_ROWS):
                p = pos[b : b + TEST_BLOCK_ROWS]
                x_np = np.ascontiguousarray(np.asarray(sh.vectors)[p], dtype=np.float32)
                yield sh.ids[p], torch.from_numpy(x_np).to(dev)

    def group_logits(self, groups: list[Group], W: torch.Tensor, bias: torch.Tensor) -> list[np.ndarray]:
        """Per group ``(units, ids)``: its units' float32 logits of its ids (AP's pass 1)."""
        return group_logits(self.vectors, groups, W, bias)

    def test_counts(
        self, W: torch.Tensor, bias: torch.Tensor, thresholds: list[np.ndarray], groups: list[Group]
    ) -> list[np.ndarray]:
        """Per unit, how many test rows other than its positives score at or above each threshold (AP's
        pass 2, over this process's test rows)."""
        return count_blocks(self._test_blocks(), W, bias, thresholds, groups)
