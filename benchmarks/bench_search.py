"""The run's neighbour search against FAISS's own, same data, same threads, measured side by side.

Rows: the train split of the WordNet store (65,767 x 384 MiniLM; ``--wordnet-parquet``) or, without it,
synthetic clustered unit vectors (``--n``, ``--dim``). Queries: a round's worth of train rows (``--queries``,
default 2,000; each excludes itself), k = 100.

- ``exact``  ``seals_gpu.index.subset.FlatSubset`` (FAISS IndexFlatIP GEMM + float64 re-score of boundary
  near-ties) vs ``faiss.IndexFlatIP.search`` alone; recall of ours vs float64 brute force must be 1.
- ``ivf``    ``IvfSubset`` (k-means lists, list-major GEMM, nprobe calibrated to recall@100 >= 0.95) vs
  ``faiss.IndexIVFFlat`` with the same centroids and the same nprobe; recall of both against exact.
- ``graph``  every train row's 100 neighbours (what ``index graph`` and the planner's up-front mode compute):
  ``IvfSubset`` and ``FlatSubset`` vs ``IndexFlatIP``, on ``--graph-rows`` rows (default all; --quick 8,192).

Times are medians of interleaved repeats; builds are reported separately. Target: each of ours no slower
than its FAISS counterpart (``speedup >= 1``).

    python benchmarks/bench_search.py --quick
    python benchmarks/bench_search.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _common as cm
import numpy as np

NAME = "search"


def _rows(args) -> tuple[np.ndarray, np.ndarray, str]:
    pq_path = Path(args.wordnet_parquet)
    if pq_path.exists() and not args.synthetic:
        import pyarrow.parquet as pq

        from seals_gpu.store import hash_test_mask

        t = pq.read_table(pq_path, columns=["id", "embedding"])
        ids = t.column("id").to_numpy()
        x = np.asarray(t.column("embedding").combine_chunks().values, dtype=np.float32).reshape(ids.size, -1)
        keep = ~hash_test_mask(ids)
        o = np.argsort(ids[keep])
        return ids[keep][o], np.ascontiguousarray(x[keep][o]), f"WordNet train split ({pq_path.name})"
    x, _ = cm.clustered_vectors(args.n, args.dim, seed=0)
    return np.arange(args.n, dtype=np.int64), x, f"synthetic clustered {args.n:,} x {args.dim}"


def _recall(I: np.ndarray, I0: np.ndarray) -> float:
    return float(
        np.mean([np.intersect1d(a[a >= 0], b[b >= 0]).size / max(1, (b >= 0).sum()) for a, b in zip(I, I0)])
    )


def main(argv: list[str] | None = None) -> int:
    import faiss

    from seals_gpu.index.subset import FlatSubset, IvfSubset

    p = cm.make_parser(NAME, __doc__)
    p.add_argument(
        "--wordnet-parquet",
        default=str(cm.ROOT.parent / "shared" / "data" / "wordnet_noun_minilm.parquet"),
    )
    p.add_argument("--synthetic", action="store_true", help="use synthetic rows even if WordNet is there")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--graph-rows", type=int, default=None)
    args = cm.parse(p, argv)
    cm.resolve("cpu")
    reps = args.repeats or (2 if args.quick else 3)
    ids, x, what = _rows(args)
    n, d = x.shape
    k = args.k
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(n, size=min(args.queries, n), replace=False))
    q, qid = x[pick], ids[pick]
    print(f"rows: {what}; {q.shape[0]:,} queries, k={k}", flush=True)

    def faiss_knn(index: Any, xq: np.ndarray, qids: np.ndarray) -> np.ndarray:
        _, I = index.search(xq, k + 1)
        I = np.where(I >= 0, ids[np.maximum(I, 0)], -1)
        out = np.full((xq.shape[0], k), -1, np.int64)
        for r in range(xq.shape[0]):
            row = I[r][I[r] != qids[r]][:k]
            out[r, : row.size] = row
        return out

    flat = FlatSubset(ids, x)
    fi = faiss.IndexFlatIP(d)
    fi.add(x)
    _, I_exact = flat.search(q, k, exclude_ids=qid)
    sims = q.astype(np.float64) @ x.astype(np.float64).T
    sims[np.arange(q.shape[0]), pick] = -np.inf
    I_brute = ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]
    del sims

    t_build = cm.timed(lambda: IvfSubset.train(ids, x), repeats=1, warmup=0)
    ivf = t_build["result"]
    t_cal = cm.timed(lambda: ivf.calibrate_nprobe(k, target=0.95), repeats=1, warmup=0)
    fivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, ivf.nlist, faiss.METRIC_INNER_PRODUCT)
    fivf.quantizer.add(ivf.centroids.astype(np.float32))
    fivf.is_trained = True
    fivf.add(x)
    fivf.nprobe = ivf.nprobe
    t = cm.interleaved(
        {
            "ours_exact": lambda: flat.search(q, k, exclude_ids=qid),
            "faiss_exact": lambda: fi.search(q, k + 1),
            "ours_ivf": lambda: ivf.search(q, k, exclude_ids=qid),
            "faiss_ivf": lambda: fivf.search(q, k + 1),
        },
        repeats=reps,
    )
    rows: list[dict[str, Any]] = [
        {
            "case": "exact",
            "ours_s": t["ours_exact"]["median"],
            "faiss_s": t["faiss_exact"]["median"],
            "speedup": t["faiss_exact"]["median"] / t["ours_exact"]["median"],
            "ours_recall": _recall(I_exact, I_brute),
            "faiss_recall": _recall(faiss_knn(fi, q, qid), I_brute),
            "params": "",
        },
        {
            "case": "ivf",
            "ours_s": t["ours_ivf"]["median"],
            "faiss_s": t["faiss_ivf"]["median"],
            "speedup": t["faiss_ivf"]["median"] / t["ours_ivf"]["median"],
            "ours_recall": _recall(ivf.search(q, k, exclude_ids=qid)[1], I_brute),
            "faiss_recall": _recall(faiss_knn(fivf, q, qid), I_brute),
            "params": f"nlist {ivf.nlist}, nprobe {ivf.nprobe} (build {t_build['median']:.2f} s + calibration "
            f"{t_cal['median']:.2f} s; calibrated recall {ivf.recall:.3f})",
        },
    ]
    g_rows = args.graph_rows or (8192 if args.quick else n)
    gq, gid = x[:g_rows], ids[:g_rows]
    tg = cm.interleaved(
        {
            "ours_ivf_graph": lambda: ivf.search(gq, k, exclude_ids=gid),
            "ours_flat_graph": lambda: flat.search(gq, k, exclude_ids=gid),
            "faiss_flat_graph": lambda: fi.search(gq, k + 1),
        },
        repeats=1,
        warmup=0,
    )
    for case in ("ivf", "flat"):
        rows.append(
            {
                "case": f"graph ({case}, {g_rows:,} rows)",
                "ours_s": tg[f"ours_{case}_graph"]["median"],
                "faiss_s": tg["faiss_flat_graph"]["median"],
                "speedup": tg["faiss_flat_graph"]["median"] / tg[f"ours_{case}_graph"]["median"],
                "ours_recall": None,
                "faiss_recall": None,
                "params": "vs FAISS exact IndexFlatIP",
            }
        )
    import os

    load = os.getloadavg()
    cm.print_table(
        rows,
        ["case", "ours_s", "faiss_s", "speedup", "ours_recall", "faiss_recall", "params"],
        title=f"neighbour search vs FAISS (seconds, medians; {what}; load {load[0]:.2f})",
    )
    cm.write_json(args.out, NAME, args, rows, target={"speedup": 1.0}, load=load, data=what)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
