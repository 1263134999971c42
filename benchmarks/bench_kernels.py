"""Benchmark of the fused score-and-select kernel (and the PQ scoring kernel) against the torch reference.

Correctness first (kernel vs the torch reference on fresh random inputs, with ties and empty segments),
then, for pool sizes 1e5..1e8 candidates (as many as fit in GPU memory) and 1..256 units: warm-up, median
time over repetitions with CUDA events, achieved bandwidth as a share of the card's device-to-device copy
bandwidth (measured here with a large torch copy), and the speed-up over the torch reference on the same
GPU. Prints a table and writes JSON with ``--out``.

Without CUDA (or CuPy) it times the torch CPU reference at small sizes, says the GPU numbers are pending and
exits 0.

    python benchmarks/bench_kernels.py --quick
    python benchmarks/bench_kernels.py --out benchmarks/out/kernels.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from seals_gpu.kernels import reference

from seals_gpu import kernels, scoring


# ------------------------------------------------------------------------------------------------ problems
def make_problem(
    M: int, U: int, *, N: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> dict[str, Any]:
    """A CSR batch of M candidates split evenly over U units, rows drawn from an (N, d) matrix."""
    g = torch.Generator(device=device).manual_seed(seed)
    emb = torch.empty(N, d, device=device, dtype=dtype)
    step = max(1, (1 << 26) // d)  # fill in chunks: never a float32 copy of the whole matrix
    for s in range(0, N, step):
        e = min(N, s + step)
        blk = torch.randn(e - s, d, device=device, generator=g)
        emb[s:e] = torch.nn.functional.normalize(blk, dim=1).to(dtype)
    lens = np.full(U, M // U, dtype=np.int64)
    lens[: M % U] += 1
    off = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])).to(device)
    return dict(
        emb=emb,
        rows=torch.randint(0, N, (M,), device=device, generator=g),
        ids=torch.randint(0, 1 << 40, (M,), device=device, generator=g),
        offsets=off,
        W=torch.randn(U, d, device=device, generator=g),
        bias=torch.zeros(U, device=device),
        kind=(torch.arange(U, device=device) % 3).to(torch.int8),
        ref=torch.nn.functional.normalize(torch.randn(U, d, device=device, generator=g), dim=1),
        beta=1.0,
    )


def problem_args(p: dict[str, Any]) -> tuple:
    return (p["emb"], p["rows"], p["ids"], p["offsets"], p["W"], p["bias"], p["kind"], p["ref"], p["beta"])


# ------------------------------------------------------------------------------------------------ timing
def time_cuda(fn: Callable[[], Any], reps: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_cpu(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    """Median milliseconds of ``fn`` (wall clock)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written per second) of a large torch copy."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = time_cuda(lambda: b.copy_(a), reps=10)
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------- correctness
def check_correctness(device: torch.device, use_kernel: bool) -> dict[str, Any]:
    """Kernel (or float32 torch on CPU) vs the torch reference; raises AssertionError on a mismatch."""
    out: dict[str, Any] = {}
    for dtype in (torch.float32, torch.float16) if use_kernel else (torch.float32,):
        p = make_problem(60_000, 7, N=5000, d=96, dtype=dtype, device=device, seed=1)
        lens = torch.tensor([0, 1, 64, 3000, 40_000, 16_935, 0], device=device)  # empty, tiny, several levels
        p["offsets"] = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), lens.cumsum(0)])
        p["rows"][100:200] = p["rows"][100]  # ties: a run of equal rows with distinct ids
        b = 64
        if use_kernel:
            got = scoring.score_select(*problem_args(p), b, backend="cuda")
            s = scoring.score_candidates(*problem_args(p)[:2], *problem_args(p)[3:], backend="cuda")
            truth = scoring.score_candidates(
                p["emb"].float(), p["rows"], p["offsets"], p["W"], p["bias"], p["kind"], p["ref"], p["beta"],
                backend="torch", compute_dtype=torch.float64,
            )  # fmt: skip
            err = float((s.double() - truth).abs().max())
            assert err < 5e-5, f"{dtype}: kernel scores differ from the float64 reference by {err}"
            exact = scoring._select_segments(s, p["ids"], p["offsets"], b)
            assert torch.equal(got.ids, exact.ids), f"{dtype}: kernel selection differs from the reference"
            assert torch.equal(got.counts, exact.counts)
        else:
            got = scoring.score_select(*problem_args(p), b, backend="torch")
            ref = scoring.score_select(*problem_args(p), b, backend="torch", compute_dtype=torch.float64)
            err = float((got.scores - ref.scores).nan_to_num(0.0, 0.0, 0.0).abs().max())
            assert err < 5e-5, f"float32 vs float64 reference differ by {err}"
        out[str(dtype).replace("torch.", "")] = {"max_abs_score_err": err, "ok": True}
    if use_kernel:
        pq = _pq_problem(200_000, 4, 32, device)
        got = kernels.pq_logits_cuda(
            pq["codes"], pq["lists"], pq["offsets"], pq["lut"], pq["coarse"], pq["bias"]
        )
        ref = reference.pq_logits_torch(
            pq["codes"], pq["lists"], pq["offsets"], pq["lut"], pq["coarse"], pq["bias"]
        )
        err = float((got - ref).abs().max())
        assert err < 1e-3, f"pq kernel differs from the torch reference by {err}"
        out["pq"] = {"max_abs_logit_err": err, "ok": True}
    return out


def _pq_problem(M: int, U: int, m_sub: int, device: torch.device, d: int = 384, nlist: int = 1024) -> dict:
    g = torch.Generator(device=device).manual_seed(2)
    lens = np.full(U, M // U)
    lens[: M % U] += 1
    W = torch.randn(U, d, device=device, generator=g)
    coarse, lut = reference.pq_tables(
        W,
        torch.randn(nlist, d, device=device, generator=g),
        torch.randn(m_sub, 256, d // m_sub, device=device, generator=g),
    )
    return dict(
        codes=torch.randint(0, 256, (M, m_sub), device=device, generator=g).to(torch.uint8),
        lists=torch.randint(0, nlist, (M,), device=device, generator=g).to(torch.int32),
        offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])).to(device),
        lut=lut, coarse=coarse, bias=torch.zeros(U, device=device),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ sweeps
def bench_config(
    args: argparse.Namespace, M: int, U: int, N: int, dtype: torch.dtype, device: torch.device, bw: float
) -> dict[str, Any]:
    """Time one (M, U) configuration: fused kernel, its two phases, and the torch reference (if M is small)."""
    es = 2 if dtype == torch.float16 else 4
    p = make_problem(M, U, N=N, d=args.d, dtype=dtype, device=device)
    a = problem_args(p)
    off_h = p["offsets"].cpu().numpy()
    reps = 5 if M >= 10_000_000 else 20

    def fused() -> Any:
        return kernels.score_select_cuda(*a, args.b, offsets_host=off_h)

    def phase1() -> torch.Tensor:
        return kernels.score_candidates_cuda(
            p["emb"],
            p["rows"],
            p["offsets"],
            p["W"],
            p["bias"],
            p["kind"],
            p["ref"],
            p["beta"],
            offsets_host=off_h,
        )

    t_k = time_cuda(fused, reps)
    t_1 = time_cuda(phase1, reps)
    s = phase1()
    t_2 = time_cuda(
        lambda: kernels.topb_segments_cuda(s, p["ids"], p["offsets"], args.b, offsets_host=off_h), reps
    )
    t_ref = None
    if M <= args.max_ref:
        t_ref = time_cuda(lambda: scoring.score_select(*a, args.b, backend="torch"), 3, warmup=1)
    bytes1 = M * (args.d * es + 8 + 4)  # gathered rows + row index + score write
    return {
        "M": M, "U": U, "N": N, "d": args.d, "dtype": args.dtype, "b": args.b,
        "kernel_ms": t_k, "phase1_ms": t_1, "phase2_ms": t_2, "torch_ms": t_ref,
        "speedup": (t_ref / t_k) if t_ref else None,
        "phase1_GBps": bytes1 / (t_1 * 1e-3) / 1e9,
        "phase1_share_of_copy_bw": bytes1 / (t_1 * 1e-3) / 1e9 / bw,
        "candidates_per_s": M / (t_k * 1e-3),
    }  # fmt: skip


def gpu_sweep(args: argparse.Namespace, device: torch.device, bw: float) -> list[dict[str, Any]]:
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    es = 2 if dtype == torch.float16 else 4
    sizes = [100_000, 1_000_000, 10_000_000] if args.quick else [100_000, 1_000_000, 10_000_000, 100_000_000]
    units = [1, 64] if args.quick else [1, 16, 256]
    free, _ = torch.cuda.mem_get_info(device)
    rows_out: list[dict[str, Any]] = []
    for M in sizes:
        per_cand = 8 + 8 + 4 + 4 + 8  # rows, ids, scores, level buffers (scores + ids, bounded)
        N = int(min(M, max(1, (0.45 * free - M * per_cand) // (args.d * es))))
        if N < min(M, 100_000):
            rows_out.append({"M": M, "skipped": f"does not fit in {free / 2**30:.0f} GiB"})
            print(f"M={M:.0e}: skipped (memory)")
            continue
        for U in units:
            row = bench_config(args, M, U, N, dtype, device, bw)
            rows_out.append(row)
            print(_fmt_row(row), flush=True)
            torch.cuda.empty_cache()
    # PQ scoring: one configuration
    M = 10_000_000 if not args.quick else 1_000_000
    pq = _pq_problem(M, 16, 32, device)
    t = time_cuda(
        lambda: kernels.pq_logits_cuda(
            pq["codes"], pq["lists"], pq["offsets"], pq["lut"], pq["coarse"], pq["bias"]
        ),
        10,
    )
    t_ref = time_cuda(
        lambda: reference.pq_logits_torch(
            pq["codes"], pq["lists"], pq["offsets"], pq["lut"], pq["coarse"], pq["bias"]
        ),
        3,
        warmup=1,
    )
    bytes_pq = M * (32 + 4 + 4)
    row = {"kernel": "pq_logits", "M": M, "U": 16, "m_sub": 32, "kernel_ms": t, "torch_ms": t_ref, "speedup": t_ref / t,
           "GBps": bytes_pq / (t * 1e-3) / 1e9, "share_of_copy_bw": bytes_pq / (t * 1e-3) / 1e9 / bw}  # fmt: skip
    print(f"pq_logits M={M:.0e} U=16 m=32: {t:.3f} ms, torch {t_ref:.3f} ms, x{t_ref / t:.1f}, "
          f"{row['GBps']:.0f} GB/s ({100 * row['share_of_copy_bw']:.0f}% of copy)")  # fmt: skip
    rows_out.append(row)
    return rows_out


def cpu_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = [10_000, 50_000] if args.quick else [10_000, 100_000, 1_000_000]
    units = [1, 16]
    out = []
    for M in sizes:
        for U in units:
            p = make_problem(
                M, U, N=min(M, 200_000), d=args.d, dtype=torch.float32, device=torch.device("cpu")
            )
            t = time_cpu(partial(scoring.score_select, *problem_args(p), args.b, backend="torch"), 3)
            row = {
                "M": M,
                "U": U,
                "d": args.d,
                "b": args.b,
                "torch_cpu_ms": t,
                "candidates_per_s": M / (t * 1e-3),
            }
            out.append(row)
            print(
                f"M={M:>9,d} U={U:>3d}  torch CPU reference: {t:9.2f} ms  ({row['candidates_per_s']:.3g} cand/s)"
            )
    return out


def _fmt_row(r: dict[str, Any]) -> str:
    ref = f"{r['torch_ms']:9.2f}" if r["torch_ms"] is not None else "      n/a"
    sp = f"x{r['speedup']:6.1f}" if r["speedup"] else "      -"
    return (
        f"M={r['M']:>11,d} U={r['U']:>3d}  kernel {r['kernel_ms']:8.3f} ms (ph1 {r['phase1_ms']:7.3f}, "
        f"ph2 {r['phase2_ms']:7.3f})  torch {ref} ms {sp}  ph1 {r['phase1_GBps']:6.0f} GB/s "
        f"= {100 * r['phase1_share_of_copy_bw']:5.1f}% of copy bw"
    )


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer, smaller configurations")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--d", type=int, default=384, help="embedding dimension (default 384)")
    ap.add_argument("--b", type=int, default=64, help="items selected per unit (default 64)")
    ap.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="embedding dtype on the GPU")
    ap.add_argument(
        "--max-ref", type=int, default=10_000_000, help="largest M timed with the torch reference"
    )
    args = ap.parse_args(argv)

    ok, reason = (
        kernels.available(compile=True) if torch.cuda.is_available() else (False, kernels.available()[1])
    )
    result: dict[str, Any] = {
        "argv": sys.argv[1:], "python": platform.python_version(), "torch": torch.__version__,
        "kernels_available": ok, "kernels_reason": reason,
    }  # fmt: skip
    if ok:
        device = torch.device("cuda")
        result["device"] = torch.cuda.get_device_name(device)
        print(f"device: {result['device']}  ({reason})")
        result["correctness"] = check_correctness(device, use_kernel=True)
        print("correctness: kernel matches the torch reference", result["correctness"])
        bw = copy_bandwidth(device, 1 << 30)
        result["copy_bandwidth_GBps"] = bw
        print(f"device-to-device copy bandwidth: {bw:.0f} GB/s")
        result["rows"] = gpu_sweep(args, device, bw)
        result["gpu_numbers"] = "measured"
    else:
        result["device"] = "cpu"
        print(f"no usable CUDA kernels: {reason}")
        result["correctness"] = check_correctness(torch.device("cpu"), use_kernel=False)
        print("correctness: float32 torch reference matches the float64 reference")
        result["rows"] = cpu_sweep(args)
        result["gpu_numbers"] = "pending: run this script on a machine with a CUDA GPU and CuPy"
        print(
            "GPU numbers pending: run this script on a machine with a CUDA GPU and CuPy (cupy-cuda12x/13x)."
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
