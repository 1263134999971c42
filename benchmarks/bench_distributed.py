"""Benchmark: kNN search and All-mode scoring served by 1, 2 and 4 local Ray shard actors vs in-process.

One store of N x 64 unit vectors (synthetic clusters, default 1M; ``--quick`` 100k; ``--n`` any), flat
(exact) indexes of 1, 2 and 4 shards, and 10,000 queries (items of the store, each excluding itself) at
k=100, all queries in one call per shard. Cases, on the same cores:

- ``in-process``  LocalBackend over 1 shard (the reference) and over each shard layout (sharding's own cost);
- ``ray``         RayBackend with one actor per shard, ``threads // shards`` FAISS/torch threads each.

Correctness first: every case must give the reference's neighbour sets (similarities to float32 rounding:
shards' products differ in the last bit, and near-ties at the k-th place are decided in float64) and its
score_all top-b bit for bit. Then ``--repeat`` rounds in which every case runs once in turn (so drifting load on a
shared machine hits every case alike); the table shows medians. ``overhead`` is a case's time over the
1-shard in-process time; the target for Ray is <= 1.3x. ``score_all`` scores every candidate for 64 units
(b=100): only weights go out and (U, b) ids and scores come back.

    python benchmarks/bench_distributed.py --quick
    python benchmarks/bench_distributed.py --n 1000000 --out benchmarks/out/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from seals_gpu.backend import LocalBackend
from seals_gpu.device import resolve_device
from seals_gpu.distributed import RayBackend, ray_session
from seals_gpu.index import IndexSpec, LocalIndex, build_index
from seals_gpu.synth import make_synthetic_store


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _units(d: int, U: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(U, d, generator=g) * 4
    bias = torch.randn(U, generator=g)
    kind = (torch.arange(U) % 3).to(torch.int8)
    ref = torch.nn.functional.normalize(torch.randn(U, d, generator=g), dim=1)
    return W, bias, kind, ref


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n or (100_000 if args.quick else 1_000_000)
    cores = os.cpu_count() or 1
    threads = args.threads or cores
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_distributed_"))
    store_path = root / f"store-{n}x{args.dim}"
    if store_path.exists():
        from seals_gpu.store import Store

        store = Store(store_path)
    else:
        t0 = time.perf_counter()
        store = make_synthetic_store(
            store_path, n=n, dim=args.dim, concepts=8, prevalence=(1e-3, 1e-2), seed=0
        )
        print(f"store {n:,} x {args.dim} written in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    paths = {}
    for s in sorted({1, *args.shards}):
        paths[s] = root / f"flat-{n}-s{s}"
        if not (paths[s] / "manifest.json").exists():
            build_index(store, paths[s], IndexSpec(kind="flat", shards=s), overwrite=True)
    ids, is_test = store.read_split()
    test_ids = np.sort(ids[is_test])
    rng = np.random.default_rng(0)
    q = np.sort(rng.choice(ids, size=min(args.queries, n), replace=False))
    k = args.k
    one = LocalIndex.open(paths[1])
    xq = one.vectors(q)
    W, bias, kind, ref = _units(args.dim, args.units)
    excl = [np.sort(rng.choice(ids, size=200, replace=False)) for _ in range(args.units)]
    cpu = resolve_device("cpu")
    load_before = os.getloadavg()[0]
    with ray_session(args.ray_address, num_cpus=cores):
        cases: list[tuple[str, int, Any]] = [
            ("in-process", s, LocalBackend(LocalIndex.open(paths[s]), cpu, excluded=test_ids)) for s in paths
        ]
        for s in args.shards:
            per_actor = max(1, threads // s)
            cases.append(
                ("ray", s, RayBackend(paths[s], excluded=test_ids, device=cpu, threads_per_actor=per_actor))
            )
        try:
            # correctness first (also the warm-up): every layout, local or Ray, gives the same neighbours
            D0, I0 = cases[0][2].search(xq, k, exclude_ids=q)
            top0 = cases[0][2].score_all(excl, W, bias, kind, ref, 1.0, args.b).numpy()
            for mode, s, be in cases[1:]:
                sims, nbrs = be.search(xq, k, exclude_ids=q)
                # what exact search guarantees across layouts: the same neighbour set per query (near-ties
                # at the k-th place are decided in float64), similarities equal to float32 rounding (the
                # order of neighbours whose similarities differ by less than that may differ)
                same_sets = np.array_equal(np.sort(nbrs, axis=1), np.sort(I0, axis=1))
                by_id = np.take_along_axis(sims, np.argsort(nbrs, axis=1), axis=1)
                by_id0 = np.take_along_axis(D0, np.argsort(I0, axis=1), axis=1)
                if not (same_sets and np.allclose(by_id, by_id0, rtol=0, atol=2e-6)):
                    raise SystemExit(
                        f"{mode} search over {s} shards differs from the 1-shard in-process search"
                    )
                top = be.score_all(excl, W, bias, kind, ref, 1.0, args.b).numpy()
                if not all(np.array_equal(a, b) for a, b in zip(top, top0, strict=True)):
                    raise SystemExit(f"{mode} score_all over {s} shards differs from the in-process result")
            # interleaved repetitions: on a shared machine, drifting load hits every case alike
            times: dict[int, dict[str, list[float]]] = {
                i: {"search": [], "score_all": []} for i in range(len(cases))
            }
            for _ in range(args.repeat):
                for i, (_, _, be) in enumerate(cases):
                    times[i]["search"].append(_timed(lambda be=be: be.search(xq, k, exclude_ids=q)))
                    times[i]["score_all"].append(
                        _timed(lambda be=be: be.score_all(excl, W, bias, kind, ref, 1.0, args.b))
                    )
        finally:
            for mode, _, be in cases:
                if mode == "ray":
                    be.close()
    rows = []
    base = statistics.median(times[0]["search"])
    sbase = statistics.median(times[0]["score_all"])
    for i, (mode, s, _) in enumerate(cases):
        t = statistics.median(times[i]["search"])
        st = statistics.median(times[i]["score_all"])
        rows.append(
            {
                "mode": mode,
                "shards": s,
                "search_s": t,
                "search_best_s": min(times[i]["search"]),
                "qps": q.size / t,
                "overhead": t / base,
                "score_all_s": st,
                "score_all_overhead": st / sbase,
            }
        )
    return {
        "benchmark": "distributed",
        "host": {
            "cpus": cores,
            "threads": threads,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "n": n,
        "dim": args.dim,
        "k": k,
        "queries": int(q.size),
        "units": args.units,
        "b": args.b,
        "repeat": args.repeat,
        "rows": rows,
    }


def format_table(res: dict[str, Any]) -> str:
    h = res["host"]
    lines = [
        f"{res['queries']:,} queries, k={res['k']}, over {res['n']:,} x {res['dim']} (flat, exact); "
        f"score_all: {res['units']} units, b={res['b']}; {h['cpus']} cores, {h['threads']} threads in all; "
        f"median of {res['repeat']}; load {h['load_before']:.1f} -> {h['load_after']:.1f}",
        f"{'mode':<11} {'shards':>6} {'search s':>9} {'best s':>8} {'queries/s':>10} {'overhead':>9} "
        f"{'score_all s':>12} {'overhead':>9}",
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['mode']:<11} {r['shards']:>6} {r['search_s']:>9.3f} {r['search_best_s']:>8.3f} {r['qps']:>10,.0f} "
            f"{r['overhead']:>8.2f}x {r['score_all_s']:>12.3f} {r['score_all_overhead']:>8.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="vectors in the store (default 1,000,000)")
    p.add_argument("--quick", action="store_true", help="100,000 vectors")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4], help="shard actor counts to time")
    p.add_argument("--threads", type=int, default=None, help="threads in all (default: every core)")
    p.add_argument("--units", type=int, default=64, help="units for the score_all table")
    p.add_argument("--b", type=int, default=100, help="items selected per unit in score_all")
    p.add_argument("--repeat", type=int, default=3, help="timed calls after the warm-up (median)")
    p.add_argument("--workdir", default=None, help="where the store and indexes go (reused when present)")
    p.add_argument("--ray-address", default=None, help="a Ray cluster (default: a local Ray on this machine)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    res = run(args)
    print(format_table(res))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
