"""Memory benchmark: bounded peak RSS for the index build and for a SEALS run.

Two measurements, each in a fresh subprocess (so nothing the parent loaded counts), reading the kernel's
high-water mark ``VmHWM`` from ``/proc/self/status`` at the end and sampling ``RssAnon`` / ``RssFile`` every
20 ms on a background thread (file-backed pages are memory-mapped index files; anonymous pages are
everything else):

1. **index build**: ``build_index`` over an N x d synthetic store (full: 10M x 128, both an exact flat index
   and the default ``auto`` kind, which is IVF-PQ above 1M rows). Target: peak RSS under 4 GB.
2. **SEALS run vs |U|**: a short SEALS-only run (maxent, a few concepts, k=100) with an on-disk flat index
   at two store sizes (full: 200k and 2M rows). The index's vectors are memory-mapped, so its pages may be
   resident; "non-index peak" is the peak RSS minus the index's mapped size (``ids.npy`` + ``vectors.npy``).
   Target: the non-index peak does not grow with |U| beyond id-sized arrays (the train/test id lists, a few
   bytes per row), i.e. far less than one embedding row (``4 d`` bytes) per added row.

3. **Ray driver vs N** (``--driver-rows``, off by default): a SEALS run whose 2 flat shards are served by Ray
   actors (separate processes); the driver's own peak RSS. It holds no vector, no (units x N) score matrix
   (test AP is counted on the shards: evaluate.py) and no id list of the split (the shards answer for their
   own rows: split.py). Target: flat in N.

Prints a table and writes JSON (``--out``, default ``benchmarks/out/memory.json``). Stores and indexes are
generated once under ``--work`` (default ``benchmarks/out/memory_data``) and reused; ``--clean`` deletes them
at the end.

    python benchmarks/bench_memory.py --quick
    python benchmarks/bench_memory.py                      # 10M x 128 build (~20+ min on 2 cores) + runs
    python benchmarks/bench_memory.py --build-kinds flat   # skip the (slow to train) IVF-PQ build
    python benchmarks/bench_memory.py --skip-build --skip-run --dim 64 --driver-rows 100000,1000000,10000000
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

GB = 1024**3
MB = 1024**2
BUILD_LIMIT_BYTES = 4 * 10**9  # "under 4 GB" (decimal; the table prints binary GiB/MiB)
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


# ------------------------------------------------------------------------------------------ measurement
def proc_status() -> dict[str, int]:
    """Selected /proc/self/status fields, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in STATUS_KEYS:
                out[key] = int(rest.split()[0]) * 1024
    return out


class PeakSampler:
    """Samples RssAnon/RssFile on a daemon thread; VmHWM (the exact peak of their sum) comes from the kernel."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_anon = 0
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            s = proc_status()
            self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
            self.peak_file = max(self.peak_file, s.get("RssFile", 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        s = proc_status()
        self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
        self.peak_file = max(self.peak_file, s.get("RssFile", 0))


def _dir_bytes(path: Path, names: tuple[str, ...] | None = None) -> int:
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and (names is None or p.name in names)
    )


def _child_result(t0: float, sampler: PeakSampler, **extra: Any) -> dict[str, Any]:
    s = proc_status()
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss": s["VmHWM"],
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_anon": sampler.peak_anon,
        "peak_file": sampler.peak_file,
        "baseline_rss": extra.pop("baseline_rss"),
        **extra,
    }


def child_build(p: dict[str, Any]) -> dict[str, Any]:
    from seals_gpu.index import IndexSpec, build_index
    from seals_gpu.store import Store

    baseline = proc_status()["VmRSS"]  # the interpreter + numpy/torch/faiss imports
    out = Path(p["out"])
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    with PeakSampler() as sampler:
        idx = build_index(Store(p["store"]), out, IndexSpec(kind=p["kind"], nlist=p.get("nlist")))
        d = idx.describe()
    return _child_result(
        t0, sampler, baseline_rss=baseline, kind=d["kind"], params=d["params"], index_bytes=_dir_bytes(out)
    )


def child_run(p: dict[str, Any]) -> dict[str, Any]:
    from seals_gpu.driver import run
    from seals_gpu.store import Store

    baseline = proc_status()["VmRSS"]
    out = Path(p["out"])
    if out.exists():
        shutil.rmtree(out)
    store = Store(p["store"])
    t0 = time.perf_counter()
    with PeakSampler() as sampler:
        r = run(
            store,
            out,
            concepts=p["concepts"],
            index=p["index"],
            device="cpu",
            strategies=("maxent",),
            modes=("seals",),
            k=p["k"],
            batch=p["batch"],
            budget=p["budget"],
        )
    pools = [len(u.pool) for u in r.units]
    return _child_result(
        t0,
        sampler,
        baseline_rss=baseline,
        rounds=r.round,
        pool_max=max(pools),
        index_mapped=_dir_bytes(Path(p["index"]), ("ids.npy", "vectors.npy")),
    )


def child_driver(p: dict[str, Any]) -> dict[str, Any]:
    """The driver process of a Ray run (shard actors hold the vectors and the split in their own processes):
    its peak RSS should not grow with N."""
    import numpy as np

    from seals_gpu.config import RunConfig
    from seals_gpu.device import resolve_device
    from seals_gpu.distributed import RayBackend, ray_session
    from seals_gpu.driver import Run
    from seals_gpu.store import Store

    baseline = proc_status()["VmRSS"]
    out = Path(p["out"])
    if out.exists():
        shutil.rmtree(out)
    store = Store(p["store"])
    dev = resolve_device("cpu")
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=tuple(p["concepts"]),
        index=p["index"],
        strategies=("maxent",),
        modes=("seals",),
        k=p["k"],
        batch=p["batch"],
        budget=p["budget"],
    )
    t0 = time.perf_counter()
    with PeakSampler() as sampler:
        # each shard actor reads its own test rows from the store (as `seals-gpu run --ray` does)
        with ray_session(None), RayBackend(p["index"], excluded=store.path, device=dev) as backend:
            r = Run(cfg, out, store=store, backend=backend, device=dev, progress=False, log=lambda *_: None)
            r.start()
    return _child_result(
        t0,
        sampler,
        baseline_rss=baseline,
        rounds=r.round,
        index_mapped=0,
        test_ap=float(np.nanmean([m["test_ap"] for m in r.metrics if m["round"] == r.round])),
        positives=int(sum(v.size for v in r.positives.values())),  # ground truth the driver holds
    )


def spawn(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(params)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{kind} measurement failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ data
def ensure_store(work: Path, n: int, dim: int, concepts: int) -> Path:
    from seals_gpu.synth import make_synthetic_store

    path = work / f"store-{n}x{dim}"
    if not (path / "_concepts.parquet").exists():
        print(f"  generating {n:,} x {dim} synthetic store at {path} ...", flush=True)
        make_synthetic_store(
            path, n=n, dim=dim, concepts=concepts, prevalence=(0.002, 0.005), seed=0, overwrite=True
        )
    return path


def ensure_flat_index(work: Path, store: Path, shards: int = 1) -> Path:
    from seals_gpu.index import IndexSpec, build_index

    path = work / (f"flat-{store.name}" if shards == 1 else f"flat{shards}-{store.name}")
    if not (path / "manifest.json").exists():
        print(f"  building flat index at {path} ...", flush=True)
        build_index(store, path, IndexSpec(kind="flat", shards=shards), overwrite=True)
    return path


# ------------------------------------------------------------------------------------------ report
def _gb(x: int | float) -> str:
    return f"{x / GB:.2f} GiB" if x >= GB else f"{x / MB:.0f} MiB"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "measurement",
        "rows",
        "kind",
        "seconds",
        "peak RSS",
        "peak anon",
        "peak file",
        "index mapped",
        "peak - index",
    ]
    body = []
    for r in rows:
        mapped = r.get("index_mapped")
        body.append(
            [
                r["measurement"],
                f"{r['rows']:,}",
                r["kind"],
                f"{r['seconds']:.1f}",
                _gb(r["peak_rss"]),
                _gb(r["peak_anon"]),
                _gb(r["peak_file"]),
                "-" if mapped is None else _gb(mapped),
                "-" if mapped is None else _gb(r["peak_rss"] - mapped),
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths)))
        for b in body
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes (1M build, 200k/1M runs): a few minutes"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "memory.json")
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "memory_data")
    ap.add_argument(
        "--build-rows", type=int, default=None, help="rows of the build store (default 10M; quick 1M)"
    )
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--build-kinds", default="flat,auto", help="index kinds to build (default flat,auto)")
    ap.add_argument(
        "--nlist", type=int, default=None, help="IVF lists for ivfpq/auto (default: the build's own)"
    )
    ap.add_argument(
        "--run-rows", default=None, help="two store sizes for the SEALS run (default 200000,2000000)"
    )
    ap.add_argument(
        "--driver-rows",
        default=None,
        help="store sizes for the Ray driver measurement (comma list, e.g. 100000,1000000,10000000; off by "
        "default): the driver's own peak RSS while Ray shard actors hold the data",
    )
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--clean", action="store_true", help="delete the generated stores and indexes at the end")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        fn = {"build": child_build, "run": child_run, "driver": child_driver}[a.child[0]]
        print(json.dumps(fn(json.loads(a.child[1]))))
        return 0

    build_rows = a.build_rows or (1_000_000 if a.quick else 10_000_000)
    if a.quick and a.build_kinds == "flat,auto":
        a.build_kinds, a.nlist = "flat,ivfpq", a.nlist or 256  # at 1M rows auto is flat: show IVF-PQ too
    run_rows = [
        int(x) for x in (a.run_rows or ("200000,1000000" if a.quick else "200000,2000000")).split(",")
    ]
    a.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "benchmark": "memory",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": a.quick,
    }

    if not a.skip_build:
        store = ensure_store(a.work, build_rows, a.dim, concepts=20)
        builds = []
        for kind in [k.strip() for k in a.build_kinds.split(",") if k.strip()]:
            print(f"  measuring index build ({kind}) over {build_rows:,} x {a.dim} ...", flush=True)
            r = spawn(
                "build",
                {
                    "store": str(store),
                    "out": str(a.work / f"idx-{kind}-{build_rows}"),
                    "kind": kind,
                    "nlist": a.nlist,
                },
            )
            r.update(
                measurement="index build",
                rows=build_rows,
                requested_kind=kind,
                under_4gb=r["peak_rss"] < BUILD_LIMIT_BYTES,
            )
            shutil.rmtree(a.work / f"idx-{kind}-{build_rows}", ignore_errors=True)
            builds.append(r)
            rows.append(r)
        result["build"] = builds

    def measure(child: str, n: int, shards: int, budget: int, **update: Any) -> dict[str, Any]:
        """One SEALS run over an ``n``-row store (3 concepts, MaxEnt, k 100) in a fresh process."""
        store = ensure_store(a.work, n, a.dim, concepts=10)
        index = ensure_flat_index(a.work, store, shards=shards)
        print(f"  measuring {update['measurement']} over {n:,} rows ...", flush=True)
        out = a.work / f"{child}-{n}"
        p = {"store": str(store), "index": str(index), "out": str(out), "concepts": [0, 1, 2]}
        r = spawn(child, {**p, "k": 100, "batch": 100, "budget": budget})
        r.update(rows=n, **update)
        r["non_index_peak"] = r["peak_rss"] - r["index_mapped"]
        shutil.rmtree(out, ignore_errors=True)
        rows.append(r)
        return r

    if a.driver_rows:
        result["driver"] = [
            measure("driver", n, 2, 400, measurement="Ray driver", kind="flat, 2 shard actors")
            for n in [int(x) for x in a.driver_rows.split(",")]
        ]

    if not a.skip_run:
        runs = [measure("run", n, 1, 600, measurement="SEALS run", kind="flat (mmap)") for n in run_rows]
        (lo, hi) = runs[0], runs[-1]
        growth = hi["non_index_peak"] - lo["non_index_peak"]
        per_row = growth / max(1, hi["rows"] - lo["rows"])
        result["run"] = runs
        result["run_growth"] = {
            "non_index_peak_growth_bytes": growth,
            "anon_peak_growth_bytes": hi["peak_anon"] - lo["peak_anon"],
            "bytes_per_added_row": per_row,
            "embedding_row_bytes": 4 * a.dim,
            "bounded": per_row < 0.125 * 4 * a.dim,
        }

    for r in rows:
        r.setdefault("kind", r.get("requested_kind", "?"))
    print()
    print(format_table(rows))
    print()
    for b in result.get("build", []):
        print(
            f"index build ({b['kind']}, {b['rows']:,} x {a.dim}): peak RSS {_gb(b['peak_rss'])} -> "
            f"{'under' if b['under_4gb'] else 'OVER'} 4 GB"
        )
    if "run_growth" in result:
        g = result["run_growth"]
        print(
            f"SEALS run, {run_rows[0]:,} -> {run_rows[-1]:,} rows: peak RSS minus the index's mapped size grew "
            f"{_gb(g['non_index_peak_growth_bytes'])} ({g['bytes_per_added_row']:.1f} bytes per added row; one "
            f"embedding row is {g['embedding_row_bytes']} bytes) -> {'bounded' if g['bounded'] else 'GROWS'}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    if a.clean:
        shutil.rmtree(a.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
