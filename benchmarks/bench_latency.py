"""Selection latency against pool size: All vs SEALS (exact index, IVF-PQ, kNN graph), 1 and 100 concepts.

One round at a fixed labeled-set size (|L| = 500 per concept: 25 positives from the concept's cluster and
475 random negatives), split like the driver's round:

- ``fit``     ``learner.fit_logistic`` on (C, 500, d), warm-started from the fit on the first 400 labels;
- ``select``  score + top-b (b = 100): SEALS ``LocalBackend.score_pool`` over each concept's candidate pool
  P = N_k(L) - L (k = 100); All ``LocalBackend.score_all`` streaming every row of U;
- ``search``  SEALS only: the kNN of the b newly selected ids per concept (k = 100) plus the pool update
  (``CandidatePool.grow``), by the exact flat index (``IndexShard`` kind flat), by IVF-PQ (kind ivfpq with
  exact re-rank) or by a precomputed kNN graph (``seals_gpu.graph.KnnGraph.lookup``).

The data are synthetic clustered unit vectors (dim 128, ``_common.clustered_vectors``) generated once for the
largest |U|; smaller |U| are prefixes of the same rows, and the IVF-PQ index (trained once) grows by adding the
next rows. The pools, and the kNN graph rows, come from the IVF-PQ index's own search (as ``graph.py`` stores
for an IVF-PQ index); the graph holds rows only for the ids a round looks up (labeled and newly selected ids),
because building a full 1e7-row graph is a one-off build cost, not a per-round one. Exact search at large |U|
is timed on a subset of the queries and scaled linearly (column ``note``).

``ideal`` is |U| / |P| (P: mean candidate pool per concept); ``sel_x`` is All's select time over this method's,
``round_x`` the same for the whole round. Targets (2 cores): SEALS-with-graph round time within 1.5x from the
smallest to the largest |U|, and ``sel_x`` at least ``ideal / 2``.

    python benchmarks/bench_latency.py --quick              # |U| = 1e5, 1e6
    python benchmarks/bench_latency.py                      # |U| = 1e5, 1e6, 1e7 (5 GB of vectors)
"""

from __future__ import annotations

import time
from typing import Any

import _common as cm
import faiss
import numpy as np
import torch

from seals_gpu.backend import LocalBackend
from seals_gpu.index import IndexShard, SearchParams
from seals_gpu.index.shard import train_ivfpq
from seals_gpu.learner import fit_logistic
from seals_gpu.pool import CandidatePool, to_csr
from seals_gpu.scoring import score_candidates
from seals_gpu.strategies import select_topk_segmented

NAME = "latency"
D = 128
K = 100
B = 100
N_LABELED = 500
N_POS = 25
EXACT_WORK_CAP = 2e8  # queries x rows searched exactly per timed call; above it, time a subset and scale


def labeled_sets(
    cluster: np.ndarray, n_pool: int, n_concepts: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per concept: sorted labeled ids (within the first ``n_pool`` rows) and their labels (cluster c = positive)."""
    rng = np.random.default_rng([seed, 7])
    cl = cluster[:n_pool]
    sizes = np.bincount(cl, minlength=int(cluster.max()) + 1)
    big = np.argsort(-sizes, kind="stable")[: min(n_concepts, int((sizes > 0).sum()))]
    out = []
    for i in range(n_concepts):
        c = big[i % big.size]  # more concepts than clusters: concepts share clusters (their draws differ)
        members = np.flatnonzero(cl == c)
        pos = rng.choice(members, size=min(N_POS, members.size), replace=False)
        rest = np.setdiff1d(np.arange(n_pool), pos)
        neg = rng.choice(rest, size=N_LABELED - pos.size, replace=False)
        ids = np.sort(np.concatenate([pos, neg]).astype(np.int64))
        out.append((ids, cl[ids] == c))
    return out


def fit_inputs(X: np.ndarray, labs: list[tuple[np.ndarray, np.ndarray]], dev):
    """Padded (C, 500, d) labeled rows, labels, mask, and the warm start: the fit on the first 400 labels."""
    C = len(labs)
    Xl = torch.from_numpy(np.stack([X[ids] for ids, _ in labs])).to(dev)
    y = torch.from_numpy(np.stack([lab for _, lab in labs]).astype(np.float32)).to(dev)
    mask = torch.ones(C, N_LABELED, dtype=torch.bool, device=dev)
    m400 = mask.clone()
    m400[:, 400:] = False
    return Xl, y, mask, fit_logistic(Xl, y, m400)


def neighbor_rows(index, X: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN of ``ids`` (themselves excluded) in blocks."""
    Ds, Is = [], []
    for s in range(0, ids.size, 8192):
        q = ids[s : s + 8192]
        Dq, Iq = index.search(X[q], k, exclude_ids=q)
        Ds.append(Dq)
        Is.append(Iq)
    return np.concatenate(Ds), np.concatenate(Is)


def grow_all(
    pools: list[CandidatePool], labs, new: list[np.ndarray], rows_of: dict[int, int], nbrs: np.ndarray
):
    """The driver's expand step: P_c = P_c U N(new_c) - L_c, for every concept."""
    for c, pool in enumerate(pools):
        nb = nbrs[[rows_of[i] for i in new[c].tolist()]].ravel() if new[c].size else np.empty(0, np.int64)
        pool.grow(nb, np.union1d(labs[c][0], new[c]))


def run_size(
    n: int, X: np.ndarray, cluster: np.ndarray, ivf: faiss.Index, labs_all, args, choice
) -> list[dict[str, Any]]:
    dev = choice.torch_device
    ids = np.arange(n, dtype=np.int64)
    Xn = X[:n]
    params = SearchParams(nprobe=args.nprobe, rerank=args.rerank)
    flat_idx = cm.local_index(ids, Xn, IndexShard(ids, Xn, kind="flat"))
    ivf_idx = cm.local_index(
        ids,
        Xn,
        IndexShard(ids, Xn, kind="ivfpq", faiss_index=ivf, params=params),
        {"nlist": args.nlist, "nprobe": args.nprobe, "rerank": args.rerank},
    )
    backend = LocalBackend(flat_idx, choice)
    ivf_backend = LocalBackend(ivf_idx, choice)
    t0 = time.perf_counter()
    lab_union = np.unique(np.concatenate([lab[0] for lab in labs_all]))
    D_lab, I_lab = neighbor_rows(ivf_idx, Xn, lab_union, K)
    print(
        f"  |U|={cm.fmt_n(n)}: kNN table of {lab_union.size:,} labeled ids (IVF-PQ) in "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    lab_rows = {int(i): j for j, i in enumerate(lab_union.tolist())}
    base_pools = []
    for lab_ids, _ in labs_all:
        p = CandidatePool.empty()
        p.grow(I_lab[[lab_rows[i] for i in lab_ids.tolist()]].ravel(), lab_ids)
        base_pools.append(p)

    rows: list[dict[str, Any]] = []
    for C in args.concepts:
        rows.extend(
            measure(
                C,
                n,
                Xn,
                labs_all,
                base_pools,
                (lab_union, D_lab, I_lab),
                (backend, ivf_backend, ivf_idx),
                args,
                dev,
            )
        )
    return rows


def measure(
    C: int, n: int, Xn: np.ndarray, labs_all, base_pools: list[CandidatePool], lab_table, indexes, args, dev
) -> list[dict[str, Any]]:
    """One round for the first ``C`` concepts at |U| = n, every method; returns 4 rows."""
    lab_union, D_lab, I_lab = lab_table
    backend, ivf_backend, ivf_idx = indexes
    rows: list[dict[str, Any]] = []
    labs = labs_all[:C]
    reps = args.repeats or (2 if args.quick else (9 if C == 1 else 3))  # 1 concept: ms-scale, noisier
    Xl, y, mask, init = fit_inputs(Xn, labs, dev)
    model = fit_logistic(Xl, y, mask, init=init)
    W, bias = model.W, model.b
    kind = torch.zeros(C, dtype=torch.int8, device=dev)  # maxent
    pool_sizes = np.array([len(p) for p in base_pools[:C]])
    pid, off = to_csr([p.ids for p in base_pools[:C]])
    rows_t = torch.from_numpy(backend.index.shards[0].positions(pid)).to(dev)
    pid_t, off_t = torch.from_numpy(pid).to(dev), torch.from_numpy(off).to(dev)
    emb = backend._shard_emb(0)

    def seals_select(C=C, W=W, bias=bias, kind=kind):
        pid, off = to_csr([p.ids for p in base_pools[:C]])
        return backend.score_pool(pid, off, W, bias, kind, None, 1.0, B)

    def seals_select_alt(W=W, bias=bias, kind=kind, rows_t=rows_t, pid_t=pid_t, off_t=off_t):
        # the same scores and selections from scoring.score_candidates + strategies.select_topk_segmented
        sc = score_candidates(emb, rows_t, off_t, W, bias, kind, None, 1.0)
        return select_topk_segmented(sc, pid_t, off_t, B)

    def all_select(W=W, bias=bias, kind=kind, labs=labs):
        return backend.score_all([lab[0] for lab in labs], W, bias, kind, None, 1.0, B)

    top = seals_select()
    new = [top.ids[j][: int(top.counts[j])].cpu().numpy().astype(np.int64) for j in range(C)]
    alt = seals_select_alt()
    same = all(
        np.array_equal(np.sort(new[j]), np.sort(alt[0][j][: int(alt[2][j])].cpu().numpy())) for j in range(C)
    )
    new_union = np.unique(np.concatenate(new))
    q = Xn[new_union]
    D_new, I_new = neighbor_rows(ivf_idx, Xn, new_union, K)  # also the graph's rows for these ids
    graph = cm.in_memory_graph(
        np.concatenate([lab_union, new_union]),
        np.concatenate([D_lab, D_new]),
        np.concatenate([I_lab, I_new]),
        K,
    )
    rows_new = {int(i): j for j, i in enumerate(new_union.tolist())}
    pools: list[CandidatePool] = []

    def fresh(C=C):
        pools[:] = [CandidatePool(p.ids.copy()) for p in base_pools[:C]]

    def expand(search, labs=labs, new=new, rows_new=rows_new):
        grow_all(pools, labs, new, rows_new, search()[1])

    # the exact index: all queries when affordable, else a subset, scaled linearly in queries
    nq = new_union.size
    nq_t = int(min(nq, max(16, EXACT_WORK_CAP // n)))
    t = cm.interleaved(
        {
            "fit": lambda Xl=Xl, y=y, mask=mask, init=init: fit_logistic(Xl, y, mask, init=init),
            "all": all_select,
            "seals": seals_select,
            "seals_alt": seals_select_alt,
            "graph": lambda: expand(lambda: graph.lookup(new_union, K)),
            "ivf": lambda: expand(lambda: ivf_backend.search(q, K, exclude_ids=new_union)),
            "exact": lambda: backend.search(q[:nq_t], K, exclude_ids=new_union[:nq_t]),
            "grow": lambda I_new=I_new, labs=labs, new=new, rows_new=rows_new: grow_all(
                pools, labs, new, rows_new, I_new
            ),
        },
        repeats=reps,
        device=dev,
        max_seconds=20 if args.quick else 45,
        setups={"graph": fresh, "ivf": fresh, "grow": fresh},
    )
    med = {k: v["median"] for k, v in t.items()}
    exact_search = med["exact"] * nq / nq_t + med["grow"]
    note_ex = "" if nq_t == nq else f"search timed on {nq_t:,} of {nq:,} queries, scaled"
    P = float(pool_sizes.mean())
    ideal = n / P
    t_fit = med["fit"]
    all_round = t_fit + med["all"]
    common = {"n": n, "concepts": C, "pool_mean": P, "ideal": ideal}
    rows.append(
        {
            **common,
            "method": "all",
            "fit_s": t_fit,
            "search_s": 0.0,
            "select_s": med["all"],
            "round_s": all_round,
            "sel_x": 1.0,
            "round_x": 1.0,
            "select_alt_s": None,
            "note": "",
        }
    )
    for name, t_search, note in (
        ("seals-exact", exact_search, note_ex),
        ("seals-ivfpq", med["ivf"], f"nlist {args.nlist}, nprobe {args.nprobe}, rerank {args.rerank}"),
        ("seals-graph", med["graph"], "graph rows for looked-up ids only"),
    ):
        r = t_fit + t_search + med["seals"]
        rows.append(
            {
                **common,
                "method": name,
                "fit_s": t_fit,
                "search_s": t_search,
                "select_s": med["seals"],
                "round_s": r,
                "sel_x": med["all"] / med["seals"],
                "round_x": all_round / r,
                "select_alt_s": med["seals_alt"],
                "sel_x_alt": med["all"] / med["seals_alt"],
                "alt_same_selection": same,
                "note": note,
            }
        )
    for r in rows[-4:]:
        print(
            f"  |U|={cm.fmt_n(n)} C={C} {r['method']:<12} fit {r['fit_s']:.3f}s search {r['search_s']:.3f}s "
            f"select {r['select_s']:.3f}s round {r['round_s']:.3f}s (|P| {P:,.0f}; alt select "
            f"{med['seals_alt']:.3f}s, same selection: {same})",
            flush=True,
        )
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    sizes = sorted({r["n"] for r in rows})
    lo, hi = sizes[0], sizes[-1]
    for C in sorted({r["concepts"] for r in rows}):

        def get(n, m, C=C):
            return next(r for r in rows if r["n"] == n and r["concepts"] == C and r["method"] == m)

        for m in ("all", "seals-exact", "seals-ivfpq", "seals-graph"):
            growth = get(hi, m)["round_s"] / get(lo, m)["round_s"]
            out.append(
                {
                    "concepts": C,
                    "check": f"{m} round growth {cm.fmt_n(lo)}->{cm.fmt_n(hi)}",
                    "value": growth,
                    "target": "<= 1.5" if m == "seals-graph" else "",
                    "met": (growth <= 1.5) if m == "seals-graph" else None,
                }
            )
        for n in sizes:
            g = get(n, "seals-graph")
            out.append(
                {
                    "concepts": C,
                    "check": f"select speed-up at {cm.fmt_n(n)} (ideal {g['ideal']:.1f})",
                    "value": g["sel_x"],
                    "target": f">= {g['ideal'] / 2:.1f}",
                    "met": g["sel_x"] >= g["ideal"] / 2,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = cm.make_parser(NAME, __doc__)
    p.add_argument(
        "--sizes",
        type=lambda s: [int(float(x)) for x in s.split(",")],
        default=None,
        help="comma-separated |U| (default 1e5,1e6,1e7; --quick 1e5,1e6)",
    )
    p.add_argument("--concepts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100])
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--rerank", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = cm.parse(p, argv)
    sizes = sorted(args.sizes or ([100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000]))
    choice = cm.resolve(args.device)
    t0 = time.perf_counter()
    X, cluster = cm.clustered_vectors(sizes[-1], D, seed=args.seed)
    print(
        f"generated {sizes[-1]:,} x {D} clustered unit vectors in {time.perf_counter() - t0:.1f}s", flush=True
    )
    labs = labeled_sets(cluster, sizes[0], max(args.concepts), args.seed)
    t0 = time.perf_counter()
    rng = np.random.default_rng([args.seed, 3])
    sample = X[np.sort(rng.choice(sizes[0], size=min(sizes[0], max(65_536, 64 * args.nlist)), replace=False))]
    ivf = train_ivfpq(sample, nlist=args.nlist, pq_m=32, seed=args.seed)
    print(f"trained IVF-PQ (nlist {args.nlist}, PQ32) in {time.perf_counter() - t0:.1f}s", flush=True)
    rows: list[dict[str, Any]] = []
    added = 0
    for n in sizes:
        t0 = time.perf_counter()
        for s in range(added, n, 262_144):
            e = min(n, s + 262_144)
            ivf.add_with_ids(X[s:e], np.arange(s, e, dtype=np.int64))
        added = n
        print(
            f"|U|={cm.fmt_n(n)}: IVF-PQ holds {ivf.ntotal:,} rows (+{time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        rows.extend(run_size(n, X, cluster, ivf, labs, args, choice))
    cols = [
        "n",
        "concepts",
        "method",
        "pool_mean",
        "fit_s",
        "search_s",
        "select_s",
        "round_s",
        "ideal",
        "sel_x",
        "round_x",
        "select_alt_s",
        "sel_x_alt",
        "note",
    ]
    print()
    cm.print_table(rows, cols, title="per-round latency (seconds, medians)")
    checks = summarize(rows)
    print()
    cm.print_table(checks, ["concepts", "check", "value", "target", "met"], title="targets")
    cm.write_json(args.out, NAME, args, rows, checks=checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
