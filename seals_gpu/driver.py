"""The driver: rounds of fit -> select -> label -> expand for many concepts x strategies x modes at once.

A *unit* is one (concept, strategy, mode) triple. Every step of a round is batched across units:

1. **select**  (:mod:`seals_gpu.selection`) kernel strategies (maxent, mlp, id) go to the backend in two
   calls, one for every SEALS unit's candidate pool (a CSR batch) and one streaming pass over the store for
   every All unit; random, id-knn and id-pairwise are scored there. Top-b per unit, ties broken by lower id.
2. **label**   the oracle answers for each unit's batch.
3. **expand**  one kNN search for all ids newly labeled by any SEALS unit (ids already searched are
   served from a cache: every strategy of a concept shares the seed set), then P = P ∪ N(new) − L.
4. **fit**     one batched logistic solve for all units (warm-started from the previous round).
5. **record**  test AP (:mod:`seals_gpu.evaluate`, where the test rows live) and recall per unit; metrics,
   selections and the checkpoint (:mod:`seals_gpu.checkpoint`) are written atomically.

Round 0 is the seed set (5 random positives + 95 random negatives from the train split by default).
Per-unit timings are the batched step's wall time divided by the number of units that shared it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_json
from .backend import LocalBackend
from .checkpoint import CHECKPOINT, kill_point, restore, write_checkpoint
from .config import RunConfig
from .device import DeviceChoice, resolve_device
from .errors import ConfigError, SealsError
from .evaluate import evaluate_ap
from .index.build import LocalIndex
from .learner import LogisticModel, fit_logistic, fit_logistic_units
from .oracle import Oracle, SimulatedOracle
from .planner import SearchPlan, plan_search
from .pool import NeighborCache, isin_sorted, sorted_unique
from .probe import add_probes, outside_state, probe_rows
from .queue import AnswerOracle, Asked, Pending, pending_answers, write_queue
from .rundir import RunLock, inspect_run_dir, remove_stale_temporaries, run_dir_signature, undo_start
from .seeds import (
    check_seed_set,
    concept_seed,
    draw_excluding,
    draw_seed_set,
    read_seed_ids,
    text_seed_ids,
)
from .selection import Selection, Unit
from .split import TEST, TRAIN, Split, split_codes
from .store import Store

NEIGHBOR_SLOT_BYTES = 12  # one neighbour of one row in the run's table: an int64 id and a float32 similarity


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux ``MemAvailable``); None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_k(config: RunConfig, plan: SearchPlan, n_train: int, *, every_row: bool = False) -> None:
    """Refuse a ``k`` the run cannot hold, before anything is written: more neighbours than a train row has
    (the other train rows), or a neighbour table (``NEIGHBOR_SLOT_BYTES`` per slot, a row for every id
    searched: at most the plan's queries, every train row when it precomputes them or id-knn scores them)
    larger than the memory available."""
    k = config.k
    if k > n_train - 1:
        raise ConfigError(
            f"--k {k} is more than the {n_train - 1} neighbours a train row can have (the other train rows); "
            f"lower --k to at most {max(1, n_train - 1)}"
        )
    rows = n_train if (plan.precompute or every_row) else min(max(plan.queries, 1), n_train)
    need = rows * k * NEIGHBOR_SLOT_BYTES
    free = available_memory()
    if free is not None and need > free:
        raise ConfigError(
            f"--k {k} needs about {need / 2**30:.1f} GiB for the neighbours of up to {rows:,} rows, more than the "
            f"{free / 2**30:.1f} GiB of memory available; lower --k"
        )


class Run(Selection):
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
        self.out = Path(out)
        self.store = store
        self.device = device or resolve_device("auto")
        self.log = log
        self.progress = progress
        # the split: read here for an in-process backend (its index holds every row in this process anyway);
        # a given backend (Ray shard actors) answers for its own rows, so the driver holds no id list
        test_ids = None
        if backend is None:
            ids, is_test = store.read_split()
            test_ids = np.sort(ids[is_test])
            n_train, n_test = int(ids.size - test_ids.size), int(test_ids.size)
            del ids, is_test
        else:
            n_train, n_test = backend.split.train.size, backend.split.test.size
        if n_train == 0 or n_test == 0:
            raise ConfigError(
                f"store {store.path} needs both train and test rows; its split gives "
                f"{n_train} train and {n_test} test"
            )
        n_seals = sum(m == "seals" for m in config.modes) * len(config.strategies)
        self.plan: SearchPlan = plan_search(
            requested=config.search,
            n_train=n_train,
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
        if config.budget > n_train:
            raise ConfigError(
                f"--budget {config.budget} is more than the {n_train} train rows of {store.path}: no unit can "
                f"label more than the train split; lower --budget to at most {n_train}"
            )
        if n_seals or "id-knn" in config.strategies:
            check_k(config, self.plan, n_train, every_row="id-knn" in config.strategies)
        # what a cached search structure depends on (None: caching off, or a backend this run did not build)
        self.cache_key: dict[str, Any] | None = None
        if backend is None:
            index = index if index is not None else LocalIndex.in_memory(store)
            self.cache_key = self._search_cache_key(index, test_ids) if cache else None
            backend = LocalBackend(
                index,
                self.device,
                excluded=test_ids,
                search_method=self.plan.method if self.plan.method in ("flat", "ivf", "index") else "flat",
                search_recall=config.search_recall,
                search_k=config.k,
                cache_key=self.cache_key,
                log=log,
            )
        self.backend = backend
        self.split: Split = backend.split  # train/test: sizes, membership, draws by rank (see split.py)
        # seconds per phase of the loop, written to RUN/timings.json (see launch._write_timings)
        self.timings: dict[str, float] = dict.fromkeys(
            ("seed", "fit", "search", "select", "label", "record", "checkpoint"), 0.0
        )
        self.graph = graph
        # a store without labels (--oracle queue with --seed-ids): no ground truth, so no AP or recall (NaN)
        positives = (
            store.concept_positives(config.concepts)
            if store.has_labels
            else {c: np.empty(0, np.int64) for c in config.concepts}
        )
        self.positives = positives
        self.oracle = oracle or SimulatedOracle(positives)
        # --seed-ids: each concept's known positives and negatives (their labels are not asked again)
        self.seed_file = (
            read_seed_ids(Path(config.seed_ids), config.concepts, self.split) if config.seed_ids else None
        )
        self.known: dict[tuple[str, int], bool] = {}
        for key, (pos, neg) in (self.seed_file or {}).items():
            self.known.update(
                {(key, i): True for i in pos.tolist()} | {(key, i): False for i in neg.tolist()}
            )
            free = n_train - pos.size - neg.size
            if free < config.seed_negatives - neg.size:
                raise ConfigError(
                    f"--seed-negatives {config.seed_negatives}: concept {key} has only {free} train rows "
                    "besides its --seed-ids; lower --seed-negatives"
                )
        self.units: list[Unit] = []
        # each concept's positives by split: one question to the shards for all of them
        codes = split_codes(self.split, [positives[c] for c in config.concepts])
        self._test_pos: dict[Any, np.ndarray] = {}
        self._train_pos: dict[Any, np.ndarray] = {}
        for c, code in zip(config.concepts, codes, strict=True):
            p_train = self._train_pos[c] = positives[c][code == TRAIN]
            self._test_pos[c] = positives[c][code == TEST]  # what AP needs: never a per-row test array
            if store.has_labels and positives[c].size == 0:
                raise ConfigError(f"concept {c!r} has no positives in {store.path}; check the concept id")
            if self.seed_file is None and config.seed_text is None:
                check_seed_set(c, n_train, int(p_train.size), config.seed_positives, config.seed_negatives)
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
        # --oracle queue: the round queued and awaiting answers, and its queue files once this start wrote them
        self.pending: Pending | None = None
        self.awaiting: tuple[Path, Path] | None = None
        self._nbr = NeighborCache(config.k)
        self._precomputed = False
        self._probe_rows: dict[int, dict[str, float]] = {}  # --probe: each unit's estimate for this round
        by_concept: dict[Any, list[int]] = {}
        for u in self.units:
            by_concept.setdefault(u.concept, []).append(u.index)
        self._ap_groups = [(np.asarray(v, np.int64), self._test_pos[c]) for c, v in by_concept.items()]
        for c in config.concepts:
            if not self._test_pos[c].size and store.has_labels:
                log(
                    f"warning: concept {c!r} has no positive in the test split: its test AP is undefined "
                    "(NaN, left out of the means); its recall is still measured. Pick another concept for AP"
                )

    def _search_cache_key(self, index: LocalIndex, test_ids: np.ndarray) -> dict[str, Any]:
        """What a cached search structure for this run depends on (see :mod:`seals_gpu.cache`)."""
        from .cache import ids_digest

        return {
            "store": self.store.fingerprint,
            "test": ids_digest(test_ids),
            "index": "in-memory" if index.manifest["shards"][0]["dir"] is None else str(index.path.resolve()),
            "shards": len(index.shards),
            "method": self.plan.method,
        }

    # ------------------------------------------------------------------ neighbours
    def _precompute_neighbors(self) -> None:
        """Every train row's k neighbours in big batches (the plan says there are more queries ahead than
        train rows), from the cache when an earlier run with the same store and settings computed them."""
        from . import cache

        train_ids = self.split.train.all()  # every train row is a query here: the list is needed
        key = None
        if self.cache_key is not None:
            # format 2: missing neighbours are told by D = -inf (any int64 is an id); format 1 entries dropped
            # negative ids, so they are never reused
            key = {**self.cache_key, "k": self.config.k, "recall": self.config.search_recall, "format": 2}
            hit = cache.load("neighbors", key)
            if hit is not None and np.array_equal(hit.get("ids"), train_ids):
                I = hit["I"]
                if I.shape == (train_ids.size, self.config.k):
                    self._nbr.add(train_ids, hit["D"], I)
                    self.log(f"neighbours: reused every train row's {self.config.k} from the cache")
                    return
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=train_ids.size, desc="neighbours of every train row", unit="rows")
        Ds, Is = [], []
        for s in range(0, train_ids.size, 16_384):
            blk = train_ids[s : s + 16_384]
            D, I = self.backend.search(self.backend.vectors(blk), self.config.k, exclude_ids=blk)
            Ds.append(D)
            Is.append(I)
            if bar is not None:
                bar.update(blk.size)
        if bar is not None:
            bar.close()
        D, I = np.concatenate(Ds), np.concatenate(Is)
        self._nbr.add(train_ids, D, I)
        if key is not None:
            cache.save("neighbors", key, {"ids": train_ids, "D": D, "I": I})

    def neighbors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours ``(D (n, k), I (n, k))`` of each id (-inf / -1 padded: a slot is a neighbour
        iff its ``D`` is finite), from the graph or one batched search for the ids not seen before; cached for
        the run."""
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
        D_all, I_all = self.neighbors(new_all)  # one search (or graph lookup) for every unit's new ids
        found = np.isfinite(D_all)  # a missing neighbour has D = -inf; every int64 is a legal id
        start = 0
        cands: dict[int, np.ndarray] = {}
        for u, new in seals.items():
            rows = slice(start, start + new.size)
            start += new.size
            cand = sorted_unique(I_all[rows][found[rows]])  # sorted: the membership tests are ~6x faster
            cands[u] = cand[~isin_sorted(cand, self.units[u].pool.ids)]  # mostly pooled already
        # test ids never enter a pool: one question to the split (its shards) for every unit's new ids
        every = sorted_unique(np.concatenate(list(cands.values())))
        train = every[self.split.train.contains(every)] if every.size else every
        for u, cand in cands.items():
            unit = self.units[u]
            cand = cand[isin_sorted(cand, train)]
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
                class_weight=self.config.class_weight,
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
        self.model = fit_logistic(
            X.to(dev),
            y.to(dev),
            mask.to(dev),
            C=self.config.C,
            init=self.model,
            class_weight=self.config.class_weight,
        )
        return time.perf_counter() - t0

    def _test_ap(self) -> list[float]:
        """Every unit's exact test AP, computed where the test vectors live (:mod:`seals_gpu.evaluate`): the
        positives' scores, then per unit the count of other test rows at or above each; the driver holds
        neither test vectors nor an ``(units, N)`` score matrix."""
        assert self.model is not None
        return evaluate_ap(self.backend, self.model.W, self.model.b, self._ap_groups).tolist()

    # ------------------------------------------------------------------ bookkeeping
    def _add_labels(self, u: Unit, ids: np.ndarray, round_no: int, probe: np.ndarray | None = None) -> None:
        labels = self._answer(u.concept, ids)
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
            | ({"probe": np.zeros(ids.size, bool) if probe is None else probe} if self.config.probe else {})
        )

    def _answer(self, concept: Any, ids: np.ndarray) -> np.ndarray:
        """The oracle's labels for ``ids``, but the labels --seed-ids gives for the items it lists."""
        if not self.known:
            return np.asarray(self.oracle.label(concept, ids), dtype=bool)
        known = self._known_mask(concept, ids)
        out = np.zeros(ids.size, dtype=bool)
        out[known] = [self.known[(str(concept), i)] for i in ids[known].tolist()]
        if not known.all():
            out[~known] = np.asarray(self.oracle.label(concept, ids[~known]), dtype=bool)
        return out

    def _known_mask(self, concept: Any, ids: np.ndarray) -> np.ndarray:
        key = str(concept)
        return np.array([(key, i) in self.known for i in ids.tolist()], dtype=bool)

    def _record(self, round_no: int, t: dict[str, Any]) -> None:
        aps = self._test_ap()
        n_train = self.split.train.size
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
                    "recall": n_pos / u.n_pos_train if u.n_pos_train else float("nan"),
                    "seconds_fit": fit,
                    "seconds_search": search,
                    "seconds_select": sel,
                    "seconds_round": fit + search + sel,
                }
                | self._probe_rows.get(u.index, {})
            )

    # ------------------------------------------------------------------ outputs
    def _checkpoint(self) -> None:
        """Outputs, then the checkpoint (the commit point): see :func:`seals_gpu.checkpoint.write_checkpoint`."""
        write_checkpoint(self)

    def _restore(self, arrays: dict[str, np.ndarray] | None = None) -> None:
        restore(self, arrays)

    # ------------------------------------------------------------------ main loop
    def start(self, *, resume: bool = False, on_locked: Callable[[], None] | None = None) -> None:
        """Run (or, with ``resume``, continue) in ``self.out``. Every check of the folder comes first
        (:func:`seals_gpu.rundir.inspect_run_dir`), so a refused start leaves it exactly as it was; a start
        that fails before its first checkpoint removes what it wrote (a SIGKILL cannot: the next start, with
        or without ``resume``, recognises that as this run's own and begins again). ``on_locked`` is called
        once the folder's lock is held and its checks passed (the CLI announces the run there, so that a
        second writer refused by the lock prints only its error)."""
        cfg = self.config
        dim = int(self.backend.dim)
        lock = RunLock(self.out)
        lock.check_free()  # "in use by pid N" before "not empty": the live holder is the real reason
        seen = run_dir_signature(self.out)
        plan = inspect_run_dir(self.out, cfg, resume=resume, dim=dim)
        # a queued round's answers are read and checked whole before the lock, so bad ones change nothing
        answers = (
            pending_answers(self.out, plan.arrays, self.units, self.known)
            if plan.action == "resume"
            else None
        )
        existed, had_lock = self.out.exists(), (self.out / ".lock").exists()
        lock.acquire()
        self.already_finished = False
        try:
            if run_dir_signature(self.out) != seen:  # changed before the lock was ours: look again
                plan = inspect_run_dir(self.out, cfg, resume=resume, dim=dim)
                answers = (
                    pending_answers(self.out, plan.arrays, self.units, self.known)
                    if plan.action == "resume"
                    else None
                )
            if answers is not None:
                self.oracle = AnswerOracle(answers)
            kill_point("lock", 0)
            if on_locked is not None:
                on_locked()
        except BaseException:
            lock.release()
            raise
        if plan.action == "resume":
            try:
                self._restore(plan.arrays)
                remove_stale_temporaries(self.out)
                if plan.write_config:
                    write_json(self.out / "config.json", cfg.to_json())
                if plan.note:
                    self.log(plan.note)
                if self.round >= cfg.n_rounds:
                    self.already_finished = True
                    self.log(
                        f"{self.out} already finished (round {self.round} of {cfg.n_rounds}); nothing to do"
                    )
                    return
                asked = f" with the answers to round {self.pending.round}" if self.pending is not None else ""
                self.log(f"resuming {self.out} after round {self.round}{asked}")
                self._loop()
            finally:
                lock.release()
            return
        try:
            if plan.note:
                self.log(plan.note)
            remove_stale_temporaries(self.out)
            write_json(self.out / "config.json", cfg.to_json())
            kill_point("config", 0)
            self._loop()
        except BaseException:
            if not (self.out / CHECKPOINT).exists():  # failed before its first commit: leave nothing
                undo_start(self.out, lock, remove_lock=not had_lock, remove_dir=not existed)
            raise
        finally:
            lock.release()

    def _loop(self) -> None:
        cfg = self.config
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.n_rounds + 1, initial=self.round + 1, desc="rounds", unit="round")
        try:
            self._rounds(bar)
        finally:
            if bar is not None:
                bar.close()

    def _rounds(self, bar: Any) -> None:
        cfg = self.config
        T = self.timings
        if self.pending is not None:  # --oracle queue: the answers to the queued round are in (see start)
            p, self.pending = self.pending, None
            self._label_round(p.round, p.chosen, p.seconds, bar, p.probe)
        elif self.round < 0:
            t0 = time.perf_counter()
            seeds: dict[int, np.ndarray] = {}
            # --seed-text: each concept's text embedded with the store's model, its nearest train items
            near = (
                text_seed_ids(self.store, self.backend, cfg.seed_text, cfg.seed_size) if cfg.seed_text else {}
            )
            for c in cfg.concepts:
                rng = concept_seed(cfg.seed, c)
                if cfg.seed_text:
                    ids = near[str(c)]
                elif self.seed_file is not None:  # the known ids, then random negatives (to be asked) up to N
                    pos, neg = self.seed_file[str(c)]
                    given = np.concatenate([pos, neg])
                    drawn = draw_excluding(
                        rng, self.split.train, np.sort(given), max(0, cfg.seed_negatives - neg.size)
                    )
                    ids = np.concatenate([given, drawn])
                else:
                    ids, _ = draw_seed_set(
                        rng, self.split.train, self._train_pos[c], cfg.seed_positives, cfg.seed_negatives
                    )
                seeds.update({u.index: ids for u in self.units if u.concept == c})
            T["seed"] += time.perf_counter() - t0
            if self._ask(0, seeds, {}):
                return
            self._label_round(0, seeds, {}, bar)
        while self.round < cfg.n_rounds:
            r = self.round + 1
            b_round = min(cfg.batch, cfg.budget - cfg.seed_size - (r - 1) * cfg.batch)
            chosen, t_select = self._select(b_round)
            # --probe: each SEALS unit's picks get B items drawn from outside its pool
            probe = add_probes(self, r, b_round, chosen) if cfg.probe else None
            T["select"] += sum(t_select.values())
            if self._ask(r, chosen, t_select, probe):
                return
            self._label_round(r, chosen, t_select, bar, probe)

    def _label_round(
        self,
        r: int,
        chosen: dict[int, np.ndarray],
        t_select: dict[tuple[str, str], float],
        bar: Any,
        probe: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Label round ``r``'s picks (the seed set for round 0), expand, fit and record; then commit, unless
        a queue round follows (:meth:`_ask` commits it with the next round's questions)."""
        T = self.timings
        t0 = time.perf_counter()
        before = outside_state(self, chosen, probe) if self.config.probe else None  # --probe
        for u in self.units:
            self._add_labels(u, chosen[u.index], r, None if probe is None else probe[u.index])
        T["seed" if r == 0 else "label"] += time.perf_counter() - t0
        if self.config.probe:
            self._probe_rows = probe_rows(self, probe, before)
        t_search = self._expand(chosen)
        T["search"] += t_search
        t_fit = self._fit()
        T["fit"] += t_fit
        self.round = r
        t0 = time.perf_counter()
        self._record(r, {"fit": t_fit, "search": t_search, "select": t_select})
        T["record"] += time.perf_counter() - t0
        if not (self.config.oracle == "queue" and r < self.config.n_rounds):
            t1 = time.perf_counter()
            self._checkpoint()
            T["checkpoint"] += time.perf_counter() - t1
        if bar is not None:  # the mean test AP of the round just recorded, the seed round's included
            last = [m for m in self.metrics if m["round"] == r]
            aps = [m["test_ap"] for m in last if m["test_ap"] == m["test_ap"]]
            bar.set_postfix(mean_ap=f"{np.mean(aps):.3f}" if aps else "nan")
            bar.update(1)

    def _ask(
        self,
        r: int,
        chosen: dict[int, np.ndarray],
        t_select: dict[tuple[str, str], float],
        probe: dict[int, np.ndarray] | None = None,
    ) -> bool:
        """``--oracle queue``: write round ``r``'s queue files, then commit the checkpoint holding the round
        as pending (with the last answered round's outputs), and stop; False (nothing done) otherwise."""
        if self.config.oracle != "queue" or all(
            self._known_mask(u.concept, chosen[u.index]).all() for u in self.units
        ):
            return (
                False  # nothing to ask (every pool ran dry, or --seed-ids knows every seed): labeled at once
            )
        t0 = time.perf_counter()
        self.pending = Pending(r, chosen, t_select, probe)
        scores, asked_ids, asked_probe = [], [], []
        for u in self.units:
            ids = chosen[u.index]
            flag = probe[u.index] if probe is not None else np.zeros(ids.size, bool)
            if self.known:  # --seed-ids: not asked
                ask = ~self._known_mask(u.concept, ids)
                ids, flag = ids[ask], flag[ask]
            asked_ids.append(ids)
            asked_probe.append(flag)
            if self.model is None or ids.size == 0:
                scores.append(np.full(ids.size, np.nan))
                continue
            x = torch.from_numpy(self.backend.vectors(ids)).to(self.model.W.device, torch.float32)
            z = (x @ self.model.W[u.index].float() + self.model.b[u.index].float()).double()
            scores.append(torch.sigmoid(z).cpu().numpy())
        asked = Asked(
            r,
            [u.concept for u in self.units],
            [u.strategy for u in self.units],
            [u.mode for u in self.units],
            asked_ids,
            scores,
            asked_probe if self.config.probe else None,
        )
        self.awaiting = write_queue(self.out, asked, self.store)
        kill_point("queue", r)
        self._checkpoint()
        self.timings["checkpoint"] += time.perf_counter() - t0
        return True


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
