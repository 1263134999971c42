"""The driver: rounds of fit -> select -> label -> expand for many concepts x strategies x modes at once.

A *unit* is one (concept, strategy, mode) triple. Every step of a round is batched across units:

1. **select**  kernel strategies (maxent, mlp, id) go to the backend in two calls, one for every SEALS
   unit's candidate pool (a CSR batch) and one streaming pass over the store for every All unit; random,
   id-knn and id-pairwise are scored here. Top-b per unit, ties broken by lower id.
2. **label**   the oracle answers for each unit's batch.
3. **expand**  one kNN search for all ids newly labeled by any SEALS unit (ids already searched are
   served from a cache: every strategy of a concept shares the seed set), then P = P ∪ N(new) − L.
4. **fit**     one batched logistic solve for all units (warm-started from the previous round).
5. **record**  test AP and recall per unit; metrics, selections and the checkpoint are written atomically.

Round 0 is the seed set (5 random positives + 95 random negatives from the train split by default).
Per-unit timings are the batched step's wall time divided by the number of units that shared it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .atomic import atomic_path, write_json, write_parquet
from .backend import LocalBackend
from .config import RunConfig, parse_list
from .device import DeviceChoice, resolve_device
from .errors import ConfigError, IndexError_, SealsError
from .index.build import LocalIndex
from .learner import LogisticModel, fit_logistic, fit_logistic_units
from .metrics import ap_rows
from .oracle import Oracle, SimulatedOracle
from .planner import SearchPlan, plan_search
from .pool import CandidatePool, NeighborCache, isin_sorted, sorted_unique, to_csr
from .report import REQUIRED_COLUMNS
from .scoring import TopB
from .store import Store, prevalence_range
from .strategies import binary_entropy, random_scores, select_topk_segmented

KERNEL_KIND = {"maxent": 0, "mlp": 1, "id": 2}
METRIC_COLUMNS = list(REQUIRED_COLUMNS)  # the metrics.parquet schema; report.py, which reads it, owns it
SELECTION_COLUMNS = ["concept", "strategy", "mode", "round", "id", "label"]
TEST_CACHE_BYTES = (
    64 << 20
)  # test-split vectors up to this size stay on the device; larger ones stream each round
CHECKPOINT = "checkpoint/state.npz"
# Crash tests only: SEALS_GPU_TEST_KILL_AT=POINT:ROUND makes the run SIGKILL itself at that point of that
# round's checkpoint. POINT is "outputs" (after metrics.parquet, before selections.parquet) or "checkpoint"
# (state.npz fully written to its temporary name, not yet renamed into place). See tests/test_reliability.py.
KILL_AT_ENV = "SEALS_GPU_TEST_KILL_AT"


def _test_kill(point: str, round_no: int) -> None:
    if os.environ.get(KILL_AT_ENV) == f"{point}:{round_no}":
        os.kill(os.getpid(), signal.SIGKILL)


class RunDirError(SealsError):
    """The run folder is in use, not empty, or its checkpoint does not match."""


# ---------------------------------------------------------------------- state
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


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on RUN_DIR/.lock, released by the kernel when the
    holder dies, so a crashed run never blocks its resume."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(
                f"cannot write the run folder {self.path.parent} ({e.strerror}); "
                "pick an --out you can write to"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise RunDirError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self.fd = fd

    def check_free(self) -> None:
        """Raise naming the holder if another live process holds the lock (nothing is created)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            holder = self.path.read_text().strip() or "another process"
            raise RunDirError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or pick another --out"
            ) from None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------- setup helpers
def concept_seed(seed: int, concept: Any) -> np.random.Generator:
    key = zlib.crc32(repr(concept).encode())
    return np.random.default_rng([seed, key])


def draw_seed_set(
    rng: np.random.Generator, train_ids: np.ndarray, positives_train: np.ndarray, n_pos: int, n_neg: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_pos`` random positives and ``n_neg`` random negatives from the train split."""
    pos = rng.choice(positives_train, size=n_pos, replace=False)
    neg: list[int] = []
    chosen: set[int] = set()
    n_negatives = train_ids.size - positives_train.size
    if n_neg > n_negatives:
        raise ConfigError(f"the seed set needs {n_neg} negatives but the train split has {n_negatives}")
    while len(neg) < n_neg:
        cand = train_ids[rng.integers(0, train_ids.size, size=2 * (n_neg - len(neg)) + 8)]
        for c in cand[~isin_sorted(cand, positives_train)].tolist():
            if c not in chosen:
                chosen.add(c)
                neg.append(c)
                if len(neg) == n_neg:
                    break
    ids = np.concatenate([pos.astype(np.int64), np.asarray(neg, dtype=np.int64)])
    labels = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    return ids, labels


def sample_concepts(
    store: Store,
    n: int,
    prevalence: tuple[float, float],
    seed: int,
    min_train_positives: int,
    train_ids: np.ndarray,
) -> list[Any]:
    """``n`` concepts with prevalence in [MIN, MAX] and enough train positives, chosen with ``seed``."""
    counts = store.concept_counts()
    lo, hi = prevalence
    eligible = sorted((c for c, k in counts.items() if lo <= k / store.num_rows <= hi), key=repr)
    if eligible:
        pos = store.concept_positives(eligible)
        eligible = [c for c in eligible if isin_sorted(pos[c], train_ids).sum() >= min_train_positives]
    if len(eligible) < n:
        raise ConfigError(
            f"only {len(eligible)} concepts have prevalence in [{lo}, {hi}] with >= {min_train_positives} "
            f"train positives, but --concepts-sample asks for {n}; widen --prevalence or sample fewer"
        )
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(eligible), size=n, replace=False)
    return [eligible[i] for i in sorted(picked)]


# ---------------------------------------------------------------------- the run
class Run:
    """A SEALS/All experiment over one store. Use :func:`run` or ``seals-gpu run``."""

    def __init__(
        self,
        config: RunConfig,
        out: Path,
        *,
        store: Store,
        index: LocalIndex | None = None,
        backend: Any | None = None,
        graph: Any | None = None,
        oracle: Oracle | None = None,
        device: DeviceChoice | None = None,
        progress: bool = True,
        log=print,
        cache: bool = True,
    ):
        self.config = config
        self.use_cache = cache
        self.out = Path(out)
        self.store = store
        self.device = device or resolve_device("auto")
        self.log = log
        self.progress = progress
        ids, is_test = store.read_split()
        self.train_ids = np.sort(ids[~is_test])
        self.test_ids = np.sort(ids[is_test])
        if self.train_ids.size == 0 or self.test_ids.size == 0:
            raise ConfigError(
                f"store {store.path} needs both train and test rows; its split gives "
                f"{self.train_ids.size} train and {self.test_ids.size} test"
            )
        n_seals = sum(m == "seals" for m in config.modes) * len(config.strategies)
        self.plan: SearchPlan = plan_search(
            requested=config.search,
            n_train=int(self.train_ids.size),
            dim=store.dim,
            concepts_with_seals=len(config.concepts) if n_seals else 0,
            seals_units=n_seals * len(config.concepts),
            seed_size=config.seed_size,
            budget=config.budget,
            recall=config.search_recall,
            device_kind=self.device.kind,
            graph=graph is not None,
            index_kind=None if backend is not None else (index.kind if index is not None else "flat"),
        )
        if backend is None:
            index = index if index is not None else LocalIndex.in_memory(store)
            backend = LocalBackend(
                index,
                self.device,
                excluded=self.test_ids,
                search_method=self.plan.method if self.plan.method in ("flat", "ivf", "index") else "flat",
                search_recall=config.search_recall,
                search_k=config.k,
                cache_key=self._cache_key(index) if cache else None,
                log=log,
            )
        self.backend = backend
        # seconds per phase of the loop, written to RUN/timings.json (see _write_timings)
        self.timings: dict[str, float] = dict.fromkeys(
            ("seed", "fit", "search", "select", "label", "record", "checkpoint"), 0.0
        )
        self.graph = graph
        positives = store.concept_positives(config.concepts)
        self.positives = positives
        self.oracle = oracle or SimulatedOracle(positives)
        self.units: list[Unit] = []
        for c in config.concepts:
            p_train = positives[c][isin_sorted(positives[c], self.train_ids)]
            if positives[c].size == 0:
                raise ConfigError(f"concept {c!r} has no positives in {store.path}; check the concept id")
            if p_train.size < config.seed_positives:
                raise ConfigError(
                    f"concept {c!r} has {p_train.size} train positives, fewer than --seed-positives "
                    f"{config.seed_positives}; lower --seed-positives or choose another concept"
                )
            for s in config.strategies:
                for m in config.modes:
                    unit = Unit(len(self.units), c, s, m, int(p_train.size))
                    if s == "id":
                        unit.ref_sum = np.zeros(store.dim, dtype=np.float64)
                    self.units.append(unit)
        if any(u.strategy == "id-knn" and u.mode == "all" for u in self.units) and graph is None:
            raise ConfigError(
                "id-knn in All mode needs every item's neighbours: build a graph with "
                "`seals-gpu index graph` and pass --graph, or use id / id-pairwise"
            )
        self.model: LogisticModel | None = None
        self.metrics: list[dict[str, Any]] = []
        self.selections: list[dict[str, np.ndarray]] = []
        self.round = -1
        self.already_finished = False  # set by start(resume=True) on a run that had already ended
        self._nbr = NeighborCache(config.k)
        self._precomputed = False
        self._test_x: torch.Tensor | None = None
        self._test_y: dict[Any, np.ndarray] = {
            c: isin_sorted(self.test_ids, positives[c]) for c in config.concepts
        }

    def _cache_key(self, index: LocalIndex) -> dict[str, Any]:
        """What a cached search structure for this run depends on (see :mod:`seals_gpu.cache`)."""
        from .cache import ids_digest

        return {
            "store": self.store.fingerprint,
            "test": ids_digest(self.test_ids),
            "index": "in-memory" if index.manifest["shards"][0]["dir"] is None else str(index.path.resolve()),
            "shards": len(index.shards),
            "method": self.plan.method,
        }

    # ------------------------------------------------------------------ neighbours
    def _precompute_neighbors(self) -> None:
        """Every train row's k neighbours in big batches (the plan says there are more queries ahead than
        train rows), from the cache when an earlier run with the same store and settings computed them."""
        from . import cache

        key = None
        if self.use_cache and hasattr(self.backend, "_cache_key") and self.backend._cache_key is not None:
            key = {**self.backend._cache_key, "k": self.config.k, "recall": self.config.search_recall}
            hit = cache.load("neighbors", key)
            if hit is not None and np.array_equal(hit.get("ids"), self.train_ids):
                I = hit["I"]
                if I.shape == (self.train_ids.size, self.config.k):
                    self._nbr.add(self.train_ids, hit["D"], I)
                    self.log(f"neighbours: reused every train row's {self.config.k} from the cache")
                    return
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.train_ids.size, desc="neighbours of every train row", unit="rows")
        Ds, Is = [], []
        for s in range(0, self.train_ids.size, 16_384):
            blk = self.train_ids[s : s + 16_384]
            D, I = self.backend.search(self.backend.vectors(blk), self.config.k, exclude_ids=blk)
            Ds.append(D)
            Is.append(I)
            if bar is not None:
                bar.update(blk.size)
        if bar is not None:
            bar.close()
        D, I = np.concatenate(Ds), np.concatenate(Is)
        self._nbr.add(self.train_ids, D, I)
        if key is not None:
            cache.save("neighbors", key, {"ids": self.train_ids, "D": D, "I": I})

    def neighbors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours ``(D (n, k), I (n, k))`` of each id (-inf / -1 padded), from the graph or one
        batched search for the ids not seen before; cached for the run."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self.plan.precompute and self.graph is None and not self._precomputed:
            self._precomputed = True
            self._precompute_neighbors()
        todo = self._nbr.missing(ids)
        if todo.size:
            k = self.config.k
            if self.graph is not None:
                D, I = self.graph.lookup(todo, k)
            else:
                D, I = self.backend.search(self.backend.vectors(todo), k, exclude_ids=todo)
            self._nbr.add(todo, D, I)
        return self._nbr.lookup(ids)

    def _expand(self, new_by_unit: dict[int, np.ndarray]) -> float:
        """Grow every SEALS unit's pool with the neighbours of its newly labeled ids."""
        t0 = time.perf_counter()
        seals = {u: ids for u, ids in new_by_unit.items() if self.units[u].mode == "seals"}
        if not seals:
            return 0.0
        new_all = np.concatenate(list(seals.values()))
        _, I_all = self.neighbors(new_all)  # one search (or graph lookup) for every unit's new ids
        start = 0
        for u, new in seals.items():
            unit = self.units[u]
            cand = I_all[start : start + new.size].ravel()
            start += new.size
            cand = sorted_unique(cand[cand >= 0])  # sorted: the membership tests below are ~6x faster
            cand = cand[~isin_sorted(cand, unit.pool.ids)]  # mostly pooled already: filter before the rest
            cand = cand[isin_sorted(cand, self.train_ids)]  # test ids never enter a pool
            added = unit.pool.grow(cand, np.sort(unit.labeled_ids))
            if unit.strategy == "id" and added.size:
                unit.ref_sum = unit.ref_sum + self.backend.sum_vectors(added)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ fit and evaluate
    def _fit(self) -> float:
        """One fit for every unit, warm-started from the last round's models. On CPU each unit's rows are
        passed as they are (per-unit L-BFGS, :func:`fit_logistic_units`); on a GPU one padded batch
        (batched Newton, :func:`fit_logistic`)."""
        t0 = time.perf_counter()
        if self.device.kind == "cpu":
            self.model = fit_logistic_units(
                [u.X if u.X is not None else np.empty((0, self.backend.dim), np.float32) for u in self.units],
                [u.label_vec for u in self.units],
                C=self.config.C,
                init=self.model,
            )
            return time.perf_counter() - t0
        dev = self.device.torch_device
        U = len(self.units)
        L = max(u.n_labeled for u in self.units)
        d = self.backend.dim
        X = torch.zeros((U, L, d), dtype=torch.float32)
        y = torch.zeros((U, L), dtype=torch.float32)
        mask = torch.zeros((U, L), dtype=torch.bool)
        for u in self.units:
            n = u.n_labeled
            X[u.index, :n] = torch.from_numpy(u.X)
            y[u.index, :n] = torch.from_numpy(u.label_vec.astype(np.float32))
            mask[u.index, :n] = True
        self.model = fit_logistic(X.to(dev), y.to(dev), mask.to(dev), C=self.config.C, init=self.model)
        return time.perf_counter() - t0

    def _test_ap(self) -> list[float]:
        assert self.model is not None
        if (
            self.test_ids.size * self.backend.dim * 4 > TEST_CACHE_BYTES
        ):  # stream: memory must not grow with |U|
            logits_np = self.backend.logits(self.test_ids, self.model.W, self.model.b)
        else:
            if self._test_x is None:
                self._test_x = torch.from_numpy(self.backend.vectors(self.test_ids)).to(
                    self.device.torch_device
                )
            logits = self._test_x @ self.model.W.to(self._test_x.dtype).T + self.model.b.to(
                self._test_x.dtype
            )
            logits_np = logits.float().cpu().numpy()
        # every unit's AP at once (one multi-threaded sort per chunk of units), equal to average_precision
        aps: list[float] = []
        for s in range(0, len(self.units), 64):
            chunk = self.units[s : s + 64]
            y = torch.from_numpy(np.stack([self._test_y[u.concept] for u in chunk]).astype(np.float64))
            scores = torch.from_numpy(np.ascontiguousarray(logits_np[:, s : s + len(chunk)].T))
            aps.extend(ap_rows(y, scores).tolist())  # float32 logits sort as they are
        return aps

    # ------------------------------------------------------------------ selection
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
            idx = torch.tensor([u.index for u in units], dtype=torch.long, device=W.device)
            Wg, bg = W[idx], bias[idx]
            if strategy in KERNEL_KIND:
                kind = torch.full((len(units),), KERNEL_KIND[strategy], dtype=torch.int8, device=dev)
                ref = self._ref_means(units) if strategy == "id" else None
                if mode == "seals":
                    ids, offsets = to_csr([u.pool.ids for u in units])
                    top = self.backend.score_pool(ids, offsets, Wg, bg, kind, ref, cfg.beta, b_round)
                else:
                    exclude = [np.sort(u.labeled_ids) for u in units]
                    top = self.backend.score_all(exclude, Wg, bg, kind, ref, cfg.beta, b_round)
                for j, u in enumerate(units):
                    chosen[u.index] = _valid(top, j)
            else:
                for j, u in enumerate(units):
                    chosen[u.index] = self._select_torch(u, Wg[j], bg[j], b_round)
            timings[(strategy, mode)] = time.perf_counter() - t0
        return chosen, timings

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
        return self.train_ids[~isin_sorted(self.train_ids, np.sort(u.labeled_ids))]

    def _select_torch(self, u: Unit, w: torch.Tensor, b: torch.Tensor, b_round: int) -> np.ndarray:
        """random, id-knn and id-pairwise: scored here, one unit at a time, in blocks."""
        cand = self._candidates(u)
        if cand.size == 0:
            return np.empty(0, np.int64)
        if u.strategy == "random":
            scores = torch.as_tensor(random_scores(cand, self.config.seed, u.index, self.round + 1))
        else:
            scores_np = np.empty(cand.size, dtype=np.float64)
            ref = None
            if u.strategy == "id-pairwise":
                ref = torch.from_numpy(self.backend.vectors(cand)).to(w.device)
            for s in range(0, cand.size, 65_536):
                block = cand[s : s + 65_536]
                x = torch.from_numpy(self.backend.vectors(block)).to(w.device)
                p = torch.sigmoid((x @ w + b).double())
                if u.strategy == "id-knn":  # mean similarity to the k nearest neighbours (0 without any)
                    D, I = self.neighbors(block)
                    valid = I >= 0
                    cnt = valid.sum(axis=1)
                    tot = np.where(valid, D, 0.0).astype(np.float64).sum(axis=1)
                    dens_t = torch.from_numpy(np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0))
                else:  # id-pairwise: the naive quadratic form the paper ran, chunked
                    dens_t = torch.zeros(x.shape[0], dtype=torch.float64, device=w.device)
                    for r in range(0, ref.shape[0], 16_384):
                        dens_t += (x @ ref[r : r + 16_384].T).double().sum(dim=1)
                    dens_t = (dens_t / ref.shape[0]).cpu()
                score = binary_entropy(p).cpu() * torch.clamp(dens_t, min=0.0) ** self.config.beta
                scores_np[s : s + block.size] = score.numpy()
            scores = torch.from_numpy(scores_np)
        sel, _, counts = select_topk_segmented(
            scores, torch.from_numpy(cand), torch.tensor([0, cand.size], dtype=torch.long), b_round
        )
        sel = np.asarray(sel[0][: int(counts[0])].cpu() if torch.is_tensor(sel) else sel[0][: int(counts[0])])
        return sel.astype(np.int64)

    # ------------------------------------------------------------------ bookkeeping
    def _add_labels(self, u: Unit, ids: np.ndarray, round_no: int) -> None:
        labels = np.asarray(self.oracle.label(u.concept, ids), dtype=bool)
        if labels.shape != ids.shape:
            raise SealsError(f"the oracle returned {labels.shape} labels for {ids.shape} ids")
        u.labeled.append(ids.astype(np.int64))
        u.labels.append(labels)
        x = self.backend.vectors(ids)
        u.X = x if u.X is None else np.concatenate([u.X, x])
        removed = u.pool.remove(ids)
        if u.ref_sum is not None:
            if u.mode == "seals":  # labeled ids leave the pool: take their vectors out of the pool's sum
                if removed.size:
                    u.ref_sum = u.ref_sum - x[isin_sorted(ids, np.sort(removed))].astype(np.float64).sum(
                        axis=0
                    )
            else:  # All: the reference set is every candidate minus the labeled ones
                u.ref_sum = u.ref_sum + x.astype(np.float64).sum(axis=0)
        self.selections.append(
            {
                "unit": np.full(ids.size, u.index, np.int64),
                "round": np.full(ids.size, round_no, np.int64),
                "id": ids.astype(np.int64),
                "label": labels,
            }
        )

    def _record(self, round_no: int, t: dict[str, Any]) -> None:
        aps = self._test_ap()
        n_train = self.train_ids.size
        n_units = len(self.units)
        n_seals = max(1, sum(u.mode == "seals" for u in self.units))
        for u in self.units:
            pool = len(u.pool) if u.mode == "seals" else n_train - u.n_labeled
            n_pos = int(u.label_vec.sum())
            sel = t["select"].get((u.strategy, u.mode), 0.0) / max(
                1, sum(1 for v in self.units if (v.strategy, v.mode) == (u.strategy, u.mode))
            )
            fit = t["fit"] / n_units
            search = t["search"] / n_seals if u.mode == "seals" else 0.0
            self.metrics.append(
                {
                    "concept": u.concept,
                    "strategy": u.strategy,
                    "mode": u.mode,
                    "round": round_no,
                    "n_labeled": u.n_labeled,
                    "n_positives": n_pos,
                    "pool_size": int(pool),
                    "pool_fraction": pool / n_train,
                    "test_ap": aps[u.index],
                    "recall": n_pos / u.n_pos_train,
                    "seconds_fit": fit,
                    "seconds_search": search,
                    "seconds_select": sel,
                    "seconds_round": fit + search + sel,
                }
            )

    # ------------------------------------------------------------------ outputs
    def _tables(self) -> tuple[pa.Table, pa.Table]:
        concept_type = (
            pa.int64() if all(isinstance(c, (int, np.integer)) for c in self.config.concepts) else pa.string()
        )
        mcols = {c: [r[c] for r in self.metrics] for c in METRIC_COLUMNS}
        if concept_type == pa.string():
            mcols["concept"] = [str(c) for c in mcols["concept"]]
        metrics = pa.table(mcols)
        metrics = metrics.cast(
            pa.schema(
                [
                    pa.field("concept", concept_type),
                    pa.field("strategy", pa.string()),
                    pa.field("mode", pa.string()),
                    *[pa.field(c, pa.int64()) for c in ("round", "n_labeled", "n_positives", "pool_size")],
                    *[pa.field(c, pa.float64()) for c in METRIC_COLUMNS[7:]],
                ]
            )
        )
        if self.selections:
            unit = np.concatenate([s["unit"] for s in self.selections])
            rnd = np.concatenate([s["round"] for s in self.selections])
            ids = np.concatenate([s["id"] for s in self.selections])
            lab = np.concatenate([s["label"] for s in self.selections])
        else:
            unit = rnd = ids = np.empty(0, np.int64)
            lab = np.empty(0, bool)
        # per-unit columns, then one vectorised take per column (no Python loop over every selection)
        take = pa.array(unit, type=pa.int64())
        unit_concepts = [u.concept for u in self.units]
        if concept_type == pa.string():
            unit_concepts = [str(c) for c in unit_concepts]
        selections = pa.table(
            {
                "concept": pa.array(unit_concepts, type=concept_type).take(take),
                "strategy": pa.array([u.strategy for u in self.units], type=pa.string()).take(take),
                "mode": pa.array([u.mode for u in self.units], type=pa.string()).take(take),
                "round": pa.array(rnd, type=pa.int64()),
                "id": pa.array(ids, type=pa.int64()),
                "label": pa.array(lab, type=pa.bool_()),
            }
        )
        return metrics, selections

    def _checkpoint(self) -> None:
        """One atomic file holds everything needed to continue; the Parquet outputs are derived from it.

        The Parquet outputs are written first and state.npz last: state.npz is the commit point. A crash in
        between leaves outputs one round ahead of the checkpoint, and the resume redoes that round exactly.
        """
        assert self.model is not None
        metrics, selections = self._tables()
        write_parquet(self.out / "metrics.parquet", metrics)
        _test_kill("outputs", self.round)
        write_parquet(self.out / "selections.parquet", selections)
        arrays: dict[str, np.ndarray] = {
            "config_json": np.frombuffer(
                json.dumps(self.config.to_json(), sort_keys=True).encode(), np.uint8
            ),
            "round": np.array(self.round),
            "W": self.model.W.double().cpu().numpy(),
            "b": self.model.b.double().cpu().numpy(),
            "metrics_json": np.frombuffer(
                json.dumps(self.metrics, default=_jsonable).encode(), dtype=np.uint8
            ),
        }
        for u in self.units:
            arrays[f"u{u.index}_labeled"] = u.labeled_ids
            arrays[f"u{u.index}_labels"] = u.label_vec
            arrays[f"u{u.index}_rounds"] = (
                np.concatenate([np.full(a.size, r, np.int64) for r, a in enumerate(u.labeled)])
                if u.labeled
                else np.empty(0)
            )
            arrays[f"u{u.index}_pool"] = u.pool.ids
            if u.ref_sum is not None:
                arrays[f"u{u.index}_ref"] = u.ref_sum
        arrays["sel_unit"] = np.concatenate([s["unit"] for s in self.selections])
        arrays["sel_round"] = np.concatenate([s["round"] for s in self.selections])
        arrays["sel_id"] = np.concatenate([s["id"] for s in self.selections])
        arrays["sel_label"] = np.concatenate([s["label"] for s in self.selections])
        with atomic_path(self.out / CHECKPOINT) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            _test_kill("checkpoint", self.round)

    def _restore(self) -> None:
        path = self.out / CHECKPOINT
        try:
            z = np.load(path, allow_pickle=False)
            arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise RunDirError(f"{path} is unreadable ({e}); delete {self.out} and start again") from None
        if "config_json" in arrays:  # the checkpoint carries its own config (store fingerprint included)
            saved = RunConfig.from_json(json.loads(arrays["config_json"].tobytes().decode()))
            diff = saved.same_selections_as(self.config)
            if diff:
                raise RunDirError(
                    f"{path} was written by a different configuration ({', '.join(diff)} "
                    f"changed) than {self.out}/config.json; delete {self.out} and start again"
                )
        self.round = int(arrays["round"])
        self.metrics = json.loads(arrays["metrics_json"].tobytes().decode())
        dev = self.device.torch_device
        self.model = LogisticModel(
            W=torch.from_numpy(arrays["W"]).float().to(dev), b=torch.from_numpy(arrays["b"]).float().to(dev)
        )
        for u in self.units:
            ids = arrays[f"u{u.index}_labeled"].astype(np.int64)
            labels = arrays[f"u{u.index}_labels"].astype(bool)
            rounds = arrays[f"u{u.index}_rounds"].astype(np.int64)
            u.labeled = [ids[rounds == r] for r in range(self.round + 1) if (rounds == r).any()]
            u.labels = [labels[rounds == r] for r in range(self.round + 1) if (rounds == r).any()]
            u.X = self.backend.vectors(ids) if ids.size else None
            u.pool = CandidatePool(arrays[f"u{u.index}_pool"].astype(np.int64))
            if f"u{u.index}_ref" in arrays:
                u.ref_sum = arrays[f"u{u.index}_ref"]
        self.selections = [
            {
                "unit": arrays["sel_unit"].astype(np.int64),
                "round": arrays["sel_round"].astype(np.int64),
                "id": arrays["sel_id"].astype(np.int64),
                "label": arrays["sel_label"].astype(bool),
            }
        ]
        # the metrics rows stored concepts as JSON: map them back to the configured keys
        keymap = {json.dumps(_jsonable(c)): c for c in self.config.concepts}
        for r in self.metrics:
            r["concept"] = keymap.get(json.dumps(r["concept"]), r["concept"])

    # ------------------------------------------------------------------ main loop
    def start(self, *, resume: bool = False) -> None:
        cfg = self.config
        lock = RunLock(self.out)
        lock.check_free()  # "in use by pid N" before "not empty": the live holder is the real reason
        if not resume and self.out.exists() and any(p.name != ".lock" for p in self.out.iterdir()):
            raise RunDirError(
                f"{self.out} is not empty; pass --resume to continue that run or pick a new --out"
            )
        lock.acquire()
        self.already_finished = False
        try:
            if resume and (self.out / "config.json").exists():
                check_resume(self.out, cfg)
                _remove_stale_temporaries(self.out)
            if resume and (self.out / CHECKPOINT).exists():
                self._restore()
                if self.round >= cfg.n_rounds:
                    self.already_finished = True
                    self.log(
                        f"{self.out} already finished (round {self.round} of {cfg.n_rounds}); nothing to do"
                    )
                    return
                self.log(f"resuming {self.out} after round {self.round}")
            else:
                write_json(self.out / "config.json", cfg.to_json())
            self._loop()
        finally:
            lock.release()

    def _loop(self) -> None:
        cfg = self.config
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.n_rounds + 1, initial=self.round + 1, desc="rounds", unit="round")
        T = self.timings
        if self.round < 0:
            t0 = time.perf_counter()
            for c in cfg.concepts:
                rng = concept_seed(cfg.seed, c)
                p_train = self.positives[c][isin_sorted(self.positives[c], self.train_ids)]
                ids, _ = draw_seed_set(rng, self.train_ids, p_train, cfg.seed_positives, cfg.seed_negatives)
                for u in self.units:
                    if u.concept == c:
                        self._add_labels(u, ids, 0)
            T["seed"] += time.perf_counter() - t0
            t_search = self._expand({u.index: u.labeled_ids for u in self.units})
            T["search"] += t_search
            t_fit = self._fit()
            T["fit"] += t_fit
            self.round = 0
            t0 = time.perf_counter()
            self._record(0, {"fit": t_fit, "search": t_search, "select": {}})
            t1 = time.perf_counter()
            self._checkpoint()
            T["record"] += t1 - t0
            T["checkpoint"] += time.perf_counter() - t1
            if bar is not None:
                bar.update(1)
        while self.round < cfg.n_rounds:
            r = self.round + 1
            b_round = min(cfg.batch, cfg.budget - cfg.seed_size - (r - 1) * cfg.batch)
            chosen, t_select = self._select(b_round)
            T["select"] += sum(t_select.values())
            t0 = time.perf_counter()
            for u in self.units:
                self._add_labels(u, chosen[u.index], r)
            T["label"] += time.perf_counter() - t0
            t_search = self._expand(chosen)
            T["search"] += t_search
            t_fit = self._fit()
            T["fit"] += t_fit
            self.round = r
            t0 = time.perf_counter()
            self._record(r, {"fit": t_fit, "search": t_search, "select": t_select})
            t1 = time.perf_counter()
            self._checkpoint()
            T["record"] += t1 - t0
            T["checkpoint"] += time.perf_counter() - t1
            if bar is not None:
                last = [m for m in self.metrics if m["round"] == r]
                aps = [m["test_ap"] for m in last if m["test_ap"] == m["test_ap"]]
                bar.set_postfix(mean_ap=f"{np.mean(aps):.3f}" if aps else "nan")
                bar.update(1)
        if bar is not None:
            bar.close()


def check_resume(out: Path, cfg: RunConfig) -> None:
    """--resume must use the settings (and the store) the run started with, and find a readable checkpoint.
    Reads only: a refused resume changes nothing."""
    path = out / "config.json"
    try:
        old = RunConfig.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, SealsError) as e:
        raise RunDirError(f"{path} is unreadable ({e}); delete {out} and start again") from None
    diff = old.same_selections_as(cfg)
    if "store_fingerprint" in diff:
        raise RunDirError(
            f"--resume: store {cfg.store} has fingerprint {cfg.store_fingerprint}, but the run in {out} "
            f"started on {old.store} with {old.store_fingerprint}; resume with the original store or pick a "
            "new --out"
        )
    if diff:
        raise RunDirError(
            f"--resume with a different configuration ({', '.join(diff)} changed) than the run "
            f"in {out}; rerun with the original settings or pick a new --out"
        )
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        try:
            with np.load(ckpt, allow_pickle=False) as z:
                z["round"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise RunDirError(f"{ckpt} is unreadable ({e}); delete {out} and start again") from None


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files left by atomic writes that a crash stopped before their rename."""
    for folder in (out, out / "checkpoint"):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                if p.is_file():
                    p.unlink(missing_ok=True)


def _valid(top: TopB, j: int) -> np.ndarray:
    n = int(top.counts[j])
    ids = top.ids[j][:n]
    return (ids.cpu().numpy() if torch.is_tensor(ids) else np.asarray(ids)).astype(np.int64)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o


# ---------------------------------------------------------------------- entry points
def run(
    store: str | os.PathLike[str] | Store,
    out: str | os.PathLike[str],
    *,
    concepts: list[Any],
    index: str | os.PathLike[str] | None = None,
    device: str = "auto",
    resume: bool = False,
    progress: bool = False,
    **settings: Any,
) -> Run:
    """Run SEALS/All from Python. ``settings`` are :class:`RunConfig` fields (k, batch, budget, ...).

    Example:
        >>> r = run("store", "runs/a", concepts=[3, 7], strategies=("maxent",), budget=300)  # doctest: +SKIP
    """
    store = store if isinstance(store, Store) else Store(store)
    idx = None
    if index is not None:
        idx = LocalIndex.open(index)
        idx.check_store(store)
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=tuple(concepts),
        index=str(index) if index is not None else None,
        **settings,
    )
    dev = resolve_device(device)
    r = Run(cfg, Path(out), store=store, index=idx, device=dev, progress=progress, log=lambda *_: None)
    r.start(resume=resume)
    return r


def _check_out_dir(out: Path) -> None:
    """Refuse an --out that is a file or that cannot be created, before anything is written."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; pick another --out")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(
            f"cannot create --out {out}: {parent} is not a folder you can write to; pick another --out"
        )


def _has_full_supervision(out: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        return "full" in pq.read_table(out / "metrics.parquet", columns=["strategy"]).column(0).to_pylist()
    except (OSError, pa.ArrowException):
        return False


def run_from_args(a: Any) -> Run:
    """``seals-gpu run``: validate everything before writing anything."""
    import sys

    t_entry = time.perf_counter()

    store = Store(a.store)
    strategies = parse_list(a.strategies, what="strategies")
    modes = parse_list(a.modes, what="modes")
    ids, is_test = store.read_split()
    train_ids = np.sort(ids[~is_test])
    if not store.has_labels:
        raise ConfigError(
            f"store {store.path} has no 'labels' column, so there is nothing to simulate; "
            "add labels or plug in your own Oracle from Python"
        )
    if a.concepts is not None:
        concepts = store.resolve_concepts(a.concepts.split(","))
        counts = store.concept_positives(concepts)
        for c in concepts:
            if counts[c].size == 0:
                raise ConfigError(
                    f"unknown concept {c!r}: no item of {store.path} has it; "
                    f"see `seals-gpu store info {store.path}`"
                )
    else:
        concepts = sample_concepts(
            store, a.concepts_sample, prevalence_range(a.prevalence), a.seed, a.seed_positives, train_ids
        )
    dev = resolve_device(a.device)
    use_ray = bool(
        getattr(a, "ray", False) or getattr(a, "ray_address", None) or os.environ.get("RAY_ADDRESS")
    )
    index = None
    if a.index is not None:
        if use_ray:  # the shard actors open the shards; the driver only checks the manifest
            from .index.build import read_manifest

            fp = read_manifest(a.index)["store"]["fingerprint"]
            if fp != store.fingerprint:
                raise IndexError_(
                    f"index {a.index} was built from a store with fingerprint {fp}, but {store.path} has "
                    f"{store.fingerprint}; rebuild it with `seals-gpu index build {store.path} {a.index} --force`"
                )
        else:
            index = LocalIndex.open(a.index)
            index.check_store(store)
    graph = None
    if a.graph is not None:
        from .graph import KnnGraph

        graph = KnnGraph.open(a.graph)
        graph.check_store(store)
        if graph.k < a.k:
            raise ConfigError(
                f"graph {a.graph} holds {graph.k} neighbours per item but --k is {a.k}; "
                f"rebuild it with `--k {a.k}` or lower --k"
            )
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=tuple(concepts),
        strategies=tuple(strategies),
        modes=tuple(modes),
        k=a.k,
        batch=a.batch,
        budget=a.budget,
        seed_positives=a.seed_positives,
        seed_negatives=a.seed_negatives,
        seed=a.seed,
        C=a.C,
        beta=a.beta,
        index=str(a.index) if a.index else None,
        graph=str(a.graph) if a.graph else None,
        full_supervision=a.full_supervision,
        search=getattr(a, "search", "auto"),
        search_recall=getattr(a, "search_recall", 0.95),
    )
    out = Path(a.out)
    _check_out_dir(out)
    RunLock(out).check_free()
    if not a.resume and out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise RunDirError(f"{out} is not empty; pass --resume to continue that run or pick a new --out")
    if a.resume and not (out / "config.json").exists() and not (out / ".lock").exists():
        # (a folder holding only .lock is a run killed before it wrote anything: --resume starts it over)
        raise RunDirError(f"--resume: {out} holds no run (no config.json); drop --resume to start one")
    if a.resume and (out / "config.json").exists():
        check_resume(out, cfg)

    def log(*m: object) -> None:
        print(*m, file=sys.stderr)

    def announce() -> None:  # once every check has passed, so that a refused run prints only its error
        log(
            f"device: {dev.reason}; scoring: "
            f"{'fused CUDA kernels' if dev.kind == 'cuda' and dev.has_cupy else 'torch reference'}"
        )
        log(
            f"{len(concepts)} concept(s) x {len(strategies)} strateg(ies) x {len(modes)} mode(s); "
            f"{cfg.n_rounds} rounds of {cfg.batch} after a seed set of {cfg.seed_size}"
        )
        log(
            "learner: "
            + (
                f"per-unit L-BFGS on the CPU ({torch.get_num_threads()} thread(s), warm-started; a d x d "
                "Hessian per unit costs more than the whole fit there)"
                if dev.kind == "cpu"
                else "batched Newton on the GPU (one batched Hessian solve for every unit)"
            )
        )

    if use_ray:
        if a.index is None:
            raise ConfigError("--ray needs --index (a built, possibly sharded, index folder)")
        from .distributed import RayBackend, ray_session

        with (
            ray_session(a.ray_address),
            RayBackend(a.index, excluded=np.sort(ids[is_test]), device=dev) as backend,
        ):
            r = Run(
                cfg, out, store=store, backend=backend, graph=graph, device=dev, progress=not a.quiet, log=log
            )
            announce()
            log("search and scoring: Ray shard actors")
            t_loaded = time.perf_counter()
            r.start(resume=a.resume)
    else:
        r = Run(
            cfg,
            out,
            store=store,
            index=index,
            graph=graph,
            device=dev,
            progress=not a.quiet,
            log=log,
            cache=not getattr(a, "no_cache", False),
        )
        announce()
        log(f"plan: search {r.plan.describe()}")
        log(f"search: {'kNN graph lookup' if graph is not None else r.backend.search_path}")
        t_loaded = time.perf_counter()
        r.start(resume=a.resume)
    t_loop = time.perf_counter()
    if a.full_supervision and not (r.already_finished and _has_full_supervision(out)):
        from .supervised import record_full_supervision

        record_full_supervision(r)
    t_full = time.perf_counter()
    from .report import format_table, load_metrics, summarize

    print(format_table(summarize(load_metrics(out))))
    if not r.already_finished:
        _write_timings(
            r,
            startup=t_entry - _process_start(t_entry),
            load=t_loaded - t_entry,
            loop=t_loop - t_loaded,
            full=t_full - t_loop,
            report=time.perf_counter() - t_full,
        )
    return r


def _process_start(now: float) -> float:
    """``time.perf_counter()`` value at which this process started (Linux /proc; else ``now``)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return now - max(0.0, age - (time.perf_counter() - now))
    except (OSError, ValueError, IndexError):
        return now


def _write_timings(r: Run, *, startup: float, load: float, loop: float, full: float, report: float) -> None:
    """RUN/timings.json: where the wall time of this invocation went, phase by phase (seconds).

    ``startup`` is the interpreter and imports before the command ran; ``load`` reading the store, the
    split, the concepts and the index; ``index`` building the run's search index (IVF k-means and
    calibration, or the flat copy of the train rows); the loop phases as timed around each step;
    ``other`` the rest of the loop (progress bar, bookkeeping)."""
    T = dict(r.timings)
    build = float(getattr(r.backend, "search_build_seconds", 0.0))
    T["index"] = build
    T["search"] = max(0.0, T["search"] - build)
    loop_named = sum(r.timings.values())
    phases = {"startup": startup, "load": load, **T, "full_supervision": full, "report": report}
    phases["other"] = max(0.0, loop - loop_named)
    write_json(
        r.out / "timings.json",
        {
            "phases": {k: round(v, 4) for k, v in phases.items()},
            "total": round(sum(phases.values()), 4),
            "plan": {
                "search": r.plan.method,
                "reason": r.plan.reason,
                "path": getattr(r.backend, "search_path", ""),
            },
            "units": len(r.units),
            "rounds": r.round,
        },
    )
