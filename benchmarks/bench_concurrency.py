"""Concurrency: concept-rounds per second with C concepts batched in one Run round, against the same concepts run
one at a time (a loop of C single-concept rounds).

A synthetic store (``seals_gpu.synth.make_synthetic_store``: 256 planted concepts, prevalence 0.2-0.35%) with an
exact flat index and its precomputed kNN graph (``seals_gpu.graph.build_graph``, k = 100), both cached in
``benchmarks/out/cache``. For C = 1, 8, 64, 256: one ``seals_gpu.driver.Run`` over the first C concepts (MaxEnt,
SEALS) is brought to round 3 by its own loop (|L| = 400 per concept), then rounds 4, 5, 6 are timed piece by
piece exactly as ``Run._loop`` runs them: select (``Run._select``), label (``Run._add_labels``), expand
(``Run._expand``: graph lookups and pool growth) and fit (``Run._fit``: one batched logistic solve); the
per-round median is reported. Each batched round is followed by the same round of every one-at-a-time run,
so load drifts on a shared machine hit both alike. The one-at-a-time baseline does the same with one Run per concept; for large C it
times a sample of the concepts and scales the mean (column ``singles_timed``). Checkpointing, test AP and
metrics (``Run._record``) are left out of both.

Target: batched >= 20x the one-at-a-time rate at C = 64 (CPU).

    python benchmarks/bench_concurrency.py --quick          # C = 1, 8, 64
    python benchmarks/bench_concurrency.py                  # C = 1, 8, 64, 256
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as cm
import numpy as np

from seals_gpu.config import RunConfig
from seals_gpu.driver import Run
from seals_gpu.graph import KnnGraph, build_graph
from seals_gpu.index import IndexSpec, LocalIndex, build_index
from seals_gpu.store import Store
from seals_gpu.synth import make_synthetic_store

NAME = "concurrency"
WARM_ROUNDS = 3
K = 100
B = 100


def cached_inputs(n: int, dim: int, seed: int, cache: Path) -> tuple[Store, LocalIndex, KnnGraph]:
    """The store, its flat index and kNN graph (built once, reused by later runs)."""
    base = cache / f"synth_n{n}_d{dim}_c256_s{seed}"
    store_dir, index_dir = base / "store", base / "index"
    if not store_dir.exists():
        t0 = time.perf_counter()
        make_synthetic_store(store_dir, n=n, dim=dim, concepts=256, prevalence=(0.002, 0.0035), seed=seed)
        print(f"store: {n:,} x {dim} in {time.perf_counter() - t0:.0f}s", flush=True)
    store = Store(store_dir)
    if not (index_dir / "manifest.json").exists():
        build_index(store, index_dir, IndexSpec(kind="flat"), overwrite=True)
    index = LocalIndex.open(index_dir)
    gdir = index_dir / f"graph-k{K}"
    t0 = time.perf_counter()
    build_graph(index_dir, k=K, out=gdir)  # resumable: returns at once when complete
    print(f"kNN graph k={K}: ready ({time.perf_counter() - t0:.0f}s)", flush=True)
    return store, index, KnnGraph.open(gdir)


def make_run(
    store: Store,
    index: LocalIndex,
    graph: KnnGraph,
    concepts: list[Any],
    dev,
    out: Path,
    strategies: tuple[str, ...],
    modes: tuple[str, ...],
) -> Run:
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=tuple(concepts),
        strategies=strategies,
        modes=modes,
        k=K,
        batch=B,
        budget=B + WARM_ROUNDS * B,
        graph=str(graph.path),
    )
    r = Run(cfg, out, store=store, index=index, graph=graph, device=dev, progress=False, log=lambda *a: None)
    r.start()  # seed round + WARM_ROUNDS rounds, by the driver's own loop
    return r


def one_round(r: Run) -> dict[str, float]:
    """Seconds per piece of one more round, run as Run._loop runs it (without _record/_checkpoint)."""
    rno = r.round + 1
    t0 = time.perf_counter()
    chosen, _ = r._select(B)
    t1 = time.perf_counter()
    for u in r.units:
        r._add_labels(u, chosen[u.index], rno)
    t2 = time.perf_counter()
    r._expand(chosen)
    t3 = time.perf_counter()
    r._fit()
    t4 = time.perf_counter()
    r.round = rno
    return {"select": t1 - t0, "label": t2 - t1, "expand": t3 - t2, "fit": t4 - t3, "round": t4 - t0}


def _median_pieces(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def main(argv: list[str] | None = None) -> int:
    p = cm.make_parser(NAME, __doc__)
    p.add_argument("--n", type=int, default=None, help="store rows (default 50,000)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument(
        "--concepts",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="default 1,8,64,256; --quick 1,8,64",
    )
    p.add_argument(
        "--singles",
        type=int,
        default=None,
        help="one-at-a-time runs timed per C (the rest scaled; default 16, --quick 8)",
    )
    p.add_argument("--strategies", default="maxent")
    p.add_argument("--modes", default="seals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=cm.OUT_DIR / "cache")
    args = cm.parse(p, argv)
    n = args.n or 50_000
    if args.concepts is None:
        args.concepts = [1, 8, 64] if args.quick else [1, 8, 64, 256]
    rounds = args.repeats or 3
    n_singles = args.singles or (8 if args.quick else 16)
    strategies = tuple(args.strategies.split(","))
    modes = tuple(args.modes.split(","))
    dev = cm.resolve(args.device)
    store, index, graph = cached_inputs(n, args.dim, args.seed, args.cache)
    all_concepts = sorted(store.concept_counts())
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng([args.seed, 5])
    with tempfile.TemporaryDirectory(prefix="bench_conc_") as tmp:
        for C in args.concepts:
            concepts = all_concepts[:C]
            t0 = time.perf_counter()
            sample = (
                concepts
                if C <= n_singles
                else [concepts[i] for i in sorted(rng.choice(C, size=n_singles, replace=False))]
            )
            run = make_run(store, index, graph, concepts, dev, Path(tmp) / f"batched_{C}", strategies, modes)
            singles = [
                make_run(store, index, graph, [c], dev, Path(tmp) / f"single_{C}_{c}", strategies, modes)
                for c in sample
            ]
            # rounds interleaved (batched round, then each single's round), so load drifts hit both alike
            b_samples: list[dict[str, float]] = []
            s_samples: list[list[dict[str, float]]] = [[] for _ in singles]
            for _ in range(rounds):
                b_samples.append(one_round(run))
                for j, r1 in enumerate(singles):
                    s_samples[j].append(one_round(r1))
            del run, singles
            batched = _median_pieces(b_samples)
            per_single = [_median_pieces(x) for x in s_samples]
            seq = {k: C * statistics.mean(s[k] for s in per_single) for k in batched}
            row = {
                "concepts": C,
                "units": C * len(strategies) * len(modes),
                "batched_round_s": batched["round"],
                "sequential_round_s": seq["round"],
                "batched_cr_per_s": C / batched["round"],
                "sequential_cr_per_s": C / seq["round"],
                "speedup": seq["round"] / batched["round"],
                "singles_timed": len(sample),
                **{f"batched_{k}_s": batched[k] for k in ("select", "label", "expand", "fit")},
                **{f"sequential_{k}_s": seq[k] for k in ("select", "label", "expand", "fit")},
            }
            rows.append(row)
            print(
                f"C={C}: batched {batched['round']:.3f}s/round, one at a time {seq['round']:.3f}s "
                f"-> {row['speedup']:.1f}x ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    cm.print_table(
        rows,
        [
            "concepts",
            "batched_round_s",
            "sequential_round_s",
            "batched_cr_per_s",
            "sequential_cr_per_s",
            "speedup",
            "singles_timed",
        ],
        title=f"concept-rounds per second, n={n:,}, {','.join(strategies)} x {','.join(modes)} "
        f"(median of {rounds} rounds); target >= 20x at C = 64",
    )
    cm.print_table(
        rows,
        ["concepts"]
        + [f"{m}_{k}_s" for m in ("batched", "sequential") for k in ("select", "label", "expand", "fit")],
        title="per-round pieces (seconds)",
    )
    checks = [
        {"check": "speed-up at C=64", "value": r["speedup"], "target": ">= 20", "met": r["speedup"] >= 20}
        for r in rows
        if r["concepts"] == 64
    ]
    cm.write_json(args.out, NAME, args, rows, checks=checks, n=n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
