"""The paper's result on real data: SEALS vs All on WordNet nouns x all-MiniLM-L6-v2 (82,115 items, 384 dims).

Concepts (WordNet synsets with everything below them, ImageNet's class structure) in two prevalence bands:
``imagenet`` 0.1%-1% and ``openimages`` 0.01%-0.1% (8-82 positives). Every band seeds with 5 positives + 95
negatives (the paper's; ``--seed-positives-rare`` for the rare band), and a concept is eligible with >= 10 train
positives (and the seed's + 3) and >= 1 test positive; the eligible counts are printed. For each band and
each k (100 and 1000): MaxEnt, MLP, ID and Random x All and SEALS, b = 100, budget 2,000 (the paper's
settings), run by ``seals-gpu run ... --full-supervision`` (in-process: ``seals_gpu.cli.main``), then the
paper-style table (``seals_gpu.report.summarize`` / ``format_table``) and Figure-1-style plots
(``seals_gpu.report.make_plots``) into ``benchmarks/out/paper/<band>_k<k>/``.

The store is built once from the embedded parquet with ``seals-gpu store wordnet OUT --from-parquet PATH``
(``--wordnet-parquet``; on dev machines and CI it is ``/work/shared/data/wordnet_noun_minilm.parquet``), or
given with ``--store``. Target: SEALS within 0.01 mean AP and 1 point of recall of All for MaxEnt, MLP and ID.

    python benchmarks/bench_paper.py --quick --wordnet-parquet /work/shared/data/wordnet_noun_minilm.parquet
    python benchmarks/bench_paper.py --concepts 30 --strategies maxent,mlp --wordnet-parquet PATH
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as cm
import numpy as np

from seals_gpu.cli import main as seals_cli
from seals_gpu.report import format_table, load_metrics, make_plots, summarize
from seals_gpu.seeds import eligible_concepts, sample_concepts
from seals_gpu.store import Store

NAME = "paper"
BANDS = {"imagenet": (0.001, 0.01), "openimages": (0.0001, 0.001)}
TARGET_AP_GAP = 0.01
TARGET_RECALL_GAP = 0.01


def get_store(args) -> Store:
    if args.store is not None:
        return Store(args.store)
    if args.wordnet_parquet is None:
        raise SystemExit(
            "bench_paper: pass --wordnet-parquet PATH (the embedded wordnet_noun_minilm.parquet; on dev "
            "machines /work/shared/data/wordnet_noun_minilm.parquet) or --store STORE_DIR"
        )
    src = Path(args.wordnet_parquet)
    if not src.is_file():
        raise SystemExit(
            f"bench_paper: --wordnet-parquet {src} does not exist; pass the embedded WordNet parquet "
            "(wordnet_noun_minilm.parquet) or an already built --store"
        )
    out = args.cache / "wordnet_store"
    if not out.exists():
        cmd = [sys.executable, "-m", "seals_gpu", "store", "wordnet", str(out), "--from-parquet", str(src)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return Store(out)


def main(argv: list[str] | None = None) -> int:
    p = cm.make_parser(NAME, __doc__)
    p.add_argument(
        "--wordnet-parquet", type=Path, default=None, help="embedded WordNet parquet to build the store"
    )
    p.add_argument("--store", type=Path, default=None, help="an already built WordNet store")
    p.add_argument("--concepts", type=int, default=None, help="concepts per band (default 30; --quick 3)")
    p.add_argument("--bands", default="imagenet,openimages", help=f"any of {','.join(BANDS)}")
    p.add_argument("--strategies", default="maxent,mlp,id,random")
    p.add_argument("--modes", default="all,seals")
    p.add_argument("--k", default="100,1000", help="comma-separated k values")
    p.add_argument(
        "--budget", type=int, default=None, help="labels incl. the seed set (default 2000; --quick 600)"
    )
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed-positives", type=int, default=5)
    p.add_argument(
        "--seed-positives-rare",
        type=int,
        default=5,
        help="seed positives for the openimages band (default 5, the paper's; session 1 used 2)",
    )
    p.add_argument("--seed-negatives", type=int, default=95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-full-supervision", action="store_true")
    p.add_argument(
        "--class-weights",
        default="none,balanced",
        help="comma-separated --class-weight values; the table is reported for each (default none,balanced)",
    )
    p.add_argument("--search", default="flat", help="the runs' --search (default flat: exact neighbours)")
    p.add_argument("--expand", default="batch", help="the runs' --expand (batch or each)")
    p.add_argument("--runs-dir", type=Path, default=cm.OUT_DIR / "paper", help="where the run folders go")
    p.add_argument("--cache", type=Path, default=cm.OUT_DIR / "cache")
    args = cm.parse(p, argv)
    n_concepts = args.concepts or (3 if args.quick else 30)
    budget = args.budget or (600 if args.quick else 2000)
    ks = [int(k) for k in args.k.split(",")]
    dev = cm.resolve(args.device)
    store = get_store(args)
    ids, is_test = store.read_split()
    train_ids = np.sort(ids[~is_test])
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for band in args.bands.split(","):
        lo, hi = BANDS[band]
        seed_pos = args.seed_positives_rare if band == "openimages" else args.seed_positives
        # eligible: >= 1 test positive (else AP is undefined and would silently drop out of the means) and
        # >= 10 train positives (enough beyond the seed set to find)
        min_train = max(10, seed_pos + 3)
        n_elig = len(eligible_concepts(store, (lo, hi), min_train, train_ids, min_test_positives=1))
        print(
            f"{band}: {n_elig} eligible concepts (>= {min_train} train and >= 1 test positives)", flush=True
        )
        concepts = sample_concepts(
            store, n_concepts, (lo, hi), args.seed, min_train, train_ids, min_test_positives=1
        )
        names = store.concept_names()
        print(
            f"\n== {band} ({lo:.2%}-{hi:.2%}): {len(concepts)} concepts: "
            f"{', '.join(str(names.get(c, c)) for c in concepts[:8])}{' ...' if len(concepts) > 8 else ''}",
            flush=True,
        )
        for k, cw in [(k, cw) for k in ks for cw in args.class_weights.split(",")]:
            out = args.runs_dir / (f"{band}_k{k}" if cw == "none" else f"{band}_k{k}_{cw}")
            if out.exists():
                shutil.rmtree(out)
            argv_run = [
                "run",
                str(store.path),
                "--out",
                str(out),
                "--concepts",
                ",".join(map(str, concepts)),
                "--strategies",
                args.strategies,
                "--modes",
                args.modes,
                "--k",
                str(k),
                "--batch",
                str(args.batch),
                "--budget",
                str(budget),
                "--seed-positives",
                str(seed_pos),
                "--seed-negatives",
                str(args.seed_negatives),
                "--seed",
                str(args.seed),
                "--device",
                dev.kind,
                "--class-weight",
                cw,
                "--search",
                args.search,
                "--expand",
                args.expand,
                "--quiet",
            ]
            if not args.no_full_supervision:
                argv_run.append("--full-supervision")
            print(f"\n$ seals-gpu {' '.join(argv_run)}", flush=True)
            t0 = time.perf_counter()
            rc = seals_cli(argv_run)
            wall = time.perf_counter() - t0
            if rc not in (0, None):
                raise SystemExit(f"seals-gpu run failed with exit code {rc}")
            table = load_metrics(out)
            summary = summarize(table)
            plots = make_plots(table, out / "plots")
            print(
                f"[{band}, k={k}: {wall:.0f}s; plots: {', '.join(str(q) for q in plots if q.suffix == '.png')}]",
                flush=True,
            )
            runs.append(
                {
                    "band": band,
                    "k": k,
                    "class_weight": cw,
                    "concepts": concepts,
                    "run_dir": out,
                    "wall_s": wall,
                    "seed_positives": seed_pos,
                    "table": format_table(summary),
                }
            )
            for r in summary:
                rows.append({"band": band, "k": k, "class_weight": cw, **r})
    checks = []
    for r in rows:
        if r.get("kind") == "gap" and r["strategy"] in ("maxent", "mlp", "id"):
            ap_ok = r["test_ap_gap"] is not None and r["test_ap_gap"] >= -TARGET_AP_GAP
            rec_ok = r["recall_gap"] is not None and r["recall_gap"] >= -TARGET_RECALL_GAP
            checks.append(
                {
                    "band": r["band"],
                    "k": r["k"],
                    "class_weight": r["class_weight"],
                    "strategy": r["strategy"],
                    "ap_gap": r["test_ap_gap"],
                    "recall_gap": r["recall_gap"],
                    "pool_fraction": r["pool_fraction"],
                    "select_speedup": r["select_speedup"],
                    "met": ap_ok and rec_ok,
                }
            )
    print()
    for run in runs:
        print(
            f"--- {run['band']}, k={run['k']}, class weight {run['class_weight']} "
            f"({len(run['concepts'])} concepts, budget {budget}) ---"
        )
        print(run["table"])
    print()
    cm.print_table(
        checks,
        [
            "band",
            "k",
            "class_weight",
            "strategy",
            "ap_gap",
            "recall_gap",
            "pool_fraction",
            "select_speedup",
            "met",
        ],
        title=f"SEALS - All at the final budget (target: gaps >= -{TARGET_AP_GAP} AP and "
        f">= -{TARGET_RECALL_GAP} recall)",
    )
    cm.write_json(
        args.out, NAME, args, rows, runs=runs, checks=checks, budget=budget, concepts_per_band=n_concepts
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
