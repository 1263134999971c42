"""Everything GPU, in one command, for the rare and short moments a GPU machine is lent (``make gpu-check``).

Made to run unattended on a machine that has torch with CUDA, CuPy and scikit-learn but no network, no Ray and
maybe no FAISS: every step is a subprocess under its own time limit, so one failure or hang still returns the
rest, and everything it measures lands in one folder (``--out``, default ``gpu_check_out``):
``gpu_check.log`` (every step's output), one JSON per benchmark, and ``summary.json`` (each step's command,
status, seconds and limit; the environment: GPU, driver, torch, CUDA and CuPy versions).

Steps, in order (the limits add up to 7.5 minutes; ``--budget`` scales them):

1. ``env``       nvidia-smi, python/torch/CUDA/CuPy/FAISS versions, torch.cuda.is_available().
2. ``install``   ``pip install --no-deps --no-index --no-build-isolation -e .`` (the image's packages stay
                 as they are), after any wheels in ``--wheels DIR`` (``make gpu-wheels`` fetches FAISS's CPU
                 wheel for python 3.12 on a machine with network; carry ``gpu_wheels/``). If pip cannot
                 install the package, a PYTHONPATH overlay maps it for the steps that follow.
3. ``pytest``    ``pytest -m gpu``: every kernel against its torch reference on fresh random inputs, the
                 learner and search on CUDA against CPU.
4. ``kernels``   ``bench_kernels.py --d 128`` in fp16 and fp32: the fused score+select kernel over 1e5..1e8
                 candidates, against the torch path and the measured device-to-device copy bandwidth.
5. ``learner``   ``fit_logistic`` on the GPU (batched Newton) at 256 units x 2,000 labels x 384, cold and
                 warm-started, against a scikit-learn loop on the same machine's CPU (all its cores).
6. ``latency``   ``bench_latency.py --device cuda``: a SEALS round (fit + search + select) for 100 and 256
                 concepts over 1e7 rows with a kNN graph, against All.
7. ``round``     a SEALS round over 1e8 rows x 128 (fp16) generated on the GPU, for 100 and 256 concepts: fit,
                 graph lookup and fused select over the pools, against All's scoring of every row.
8. ``search``    exact kNN by torch matmul + top-k on the GPU over 1e7 x 128 rows: queries per second.
9. ``quick``     ``run_quick.py --device cuda``: the quick benchmark set (JSON in ``benchmarks/out``).

``--dry-run`` runs the same steps on the CPU at toy sizes and skips ``install`` (``make test`` runs it, so the
script cannot rot). Prints one line per step and a final table; exits 0 when every step passed or was skipped.

    python benchmarks/gpu_check.py --out gpu_check_out                # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check     # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _steps(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """The plan, one row per step: name, limit (seconds), command, and its extra arguments for the dry run
    (CPU, toy sizes) and for the GPU. ``me`` is this script's own single-purpose modes."""
    py = sys.executable
    dry = args.dry_run
    dev = "cpu" if dry else "cuda"
    me = [py, str(HERE / "gpu_check.py")]
    plan: list[tuple[str, int, list[str] | None, list[str], list[str]]] = [
        ("env", 20, [*me, "--env-report", str(out / "env.json")], [], []),
        ("install", 45, None, [], []),
        (
            "pytest",
            60,
            [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")],
            [],
            [],
        ),
    ]
    for dtype, limit in (("fp16", 50), ("fp32", 40)):
        kernels = [py, str(HERE / "bench_kernels.py"), "--dtype", dtype, "--d", "128"]
        plan.append(
            (
                f"kernels_{dtype}",
                limit,
                [*kernels, "--out", str(out / f"kernels_{dtype}.json")],
                ["--quick"],
                [],
            )
        )
    plan += [
        (
            "learner",
            40,
            [*me, "--learner", str(out / "learner.json"), "--device", dev],
            ["--units", "8", "--labels", "300", "--dim", "32"],
            [],
        ),
        (
            "latency",
            60,
            [py, str(HERE / "bench_latency.py"), "--device", dev, "--out", str(out / "latency.json")],
            ["--sizes", "20000", "--concepts", "1,4"],
            ["--sizes", "1e6,1e7", "--concepts", "100,256"],
        ),
        (
            "round",
            60,
            [*me, "--round", str(out / "round.json"), "--device", dev],
            ["--rows", "50000", "--concepts", "2,4"],
            ["--rows", "100000000", "--concepts", "100,256"],
        ),
        (
            "search",
            30,
            [*me, "--search-qps", str(out / "search.json"), "--device", dev],
            ["--rows", "20000"],
            ["--rows", "10000000"],
        ),
        # the dry run's quick step stays inside --out (run_quick writes to benchmarks/out)
        (
            "quick",
            45,
            [py, str(HERE / "bench_learner.py")]
            if dry
            else [py, str(HERE / "run_quick.py"), "--device", dev],
            ["--quick", "--dims", "64", "--labels", "100", "--out", str(out / "quick_learner.json")],
            [],
        ),
    ]
    return [
        {
            "name": name,
            "cmd": None if cmd is None else cmd + (dry_args if dry else gpu_args),
            "limit": max(5, int(limit * args.budget)),
        }
        for name, limit, cmd, dry_args, gpu_args in plan
        if not (dry and name == "install")
    ]


def _install(args: argparse.Namespace, log, out: Path) -> tuple[str, str, str | None]:
    """Carried wheels first, then the package itself, all offline and without dependencies. When pip cannot
    install it (no setuptools in the image, say), an overlay folder that maps ``seals_gpu`` and its
    ``seals_gpu.kernels`` (the top-level ``kernels/``) is put on PYTHONPATH instead: returned third."""
    py = sys.executable
    notes = []
    if args.wheels and Path(args.wheels).is_dir():
        wheels = sorted(str(p) for p in Path(args.wheels).glob("*.whl"))
        if wheels:
            r = subprocess.run(
                [py, "-m", "pip", "install", "--no-deps", "--no-index", *wheels],
                capture_output=True,
                text=True,
            )
            log(r.stdout + r.stderr)
            notes.append(f"{len(wheels)} wheel(s): {'ok' if r.returncode == 0 else 'failed'}")
    r = subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "-e", str(ROOT)],
        capture_output=True,
        text=True,
    )
    log(r.stdout + r.stderr)
    if r.returncode == 0:
        notes.append("package: ok")
        return "ok", "; ".join(notes), None
    overlay = out / "_overlay" / "seals_gpu"
    overlay.mkdir(parents=True, exist_ok=True)
    for item in (ROOT / "seals_gpu").iterdir():
        link = overlay / item.name
        if not link.exists():
            link.symlink_to(item)
    if not (overlay / "kernels").exists():
        (overlay / "kernels").symlink_to(ROOT / "kernels")
    notes.append("package: pip failed, using a PYTHONPATH overlay")
    return "ok", "; ".join(notes), str(overlay.parent)


def env_report(path: Path) -> int:
    """Versions and devices, as JSON (also printed)."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"unavailable ({e})"
    for mod in ("torch", "cupy", "faiss", "numpy", "sklearn", "ray"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a missing or broken module is a fact to report
            info[mod] = f"not importable ({type(e).__name__})"
    try:
        import torch

        info["cuda_available"] = bool(torch.cuda.is_available())
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001
        info["cuda_available"] = f"unknown ({e})"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


def search_qps(path: Path, device: str, rows: int, d: int = 128, queries: int = 10_000, k: int = 100) -> int:
    """Exact kNN by torch matmul + top-k (``TorchExactIndex``) on ``device``: queries per second, and the
    result of 64 queries checked against a float64 brute force (ids equal up to float ties)."""
    import numpy as np
    import torch

    from seals_gpu.index.torch_exact import TorchExactIndex

    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(rows, d, generator=g), dim=1)
    ids = np.arange(rows, dtype=np.int64) * 3 + 1
    t0 = time.perf_counter()
    index = TorchExactIndex(ids, x, device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
    build = time.perf_counter() - t0
    q = x[:: max(1, rows // queries)][:queries].numpy()
    index.search(q[:64], k)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    D, I = index.search(q, k)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    ref = (q[:64].astype(np.float64) @ x.numpy().astype(np.float64).T).argsort(axis=1)[:, ::-1][:, :k]
    overlap = float(np.mean([np.intersect1d(I[r], ids[ref[r]]).size / k for r in range(64)]))
    res = {
        "device": str(dev),
        "rows": rows,
        "dim": d,
        "queries": int(q.shape[0]),
        "k": k,
        "build_s": build,
        "search_s": secs,
        "qps": q.shape[0] / secs,
        "recall_vs_float64": overlap,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0 if overlap >= 0.98 else 1


def learner(path: Path, device: str, units: int, labels: int, dim: int) -> int:
    """``fit_logistic`` (auto: batched Newton on CUDA) vs a scikit-learn ``LogisticRegression`` loop on the
    CPU, cold and warm (the last 5% of labels added), on clustered unit vectors with 5% positives."""
    import warnings

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from seals_gpu.learner import fit_logistic

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((64, dim))
    X = np.empty((units, labels, dim), np.float32)
    y = np.zeros((units, labels), np.float32)
    for u in range(units):
        c = rng.integers(0, 64, labels)
        pos = rng.random(labels) < 0.05
        c[pos] = u % 64
        x = centers[c] + 0.7 * rng.standard_normal((labels, dim))
        X[u] = x / np.linalg.norm(x, axis=1, keepdims=True)
        y[u] = pos
    dev = torch.device(device)
    Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    mask = torch.ones(units, labels, dtype=torch.bool, device=dev)
    m0 = mask.clone()
    m0[:, int(labels * 0.95) :] = False

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    fit_logistic(Xt, yt, m0)  # warm-up (and CUDA context)
    sync()
    prev = fit_logistic(Xt, yt, m0)
    res: dict[str, Any] = {"device": str(dev), "units": units, "labels": labels, "dim": dim}
    for case, init in (("cold", None), ("warm", prev)):
        sync()
        t0 = time.perf_counter()
        model = fit_logistic(Xt, yt, mask, init=init)
        sync()
        res[f"ours_{case}_s"] = time.perf_counter() - t0
        res[f"ours_{case}_method"] = model.method
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        sk = [
            LogisticRegression(C=1.0, warm_start=True).fit(
                X[u, : int(labels * 0.95)], y[u, : int(labels * 0.95)]
            )
            for u in range(units)
        ]
        t_prev = time.perf_counter() - t0
        t0 = time.perf_counter()
        for u in range(units):
            LogisticRegression(C=1.0).fit(X[u], y[u])
        res["sklearn_cold_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for u in range(units):
            sk[u].fit(X[u], y[u])
        res["sklearn_warm_s"] = time.perf_counter() - t0
    res["sklearn_prefit_s"] = t_prev
    res["speedup_cold"] = res["sklearn_cold_s"] / res["ours_cold_s"]
    res["speedup_warm"] = res["sklearn_warm_s"] / res["ours_warm_s"]
    res["target_speedup"] = 20.0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


def seals_round(path: Path, device: str, rows: int, concepts: list[int], d: int = 128) -> int:
    """One SEALS round at ``rows`` rows with everything generated on the device (nothing big travels): for
    C concepts x 500 labels, the fit (``fit_logistic``), the kNN-graph lookup of 100 new labels per concept
    (a device-resident (n_labeled, k) neighbour table; the graph's content does not change the cost), and
    the fused score+select over each concept's pool (500 x 100 candidates), against All's scoring of every
    row. Writes seconds per step and the All/SEALS selection ratio with the ideal |U| / |P|."""
    import torch

    from seals_gpu import scoring
    from seals_gpu.learner import fit_logistic

    dev = torch.device(device)
    half = dev.type == "cuda"

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator(device=dev).manual_seed(0)
    emb = torch.empty(rows, d, dtype=torch.float16 if half else torch.float32, device=dev)
    for s in range(0, rows, 1 << 24):  # normalised Gaussian rows, generated in place block by block
        e = min(rows, s + (1 << 24))
        blk = torch.randn(e - s, d, generator=g, device=dev)
        emb[s:e] = torch.nn.functional.normalize(blk, dim=1).to(emb.dtype)
    res: dict[str, Any] = {"device": str(dev), "rows": rows, "dim": d, "dtype": str(emb.dtype), "cases": []}
    k, L, b = 100, 500, 100
    for C in concepts:
        lab = torch.randint(0, rows, (C, L), generator=g, device=dev)
        y = (torch.rand(C, L, generator=g, device=dev) < 0.05).float()
        X = emb[lab.reshape(-1)].float().reshape(C, L, d)
        mask = torch.ones(C, L, dtype=torch.bool, device=dev)
        model = fit_logistic(X, y, mask)  # warm-up
        sync()
        t0 = time.perf_counter()
        model = fit_logistic(X, y, mask, init=model)
        sync()
        t_fit = time.perf_counter() - t0
        graph = torch.randint(0, rows, (C * L, k), generator=g, device=dev)  # neighbour table of the labeled
        new = torch.arange(C * L, device=dev).reshape(C, L)[:, -b:].reshape(-1)
        sync()
        t0 = time.perf_counter()
        nbr = graph[new]  # this round's lookup: k neighbours of b new labels per concept
        pools = [torch.unique(graph[c * L : (c + 1) * L].reshape(-1)) for c in range(C)]
        sync()
        t_search = time.perf_counter() - t0
        pool_rows = torch.cat(pools)
        offsets = torch.zeros(C + 1, dtype=torch.int64, device=dev)
        offsets[1:] = torch.cumsum(torch.tensor([p.numel() for p in pools], device=dev), 0)
        kind = torch.zeros(C, dtype=torch.int8, device=dev)
        W, bias = model.W.float(), model.b.float()
        scoring.score_select(emb, pool_rows, pool_rows, offsets, W, bias, kind, None, 1.0, b)  # warm-up
        sync()
        t0 = time.perf_counter()
        scoring.score_select(emb, pool_rows, pool_rows, offsets, W, bias, kind, None, 1.0, b)
        sync()
        t_seals = time.perf_counter() - t0

        def blocks(ids_all=torch.arange(rows, device=dev)):  # noqa: B008 - one id range per case
            for s in range(0, rows, 1 << 22):
                yield ids_all[s : s + (1 << 22)], emb[s : s + (1 << 22)]

        sync()
        t0 = time.perf_counter()
        scoring.score_all(blocks(), W, bias, kind, None, 1.0, b, device=dev)
        sync()
        t_all = time.perf_counter() - t0
        P = int(pool_rows.numel()) / C
        res["cases"].append(
            {
                "concepts": C,
                "labels": L,
                "pool_per_concept": P,
                "fit_s": t_fit,
                "search_s": t_search,
                "select_seals_s": t_seals,
                "select_all_s": t_all,
                "round_seals_s": t_fit + t_search + t_seals,
                "select_speedup": t_all / t_seals,
                "ideal_speedup": rows / P,
                "neighbours_looked_up": int(nbr.numel()),
            }
        )
        print(json.dumps(res["cases"][-1]), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, no install (what make test runs)")
    p.add_argument("--wheels", default="gpu_wheels", help="install the wheels in this folder first, offline")
    p.add_argument("--budget", type=float, default=1.0, help="scale every step's time limit")
    p.add_argument("--only", default=None, help="comma-separated step names")
    # internal single-purpose modes, run as steps
    p.add_argument("--env-report", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--search-qps", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=10_000_000, help=argparse.SUPPRESS)
    p.add_argument("--learner", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--round", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--concepts", default="100,256", help=argparse.SUPPRESS)
    p.add_argument("--units", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--labels", type=int, default=2000, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=384, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.learner is not None:
        return learner(args.learner, args.device, args.units, args.labels, args.dim)
    if args.round is not None:
        return seals_round(args.round, args.device, args.rows, [int(c) for c in args.concepts.split(",")])
    if args.env_report is not None:
        return env_report(args.env_report)
    if args.search_qps is not None:
        return search_qps(args.search_qps, args.device, args.rows)

    out = args.out
    if out.exists() and not out.is_dir():
        print(f"gpu_check: --out {out} is a file; pick a folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "gpu_check.log", "a")

    def log(text: str) -> None:
        logf.write(text if text.endswith("\n") else text + "\n")
        logf.flush()

    steps = _steps(args, out)
    if args.only:
        keep = set(args.only.split(","))
        steps = [s for s in steps if s["name"] in keep]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU paths, whatever the machine has
    results = []
    t_all = time.perf_counter()
    for s in steps:
        t0 = time.perf_counter()
        log(f"\n===== {s['name']} (limit {s['limit']} s) =====")
        if s["name"] == "install":
            status, note, path = _install(args, log, out)
            if path:
                env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
        else:
            log("$ " + " ".join(s["cmd"]))
            try:
                r = subprocess.run(
                    s["cmd"], capture_output=True, text=True, timeout=s["limit"], env=env, cwd=str(ROOT)
                )
                log(r.stdout + r.stderr)
                tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or [""]
                status, note = ("ok" if r.returncode == 0 else f"failed (exit {r.returncode})"), tail[0][:160]
                if s["name"] == "pytest" and r.returncode == 5:
                    status = "ok"  # pytest's "no tests collected/all deselected": nothing GPU to run here
            except subprocess.TimeoutExpired as e:
                log(
                    (e.stdout or b"").decode(errors="replace")
                    if isinstance(e.stdout, bytes)
                    else (e.stdout or "")
                )
                status, note = "timeout", f"stopped after {s['limit']} s"
        secs = time.perf_counter() - t0
        results.append(
            {
                **{k: s[k] for k in ("name", "limit")},
                "cmd": s["cmd"],
                "status": status,
                "seconds": round(secs, 1),
                "note": note,
            }
        )
        print(f"{s['name']:<13} {status:<22} {secs:6.1f} s  {note}", flush=True)
    env_info = {}
    try:
        env_info = json.loads((out / "env.json").read_text())
    except (OSError, ValueError):
        pass
    summary = {
        "dry_run": args.dry_run,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "environment": env_info,
        "steps": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logf.close()
    bad = [r["name"] for r in results if r["status"] != "ok"]
    print(
        f"summary: {out / 'summary.json'}; {len(results) - len(bad)} of {len(results)} steps ok"
        + (f"; not ok: {', '.join(bad)}" if bad else "")
    )
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
