"""The quick CPU benchmark set (``make bench``): every benchmark with ``--quick --device cpu``, one after the
other, then the scale model from their JSON. Budget: under 15 minutes on 2 cores. Prints each script's table,
a summary of wall times and where the JSON went.

``bench_paper`` and ``bench_sweep`` need the embedded WordNet parquet: they run when ``--wordnet-parquet``
(default ``../shared/data/wordnet_noun_minilm.parquet``, the development copy) exists, and are skipped with a
note otherwise. ``bench_kernels.py`` and ``bench_distributed.py`` are not part of this set.

    python benchmarks/run_quick.py
    python benchmarks/run_quick.py --only learner,index
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SCRIPTS = ["learner", "concurrency", "index", "search", "latency", "id", "paper", "sweep", "scale_model"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SCRIPTS)}")
    p.add_argument(
        "--wordnet-parquet",
        type=Path,
        default=HERE.parent.parent / "shared" / "data" / "wordnet_noun_minilm.parquet",
    )
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else SCRIPTS
    results = []
    t_all = time.perf_counter()
    for name in names:
        script = HERE / (f"{name}.py" if name == "scale_model" else f"bench_{name}.py")
        out = OUT / f"{name}.json"
        cmd = [sys.executable, str(script), "--quick", "--device", args.device, "--out", str(out)]
        if name in ("paper", "sweep"):
            if not args.wordnet_parquet.is_file():
                print(
                    f"\n### {name}: skipped ({args.wordnet_parquet} not found; pass --wordnet-parquet)",
                    flush=True,
                )
                results.append((name, None, "skipped", None))
                continue
            cmd += ["--wordnet-parquet", str(args.wordnet_parquet)]
        print(f"\n### {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        dt = time.perf_counter() - t0
        results.append((name, dt, "ok" if rc == 0 else f"FAILED (exit {rc})", out if rc == 0 else None))
    total = time.perf_counter() - t_all
    print("\n### quick benchmark set")
    for name, dt, status, out in results:
        wall = f"{dt:6.0f}s" if dt is not None else "      -"
        print(f"  {name:<12} {wall}  {status:<18} {out or ''}")
    print(f"  {'total':<12} {total:6.0f}s  (budget 900s)")
    print(f"\nJSON written to {OUT}/ (one file per benchmark; run folders of bench_paper in {OUT / 'paper'})")
    return 0 if all(s in ("ok", "skipped") for _, _, s, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
