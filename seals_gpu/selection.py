"""Selection: each round's picks for every unit, batched by (strategy, mode).

Kernel strategies (maxent, mlp, id) go to the backend in two calls, one for every SEALS unit's candidate
pool (a CSR batch) and one streaming pass over the train rows for every All unit; random, id-knn and
id-pairwise are scored here, one unit at a time; ``--expand each`` runs Algorithm 2 as written. Top-b per
unit, ties broken by lower id. :class:`Selection` is mixed into :class:`seals_gpu.driver.Run`, whose state
(config, units, model, backend, neighbours) it reads and never changes.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .device import DeviceChoice
from .learner import LogisticModel
from .pool import CandidatePool, isin_sorted, to_csr
from .probe import probe_count
from .scoring import TopB, strategy_scores
from .split import Split
from .strategies import binary_entropy, random_scores, select_topk_segmented

KERNEL_KIND = {"maxent": 0, "mlp": 1, "id": 2}
DRIVER_BLOCK = 65_536  # candidates scored at a time by the strategies scored here (memory bound only)
PAIRWISE_CHUNK = 16_384  # reference rows per product in id-pairwise's quadratic form (memory bound only)


@dataclass
class Unit:
    """One (concept, strategy, mode) learner and its labeled set."""

    index: int
    concept: Any
    strategy: str
    mode: str
    n_pos_train: int
    labeled: list[np.ndarray] = field(default_factory=list)  # ids per round, in selection order
    labels: list[np.ndarray] = field(default_factory=list)  # bool per round
    pool: CandidatePool = field(default_factory=CandidatePool.empty)
    ref_sum: np.ndarray | None = None  # float64 (d,): pool sum (id-SEALS) or labeled sum (id-All)
    X: np.ndarray | None = None  # float32 (n_labeled, d)

    @property
    def labeled_ids(self) -> np.ndarray:
        return np.concatenate(self.labeled) if self.labeled else np.empty(0, np.int64)

    @property
    def label_vec(self) -> np.ndarray:
        return np.concatenate(self.labels) if self.labels else np.empty(0, bool)

    @property
    def n_labeled(self) -> int:
        return int(sum(a.size for a in self.labeled))


class Selection:
    """The selection step of a run (mixed into ``Run``): what it reads of the run is declared here."""

    config: RunConfig
    device: DeviceChoice
    model: LogisticModel | None
    units: list[Unit]
    backend: Any
    round: int
    split: Split

    neighbors: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # k nearest train rows of ids (Run)

    def _select(self, b_round: int) -> tuple[dict[int, np.ndarray], dict[tuple[str, str], float]]:
        """Pick up to ``b_round`` ids per unit; returns ids per unit and seconds per (strategy, mode)."""
        assert self.model is not None
        cfg = self.config
        dev = self.device.torch_device
        W, bias = self.model.W, self.model.b
        chosen: dict[int, np.ndarray] = {}
        timings: dict[tuple[str, str], float] = {}

        groups: dict[tuple[str, str], list[Unit]] = {}
        for u in self.units:
            groups.setdefault((u.strategy, u.mode), []).append(u)

        for (strategy, mode), units in groups.items():
            t0 = time.perf_counter()
            b = b_round - probe_count(cfg.probe, b_round) if mode == "seals" else b_round  # --probe: B fewer
            idx = torch.tensor([u.index for u in units], dtype=torch.long, device=W.device)
            Wg, bg = W[idx], bias[idx]
            if mode == "seals" and cfg.expand == "each":
                ref = self._ref_means(units) if strategy == "id" else None
                for j, u in enumerate(units):
                    chosen[u.index] = self._select_each(u, Wg[j], bg[j], None if ref is None else ref[j], b)
            elif strategy in KERNEL_KIND:
                kind = torch.full((len(units),), KERNEL_KIND[strategy], dtype=torch.int8, device=dev)
                ref = self._ref_means(units) if strategy == "id" else None
                if mode == "seals":
                    ids, offsets = to_csr([u.pool.ids for u in units])
                    top = self.backend.score_pool(ids, offsets, Wg, bg, kind, ref, cfg.beta, b)
                else:
                    exclude = [np.sort(u.labeled_ids) for u in units]
                    top = self.backend.score_all(exclude, Wg, bg, kind, ref, cfg.beta, b)
                for j, u in enumerate(units):
                    chosen[u.index] = _valid(top, j)
            elif strategy == "random" and mode == "all":  # drawn on the shards: no train list here
                exclude = [np.sort(u.labeled_ids) for u in units]
                keys = [unit_key(u) for u in units]
                top = self.backend.random_all(exclude, keys, cfg.seed, self.round + 1, b)
                for j, u in enumerate(units):
                    chosen[u.index] = _valid(top, j)
            else:
                for j, u in enumerate(units):
                    chosen[u.index] = self._select_torch(u, Wg[j], bg[j], b)
            timings[(strategy, mode)] = time.perf_counter() - t0
        return chosen, timings

    def _select_each(
        self, u: Unit, w: torch.Tensor, b: torch.Tensor, ref: torch.Tensor | None, b_round: int
    ) -> np.ndarray:
        """Algorithm 2 as written (``--expand each``): with the model fixed for the round, pick the best
        candidate, add its k neighbours to the pool at once, pick again from the grown pool, b times.

        Scores do not change within a round (the model and, for ID, the reference mean are fixed), so
        each candidate is scored once and kept in a max-heap by (score, lower id); only a pick's new
        neighbours are scored. The pool itself is grown by ``_expand`` after labeling, as for ``batch``:
        it ends up the same set.
        """
        import heapq

        labeled = set(u.labeled_ids.tolist())
        seen = set(u.pool.ids.tolist())

        def scores(ids: np.ndarray) -> np.ndarray:
            if ids.size == 0:
                return np.empty(0)
            if u.strategy == "random":
                return random_scores(ids, self.config.seed, unit_key(u), self.round + 1).numpy()
            x = torch.from_numpy(self.backend.vectors(ids)).to(w.device, torch.float32)
            z = (x @ w.float() + b.float()).double()
            sim = (x @ ref.float()).double() if ref is not None else None
            return strategy_scores(z, KERNEL_KIND[u.strategy], sim, self.config.beta).cpu().numpy()

        heap = [(-float(s), int(i)) for s, i in zip(scores(u.pool.ids), u.pool.ids.tolist(), strict=True)]
        heapq.heapify(heap)
        picks: list[int] = []
        while heap and len(picks) < b_round:
            _, z_id = heapq.heappop(heap)
            picks.append(z_id)
            D, I = self.neighbors(np.array([z_id], dtype=np.int64))
            nb = I[0][np.isfinite(D[0])].tolist()  # missing slots by similarity (-inf), never by id
            arr = np.asarray([i for i in nb if i not in seen and i not in labeled])
            arr = arr.astype(np.int64)
            seen.update(arr.tolist())
            for s, i in zip(scores(arr), arr.tolist(), strict=True):
                heapq.heappush(heap, (-float(s), i))
        return np.asarray(picks, dtype=np.int64)

    def _ref_means(self, units: list[Unit]) -> torch.Tensor:
        rows = []
        for u in units:
            if u.mode == "seals":
                n = max(len(u.pool), 1)
                rows.append(u.ref_sum / n)
            else:
                total, count = self.backend.candidate_sum()
                n = max(count - u.n_labeled, 1)
                rows.append((total - u.ref_sum) / n)
        return torch.from_numpy(np.stack(rows).astype(np.float32)).to(self.device.torch_device)

    def _candidates(self, u: Unit) -> np.ndarray:
        if u.mode == "seals":
            return u.pool.ids
        train = self.split.train.all()  # All mode lists the whole train split (8 bytes a row, this round)
        return train[~isin_sorted(train, np.sort(u.labeled_ids))]

    def _select_torch(self, u: Unit, w: torch.Tensor, b: torch.Tensor, b_round: int) -> np.ndarray:
        """random, id-knn and id-pairwise: scored here, one unit at a time, in blocks."""
        cand = self._candidates(u)
        if cand.size == 0:
            return np.empty(0, np.int64)
        if u.strategy == "random":
            scores = torch.as_tensor(random_scores(cand, self.config.seed, unit_key(u), self.round + 1))
        else:
            scores_np = np.empty(cand.size, dtype=np.float64)
            ref = None
            if u.strategy == "id-pairwise":
                ref = torch.from_numpy(self.backend.vectors(cand)).to(w.device)
            for s in range(0, cand.size, DRIVER_BLOCK):
                block = cand[s : s + DRIVER_BLOCK]
                x = torch.from_numpy(self.backend.vectors(block)).to(w.device)
                p = torch.sigmoid((x @ w + b).double())
                if u.strategy == "id-knn":  # mean similarity to the k nearest neighbours (0 without any)
                    D, I = self.neighbors(block)
                    valid = np.isfinite(D)  # a missing neighbour has D = -inf (any int64 is an id)
                    cnt = valid.sum(axis=1)
                    tot = np.where(valid, D, 0.0).astype(np.float64).sum(axis=1)
                    dens_t = torch.from_numpy(np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0))
                else:  # id-pairwise: the naive quadratic form the paper ran, chunked
                    dens_t = torch.zeros(x.shape[0], dtype=torch.float64, device=w.device)
                    for r in range(0, ref.shape[0], PAIRWISE_CHUNK):
                        dens_t += (x @ ref[r : r + PAIRWISE_CHUNK].T).double().sum(dim=1)
                    dens_t = (dens_t / ref.shape[0]).cpu()
                score = binary_entropy(p).cpu() * torch.clamp(dens_t, min=0.0) ** self.config.beta
                scores_np[s : s + block.size] = score.numpy()
            scores = torch.from_numpy(scores_np)
        sel, _, counts = select_topk_segmented(
            scores, torch.from_numpy(cand), torch.tensor([0, cand.size], dtype=torch.long), b_round
        )
        return sel[0][: int(counts[0])].cpu().numpy().astype(np.int64)


def unit_key(u: Unit) -> int:
    """A stable key of (concept, strategy, mode): Random's draws depend on it, not on the unit's position in
    the run, so a concept selects the same items alone or among others."""
    return zlib.crc32(repr((u.concept, u.strategy, u.mode)).encode())


def _valid(top: TopB, j: int) -> np.ndarray:
    """Unit ``j``'s valid ids (every backend's TopB holds torch tensors)."""
    return top.ids[j][: int(top.counts[j])].cpu().numpy().astype(np.int64)
