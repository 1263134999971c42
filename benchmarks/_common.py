"""Small helpers shared by the benchmarks: arguments, timing with medians, tables, JSON, machine, data.

Every benchmark script returns rows (dicts), prints them with :func:`print_table` and writes them with
:func:`write_json` (to ``--out``, default ``benchmarks/out/NAME.json``) together with the machine
(:func:`machine`), the date and the exact command line. Scripts run unchanged on CPU and on a GPU
(``--device auto|cpu|cuda``) and each has a ``--quick`` mode.

Synthetic data for the scale benchmarks comes from :func:`clustered_vectors` (numpy, chunked, seeded):
the geometry of :mod:`seals_gpu.synth` (Gaussian clusters of uneven size whose noise lives mostly in a
low-rank subspace, l2-normalised), generated straight into memory because writing 1e7 rows to Parquet
and reading them back would dominate the benchmark.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benchmarks" / "out"


# ------------------------------------------------------------------------------------------ arguments
def make_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--device``, ``--quick``, ``--out``, ``--repeats``."""
    p = argparse.ArgumentParser(
        prog=f"benchmarks/{name}.py",
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--quick", action="store_true", help="the small, fast version (make bench)")
    p.add_argument("--out", type=Path, default=OUT_DIR / f"{name}.json", help="JSON output path")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (median reported)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and FAISS CPU threads (default: the libraries' own, all cores). On a shared, oversubscribed "
        "machine 1 thread gives far steadier times for the many small ops of a round",
    )
    return p


_THREADS: dict[str, Any] = {}


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p.parse_args(argv)``, remembering ``--threads`` for :func:`resolve`."""
    args = p.parse_args(argv)
    _THREADS["n"] = getattr(args, "threads", None)
    return args


def resolve(device: str):
    """``seals_gpu.device.resolve_device`` (prints the choice and why)."""
    from seals_gpu.device import resolve_device
    from seals_gpu.errors import SealsError

    try:
        dev = resolve_device(device)
    except SealsError as e:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {e}") from None
    threads = _THREADS.get("n")
    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        what = "torch and FAISS"
        try:  # numpy's BLAS too (scikit-learn runs on it); threadpoolctl comes with scikit-learn
            from threadpoolctl import threadpool_limits

            _THREADS["limiter"] = threadpool_limits(limits=threads)
            what += ", BLAS/OpenMP via threadpoolctl"
        except ImportError:
            pass
        print(f"threads: {threads} ({what})", flush=True)
    print(f"device: {dev.reason}", flush=True)
    return dev


# ------------------------------------------------------------------------------------------ timing
def sync(device: Any = None) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    import torch

    kind = getattr(device, "kind", None) or getattr(device, "type", None) or str(device or "")
    if str(kind).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(
    fn: Callable[[], Any],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: Any = None,
    setup: Callable[[], Any] | None = None,
    max_seconds: float | None = None,
    slow: float = 1.0,
) -> dict[str, Any]:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones.

    ``setup`` (untimed) runs before every call. A warm-up call slower than ``slow`` seconds counts as a
    sample (big calls amortise their warm-up), and sampling stops early once ``max_seconds`` have been
    spent (at least one sample is always taken), so that huge configurations stay affordable.

    Returns ``{"median", "min", "max", "times", "result"}`` (seconds; ``result`` of the last call).
    """
    result = None
    times: list[float] = []
    spent = 0.0
    for _ in range(warmup):
        if setup is not None:
            setup()
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        if dt > slow:
            times.append(dt)
    while len(times) < max(1, repeats) and not (times and max_seconds is not None and spent >= max_seconds):
        if setup is not None:
            setup()
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        times.append(dt)
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "times": times,
        "result": result,
    }


def interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: Any = None,
    setups: dict[str, Callable[[], Any]] | None = None,
    max_seconds: float | None = None,
    slow: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """:func:`timed` for several functions measured in turn (A B C A B C ...), so that drifting load on a
    shared machine hits them alike and their ratios stay meaningful. Same rules per function as
    :func:`timed` (slow warm-ups count; ``max_seconds`` caps each function's total)."""
    setups = setups or {}
    res: dict[str, dict[str, Any]] = {k: {"times": [], "spent": 0.0, "result": None} for k in fns}

    def once(k: str) -> float:
        if k in setups:
            setups[k]()
        sync(device)
        t0 = time.perf_counter()
        res[k]["result"] = fns[k]()
        sync(device)
        dt = time.perf_counter() - t0
        res[k]["spent"] += dt
        return dt

    for _ in range(warmup):
        for k in fns:
            dt = once(k)
            if dt > slow:
                res[k]["times"].append(dt)
    for _ in range(max(1, repeats)):
        for k in fns:
            r = res[k]
            if len(r["times"]) >= max(1, repeats):
                continue
            if r["times"] and max_seconds is not None and r["spent"] >= max_seconds:
                continue
            r["times"].append(once(k))
    for r in res.values():
        t = r["times"]
        r.update(median=statistics.median(t), min=min(t), max=max(t))
    return res


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if len(xs) else float("nan")


# ------------------------------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, library versions, GPU name (if any) and the load when measured."""
    import faiss
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "mem_gib": _mem_total_gib(),
        "gpu": gpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0,
        "loadavg": load,
    }


def describe_machine(m: dict[str, Any]) -> str:
    gpu = m.get("gpu") or "no GPU"
    return (
        f"{m['cpu']}, {m['cores_usable']} cores, {m['mem_gib']} GiB, {gpu}; torch {m['torch']}, "
        f"faiss {m['faiss']}, numpy {m['numpy']}, python {m['python']}"
    )


def command_line() -> str:
    """The command that ran this benchmark, as one could paste it (relative to the repo root)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


# ------------------------------------------------------------------------------------------ output
def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(
    path: Path, name: str, args: argparse.Namespace | dict[str, Any], rows: list[dict[str, Any]], **extra: Any
) -> Path:
    """Write ``{benchmark, date, command, machine, args, rows, ...extra}`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": machine(),
        "args": vars(args) if isinstance(args, argparse.Namespace) else args,
        "rows": rows,
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return "-"
        if f == 0:
            return "0"
        a = abs(f)
        if a >= 1e5:
            return f"{f:.3g}"
        if a >= 100:
            return f"{f:.0f}"
        if a >= 10:
            return f"{f:.1f}"
        if a >= 0.01:
            return f"{f:.3f}"
        return f"{f:.2e}"
    return str(v)


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None
) -> str:
    """Print ``rows`` as an aligned plain-text table (numbers right-aligned); return the text."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    body = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r.get(c), (int, float, np.number)) or r.get(c) is None for r in rows) for c in columns
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            s.rjust(w) if num else s.ljust(w) for s, w, num in zip(cells, widths, numeric, strict=True)
        )

    out = []
    if title:
        out.append(title)
    out.append(line(list(columns)))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(b) for b in body)
    text = "\n".join(out)
    print(text, flush=True)
    return text


# ------------------------------------------------------------------------------------------ memory
def vm_status(field: str = "VmHWM") -> int | None:
    """``field`` of /proc/self/status in bytes (VmHWM = peak resident set; VmRSS = current)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ data
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered_vectors(
    n: int,
    d: int,
    *,
    seed: int = 0,
    n_clusters: int | None = None,
    rank: int = 12,
    noise: float = 0.5,
    low_rank_share: float = 0.8,
    chunk: int = 1 << 18,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in ``d`` dims drawn from Gaussian clusters (synth-like geometry).

    Each row is its cluster's unit centre plus noise of expected norm ``noise``, ``low_rank_share`` of its
    variance in a ``rank``-dimensional subspace of the cluster. Rows are i.i.d., so any prefix of the
    output is a sample of the same distribution (benchmarks reuse prefixes for smaller pools).

    Returns:
        ``(X float32 (n, d), cluster int32 (n,))``.
    """
    rng = np.random.default_rng([seed, 0])
    m = int(n_clusters or np.clip(n // 2000, 64, 4096))
    centres = _unit(rng.standard_normal((m, d))).astype(np.float32)
    weights = rng.gamma(2.0, size=m)
    weights /= weights.sum()
    r = min(d, rank)
    n_bases = 16
    bases = np.stack([np.linalg.qr(rng.standard_normal((d, r)))[0] for _ in range(n_bases)]).astype(
        np.float32
    )
    basis_of = rng.integers(0, n_bases, size=m)
    s_low = noise * math.sqrt(low_rank_share / r)
    s_iso = noise * math.sqrt((1 - low_rank_share) / d)
    x = out if out is not None else np.empty((n, d), dtype=np.float32)
    assign = np.empty(n, dtype=np.int32)
    for s in range(0, n, chunk):
        g = np.random.default_rng([seed, 1, s // chunk])
        e = min(n, s + chunk)
        a = g.choice(m, size=e - s, p=weights)
        order = np.argsort(basis_of[a], kind="stable")  # group rows by subspace: contiguous matmuls
        a_sorted = a[order]
        blk = centres[a_sorted]
        blk += g.standard_normal((e - s, d), dtype=np.float32) * np.float32(s_iso)
        z = g.standard_normal((e - s, r), dtype=np.float32) * np.float32(s_low)
        bounds = np.searchsorted(basis_of[a_sorted], np.arange(n_bases + 1))
        for j in range(n_bases):
            lo, hi = bounds[j], bounds[j + 1]
            if hi > lo:
                blk[lo:hi] += z[lo:hi] @ bases[j].T
        blk /= np.sqrt(np.einsum("ij,ij->i", blk, blk))[:, None]
        x[s:e][order] = blk
        assign[s:e] = a
    return x, assign


def local_index(ids: np.ndarray, vectors: np.ndarray, shard: Any, params: dict[str, Any] | None = None):
    """A :class:`seals_gpu.index.LocalIndex` over one in-memory :class:`IndexShard` (no folder on disk)."""
    from seals_gpu.index import LocalIndex

    manifest = {
        "format": "seals_gpu.index/1",
        "kind": shard.kind,
        "dim": int(vectors.shape[1]),
        "ntotal": int(ids.size),
        "store": {"path": "<in-memory>", "fingerprint": "<benchmark>", "rows": int(ids.size)},
        "params": params or {},
        "shards": [{"dir": None, "n": int(ids.size), "id_min": int(ids[0]), "id_max": int(ids[-1])}],
    }
    return LocalIndex(Path("<in-memory benchmark index>"), manifest, [shard])


def in_memory_graph(ids: np.ndarray, sims: np.ndarray, nbrs: np.ndarray, k: int):
    """A :class:`seals_gpu.graph.KnnGraph` holding rows for ``ids`` only (sorted here)."""
    from seals_gpu.graph import KnnGraph

    order = np.argsort(ids, kind="stable")
    header = {"k": int(k), "store_fingerprint": "<benchmark>", "index": "<in-memory>"}
    return KnnGraph(
        Path("<in-memory benchmark graph>"),
        header,
        np.asarray(ids, np.int64)[order],
        np.ascontiguousarray(nbrs[order]),
        np.ascontiguousarray(sims[order]),
    )


def fmt_n(n: float) -> str:
    """1e5 -> '1e5', 3e6 -> '3e6', 1234 -> '1234'."""
    n = float(n)
    e = int(math.floor(math.log10(n))) if n > 0 else 0
    m = n / 10**e
    return f"{m:g}e{e}" if e >= 4 and abs(m - round(m)) < 1e-9 else f"{int(n)}"


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a GitHub-flavoured markdown table (same number formatting as :func:`print_table`)."""
    out = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if c != columns[0] else "---" for c in columns) + "|",
    ]
    out.extend("| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows)
    return "\n".join(out)
