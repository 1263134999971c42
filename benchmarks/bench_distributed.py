"""Benchmark: kNN search (and All-mode scoring) served by 2 and 4 local Ray shard actors vs in-process.

One store of N x 64 unit vectors (synthetic clusters, default 1M; ``--quick`` 100k; ``--n`` any), indexes of
1, 2 and 4 shards, and 10,000 queries (items of the store, each excluding itself) at k=100, all queries in
one call per shard. Rows, on the same cores:

- ``in-process``  LocalIndex over 1 shard (the reference) and over the same shard layout as the actors;
- ``ray``         ShardedIndex with one actor per shard (``threads = cores / shards`` each).

Correctness first: every Ray result must equal the in-process result bit for bit (ids and similarities).
Then a warm-up call and the median of ``--repeat`` timed calls. ``overhead`` is the Ray time over the
1-shard in-process time (the target is <= 1.3x). A second table times All-mode scoring (``score_all``, 64
units, b=100) the same way: only weights go out and (U, b) ids and scores come back.

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
from seals_gpu.distributed import RayBackend, ShardedIndex, ray_session
from seals_gpu.index import IndexSpec, LocalIndex, build_index
from seals_gpu.synth import make_synthetic_store


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm-up (and the result checked for correctness)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


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
    search_rows: list[dict[str, Any]] = []
    score_rows: list[dict[str, Any]] = []
    W, bias, kind, ref = _units(args.dim, args.units)
    excl = [np.sort(rng.choice(ids, size=200, replace=False)) for _ in range(args.units)]
    cpu = resolve_device("cpu")

    def search_row(mode: str, shards: int, seconds: float) -> dict[str, Any]:
        return {
            "mode": mode,
            "shards": shards,
            "n": n,
            "queries": int(q.size),
            "k": k,
            "seconds": seconds,
            "qps": q.size / seconds,
        }

    base_t, (D0, I0) = _time(lambda: one.search(xq, k, exclude_ids=q), args.repeat)
    search_rows.append(search_row("in-process", 1, base_t))
    lb1 = LocalBackend(one, cpu, excluded=test_ids)
    sbase_t, top0 = _time(lambda: lb1.score_all(excl, W, bias, kind, ref, 1.0, args.b), args.repeat)
    score_rows.append({"mode": "in-process", "shards": 1, "units": args.units, "seconds": sbase_t})
    for s in args.shards:
        if s != 1:  # the same shard layout in this process: sharding's own cost, without Ray
            loc = LocalIndex.open(paths[s])
            t, (sims, nbrs) = _time(lambda loc=loc: loc.search(xq, k, exclude_ids=q), args.repeat)
            if not (np.array_equal(nbrs, I0) and np.array_equal(sims, D0)):
                raise SystemExit(f"in-process search over {s} shards differs from 1 shard")
            search_rows.append(search_row("in-process", s, t))
    with ray_session(args.ray_address, num_cpus=cores):
        for s in args.shards:
            per_actor = max(1, threads // s)
            with ShardedIndex(paths[s], excluded=test_ids, threads_per_actor=per_actor) as si:
                t, (sims, nbrs) = _time(lambda si=si: si.search(xq, k, exclude_ids=q), args.repeat)
                if not (np.array_equal(nbrs, I0) and np.array_equal(sims, D0)):
                    raise SystemExit(f"ray search over {s} shards differs from the in-process search")
                search_rows.append(search_row("ray", s, t))
            rb = RayBackend(paths[s], excluded=test_ids, device=cpu, threads_per_actor=per_actor)
            try:
                t, top = _time(lambda rb=rb: rb.score_all(excl, W, bias, kind, ref, 1.0, args.b), args.repeat)
                for a, b in zip(top.numpy(), top0.numpy(), strict=True):
                    if not np.array_equal(a, b):
                        raise SystemExit(f"ray score_all over {s} shards differs from the in-process result")
                score_rows.append({"mode": "ray", "shards": s, "units": args.units, "seconds": t})
            finally:
                rb.close()
    for r in search_rows:
        r["overhead"] = r["seconds"] / base_t
    for r in score_rows:
        r["overhead"] = r["seconds"] / sbase_t
    return {
        "benchmark": "distributed",
        "host": {
            "cpus": cores,
            "threads": threads,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "n": n,
        "dim": args.dim,
        "k": k,
        "queries": int(q.size),
        "repeat": args.repeat,
        "search": search_rows,
        "score_all": score_rows,
    }


def format_tables(res: dict[str, Any]) -> str:
    lines = [
        f"kNN search: {res['queries']:,} queries, k={res['k']}, {res['n']:,} x {res['dim']} "
        f"(flat, exact), {res['host']['cpus']} cores, {res['host']['threads']} threads in all",
        f"{'mode':<11} {'shards':>6} {'seconds':>9} {'queries/s':>11} {'overhead':>9}",
    ]
    for r in res["search"]:
        lines.append(
            f"{r['mode']:<11} {r['shards']:>6} {r['seconds']:>9.3f} {r['qps']:>11,.0f} {r['overhead']:>8.2f}x"
        )
    lines += [
        "",
        "All-mode scoring (score_all)",
        f"{'mode':<11} {'shards':>6} {'units':>6} {'seconds':>9} {'overhead':>9}",
    ]
    for r in res["score_all"]:
        lines.append(
            f"{r['mode']:<11} {r['shards']:>6} {r['units']:>6} {r['seconds']:>9.3f} {r['overhead']:>8.2f}x"
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
    print(format_tables(res))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
