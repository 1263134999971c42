"""``seals-gpu run``: validate everything before writing anything, start a :class:`~seals_gpu.driver.Run`,
print the paper-style table, and write ``RUN/timings.json`` (where the wall time went, phase by phase)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .atomic import write_json
from .config import RunConfig, parse_list
from .device import resolve_device
from .driver import Run
from .errors import ConfigError, IndexError_
from .index.build import LocalIndex
from .rundir import RunLock, check_out_dir, inspect_run_dir
from .seeds import sample_concepts
from .split import store_split
from .store import Store, prevalence_range


def _has_full_supervision(out: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        return "full" in pq.read_table(out / "metrics.parquet", columns=["strategy"]).column(0).to_pylist()
    except (OSError, pa.ArrowException):
        return False


def parse_seed_text(items: list[str] | None, store: Store, seed_ids: Any) -> dict[str, str] | None:
    """``--seed-text CONCEPT=TEXT`` (repeatable) as {concept key: text}; refused in one line when malformed,
    repeated, combined with --seed-ids, or when the store records no embedding model to embed it with."""
    if not items:
        return None
    if seed_ids is not None:
        raise ConfigError("--seed-text and --seed-ids both give the seed round; pass only one")
    out: dict[str, str] = {}
    for item in items:
        concept, eq, text = item.partition("=")
        concept, text = concept.strip(), text.strip()
        if not eq or not concept or not text:
            raise ConfigError(
                f"--seed-text {item!r} is not CONCEPT=TEXT; write e.g. --seed-text 3='a red bicycle'"
            )
        if concept in out:
            raise ConfigError(f"--seed-text gives concept {concept} twice; give one text per concept")
        out[concept] = text
    from .embed import MODEL_FILE, store_model_info

    if store_model_info(store) is None:
        raise ConfigError(
            f"--seed-text: store {store.path} records no embedding model ({MODEL_FILE}), so the text cannot be "
            "embedded like its items; build the store with `seals-gpu store embed`, or use --seed-ids"
        )
    return out


def run_from_args(a: Any) -> Run:
    """``seals-gpu run``: validate everything before writing anything."""
    import sys

    t_entry = time.perf_counter()

    store = Store(a.store)
    strategies = parse_list(a.strategies, what="strategies")
    modes = parse_list(a.modes, what="modes")
    # the store's split, asked only where needed before a backend exists (streamed: no id list is held)
    split = store_split(store)
    oracle = getattr(a, "oracle", "simulated")
    seed_ids = getattr(a, "seed_ids", None)
    seed_text = parse_seed_text(getattr(a, "seed_text", None), store, seed_ids)
    if not store.has_labels:
        if oracle != "queue":
            raise ConfigError(
                f"store {store.path} has no 'labels' column, so there is nothing to simulate; "
                "pass --oracle queue to label with people (see the README's Labeling with people)"
            )
        if (seed_ids is None and seed_text is None) or a.concepts is None:
            raise ConfigError(
                f"store {store.path} has no 'labels' column to draw seed sets from: give --concepts and "
                "--seed-ids FILE (concept, id: known positives of each concept) or --seed-text CONCEPT=TEXT"
            )
        if a.full_supervision:
            raise ConfigError(f"--full-supervision needs the store's labels; {store.path} has none: drop it")
        concepts = [t.strip() for t in a.concepts.split(",") if t.strip()]
        if len(set(concepts)) != len(concepts):
            raise ConfigError(f"--concepts {a.concepts!r} lists a concept twice; list each once")
    elif a.concepts is not None:
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
            store, a.concepts_sample, prevalence_range(a.prevalence), a.seed, a.seed_positives, split
        )
    if seed_text is not None and store.has_labels:  # the names a user types -> the run's concept keys
        seed_text = {str(store.resolve_concepts([k])[0]): t for k, t in seed_text.items()}
    seed_settings: dict[str, Any] = {}
    if seed_ids is not None:  # the file's positives are the seed positives; its negatives count toward N
        from .seeds import read_seed_ids

        known = read_seed_ids(Path(seed_ids), concepts, split)
        seed_settings = {
            "seed_positives": max(p.size for p, _ in known.values()),
            "seed_negatives": max([a.seed_negatives, *(n.size for _, n in known.values())]),
            "seed_ids": os.path.realpath(seed_ids),
            "seed_ids_sha256": hashlib.sha256(Path(seed_ids).read_bytes()).hexdigest(),
        }
    dev = resolve_device(a.device)
    use_ray = bool(
        getattr(a, "ray", False) or getattr(a, "ray_address", None) or os.environ.get("RAY_ADDRESS")
    )
    index = None
    if a.index is not None:
        if use_ray:  # the shard actors open the shards; the driver only checks the manifest
            from .index.build import read_manifest

            manifest = read_manifest(a.index)
            _check_shard_list(manifest, a.index, store)
            fp = manifest["store"]["fingerprint"]
            if fp != store.fingerprint:
                raise IndexError_(
                    f"index {a.index} was built from a store with fingerprint {fp}, but {store.path} has "
                    f"{store.fingerprint}; rebuild it with `seals-gpu index build {store.path} {a.index} --force`"
                )
        else:
            index = LocalIndex.open(a.index)
            index.check_store(store)
            _check_shard_list(index.manifest, a.index, store)
            _check_finite(index, a.index, store)
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
    cfg = RunConfig(  # paths resolved: a resume from another folder, or by another spelling, is the same run
        store=os.path.realpath(store.path),
        store_fingerprint=store.fingerprint,
        concepts=tuple(concepts),
        strategies=tuple(strategies),
        modes=tuple(modes),
        k=a.k,
        batch=a.batch,
        budget=a.budget,
        seed_positives=seed_settings.get("seed_positives", a.seed_positives),
        seed_negatives=seed_settings.get("seed_negatives", a.seed_negatives),
        seed_ids=seed_settings.get("seed_ids"),
        seed_ids_sha256=seed_settings.get("seed_ids_sha256"),
        seed=a.seed,
        C=a.C,
        beta=a.beta,
        index=os.path.realpath(a.index) if a.index else None,
        graph=os.path.realpath(a.graph) if a.graph else None,
        full_supervision=a.full_supervision,
        search=getattr(a, "search", "auto"),
        class_weight=getattr(a, "class_weight", "none"),
        expand=getattr(a, "expand", "batch"),
        search_recall=getattr(a, "search_recall", 0.95),
        oracle=oracle,
        probe=getattr(a, "probe", 0),
        seed_text=seed_text,
    )
    out = Path(a.out)
    check_out_dir(out, [("store", store.path), ("--index", a.index), ("--graph", a.graph)])
    RunLock(out).check_free()
    # reads only: refuses another run's folder, another configuration or store, a corrupt checkpoint (Run.start
    # looks again once it holds the lock; the settings themselves are checked when Run is built, below)
    inspect_run_dir(out, cfg, resume=a.resume, dim=store.dim)

    def log(*m: object) -> None:
        print(*m, file=sys.stderr)

    def announce() -> (
        None
    ):  # once the lock is held and every check passed: a refused run prints only its error
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
            # each shard actor reads its own test rows from the store: the driver holds no id list
            RayBackend(a.index, excluded=store.path, device=dev, log=log) as backend,
        ):
            r = Run(
                cfg, out, store=store, backend=backend, graph=graph, device=dev, progress=not a.quiet, log=log
            )
            t_loaded = time.perf_counter()

            def announce_ray() -> None:
                announce()
                log("search and scoring: Ray shard actors")
                for line in backend.index.placement_lines():  # which shard on which node
                    log(line)

            r.start(resume=a.resume, on_locked=announce_ray)
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
        t_loaded = time.perf_counter()

        def announce_local() -> None:
            announce()
            log(f"plan: search {r.plan.describe()}")
            log(f"search: {'kNN graph lookup' if graph is not None else r.backend.search_path}")

        r.start(resume=a.resume, on_locked=announce_local)
    t_loop = time.perf_counter()
    if r.awaiting is not None:  # --oracle queue: the round's items wait for people's answers
        _say_awaiting(r, out)
        _write_timings(
            r,
            startup=t_entry - _process_start(t_entry),
            load=t_loaded - t_entry,
            loop=t_loop - t_loaded,
            full=0.0,
            report=time.perf_counter() - t_loop,
        )
        return r
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


def _say_awaiting(r: Run, out: Path) -> None:
    """Where a queue round's items are and where their answers go (stdout)."""
    import pyarrow.parquet as pq

    from .queue import LABELS_DIR, round_name

    assert r.awaiting is not None and r.pending is not None
    qpath, lspath = r.awaiting
    rnd = r.pending.round
    n = pq.read_metadata(qpath).num_rows
    answers = out / LABELS_DIR / round_name(rnd)
    print(f"round {rnd} of {r.config.n_rounds}: {n} item(s) to label in {qpath}")
    print(f"  (Label Studio tasks: {lspath})")
    print(
        f"answers go in {answers}.csv or {answers}.parquet (columns concept, id, label; label 1 or 0), or "
        f"{answers}.json (a Label Studio JSON export); then run the same command with --resume"
    )


def _rebuild(index: Any, store: Store) -> str:
    return f"rebuild it with `seals-gpu index build {store.path} {index} --force`"


def _check_shard_list(manifest: dict[str, Any], index: Any, store: Store) -> None:
    """An index must list shards that together hold every row of its store."""
    shards = manifest.get("shards") or []
    if not shards:
        raise IndexError_(f"index {index} lists no shards in its manifest.json; {_rebuild(index, store)}")
    n = sum(int(s.get("n", 0)) for s in shards)
    if n != store.num_rows:
        raise IndexError_(
            f"index {index}: its shards hold {n} rows but {store.path} has {store.num_rows}; "
            f"{_rebuild(index, store)}"
        )


def _check_finite(index: LocalIndex, path: Any, store: Store) -> None:
    """Every vector of the index finite (a NaN would poison every score and neighbour list it enters)."""
    for shard, entry in zip(index.shards, index.manifest["shards"], strict=True):
        for s in range(0, shard.ntotal, 262_144):
            block = np.asarray(shard.vectors[s : s + 262_144])
            ok = np.isfinite(block).all(axis=1)
            if not ok.all():
                row = s + int(np.flatnonzero(~ok)[0])
                raise IndexError_(
                    f"index {path}: {entry['dir']}/vectors.npy has NaN or inf at row {row} (id "
                    f"{int(shard.ids[row])}); {_rebuild(path, store)}"
                )


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
