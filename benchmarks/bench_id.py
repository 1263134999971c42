"""Information density (ID) at scale: the naive pairwise ID-All the paper ran (four days on OpenImages) against the
exact linear form and ID-SEALS.

ID scores ``entropy(p) * max(mean_r x.r, 0) ** beta`` with the reference set r = the unlabeled candidates.
Three forms, one concept, |L| = 500 labels (25 positives), b = 100, beta = 1, on N x 128 synthetic clustered unit
vectors:

- ``id-all pairwise``  ``seals_gpu.strategies.pairwise_density`` (blocked X @ R.T, float64 sums) over all
  candidates, then ``select_topk``: O(|U|^2 d). Where it would take too long (|U|^2 above ``--pairwise-cap``)
  it is timed on a subsample of the rows (against the full reference set) and scaled by |U| / rows: the cost
  is exactly linear in the rows scored. Column ``how`` says which;
- ``id-all linear``    ``LocalBackend.score_all`` with kind ``id`` and ref = the candidates' mean
  (``x . mean(R)``, what the driver runs): O(|U| d);
- ``id-seals``         ``LocalBackend.score_pool`` with kind ``id`` over the candidate pool P = N_100(L) - L and
  ref = the pool's mean: O(|P| d).

``round_s`` = the batched logistic fit (``fit_logistic``, shared by every form) + the selection; SEALS's kNN
expansion is measured in bench_latency. Where the pairwise form finishes, its selection is compared with the
linear form's: they are the same mathematics, so the ids must agree apart from float ties (an id in one
selection and not the other must score within 1e-6 relative of the b-th score in float64).

    python benchmarks/bench_id.py --quick        # |U| = 2e4 (pairwise in full) and 1e5 (pairwise extrapolated)
    python benchmarks/bench_id.py                # |U| = 1e5 (pairwise in full, ~3 min) and 1e6 (extrapolated)
"""

from __future__ import annotations

import time
from typing import Any

import _common as cm
import numpy as np
import torch
from bench_latency import N_LABELED, labeled_sets

from seals_gpu.backend import LocalBackend
from seals_gpu.index import IndexShard
from seals_gpu.learner import fit_logistic
from seals_gpu.pool import CandidatePool, isin_sorted
from seals_gpu.strategies import binary_entropy, pairwise_density, select_topk

NAME = "id"
D = 128
K = 100
B = 100
BETA = 1.0


def id_scores64(X: np.ndarray, w: np.ndarray, b: float, ref_mean: np.ndarray) -> np.ndarray:
    """Float64 ID scores with the linear density (the tie-checking oracle)."""
    x = X.astype(np.float64)
    p = torch.sigmoid(torch.from_numpy(x @ w + b))
    dens = torch.from_numpy(x @ ref_mean).clamp(min=0.0) ** BETA
    return (binary_entropy(p) * dens).numpy()


def run_size(n: int, X: np.ndarray, cluster: np.ndarray, args, choice) -> list[dict[str, Any]]:
    dev = choice.torch_device
    reps = args.repeats or 3
    ids = np.arange(n, dtype=np.int64)
    Xn = X[:n]
    index = cm.local_index(ids, Xn, IndexShard(ids, Xn, kind="flat"))
    backend = LocalBackend(index, choice)
    lab_ids, lab_y = labeled_sets(cluster, n, 1, args.seed)[0]
    cand = ids[~isin_sorted(ids, lab_ids)]
    Xc = np.ascontiguousarray(Xn[cand])
    Xl = torch.from_numpy(Xn[lab_ids][None]).to(dev)
    yl = torch.from_numpy(lab_y[None].astype(np.float32)).to(dev)
    mask = torch.ones(1, N_LABELED, dtype=torch.bool, device=dev)
    model = fit_logistic(Xl, yl, mask)
    W, bias = model.W, model.b
    kind = torch.full((1,), 2, dtype=torch.int8, device=dev)
    cand_sum = Xc.astype(np.float64).sum(axis=0)
    ref_all = torch.from_numpy((cand_sum / cand.size)[None].astype(np.float32)).to(dev)
    # SEALS pool: the exact kNN of the labeled set
    _, nbrs = backend.search(Xn[lab_ids], K, exclude_ids=lab_ids)
    pool = CandidatePool.empty()
    pool.grow(nbrs.ravel(), lab_ids)
    ref_pool = torch.from_numpy((Xn[pool.ids].astype(np.float64).mean(axis=0))[None].astype(np.float32)).to(
        dev
    )
    offsets = np.array([0, len(pool)], dtype=np.int64)

    w64 = W[0].double().cpu().numpy()
    b64 = float(bias[0].double().cpu())
    Xc_t = torch.from_numpy(Xc).to(dev)
    cand_t = torch.from_numpy(cand).to(dev)

    def pairwise(rows: int | None = None):
        Xs = Xc_t if rows is None else Xc_t[:rows]
        dens = pairwise_density(Xs, Xc_t)
        p = torch.sigmoid(Xs.double() @ W[0].double() + bias[0].double())
        s = binary_entropy(p) * dens.double().clamp(min=0.0) ** BETA
        return select_topk(s, cand_t if rows is None else cand_t[:rows], B), dens

    fns = {
        "fit": lambda: fit_logistic(Xl, yl, mask),
        "linear": lambda: backend.score_all([lab_ids], W, bias, kind, ref_all, BETA, B),
        "seals": lambda: backend.score_pool(pool.ids, offsets, W, bias, kind, ref_pool, BETA, B),
    }
    full = cand.size**2 <= args.pairwise_cap
    rows_pw = cand.size if full else int(max(256, args.pairwise_cap // cand.size))
    t = cm.interleaved(fns, repeats=reps, device=dev, max_seconds=60)
    # the quadratic form alone: no warm-up run, and no second run once a minute is spent
    t["pairwise"] = cm.timed(
        (lambda: pairwise()) if full else (lambda: pairwise(rows_pw)),
        repeats=reps,
        warmup=0,
        device=dev,
        max_seconds=60,
    )
    med = {k: v["median"] for k, v in t.items()}
    t_pair = med["pairwise"] * (cand.size / rows_pw)
    how = (
        "measured"
        if full
        else f"timed on {rows_pw:,} of {cand.size:,} rows, scaled x{cand.size / rows_pw:.0f}"
    )

    # agreement of the pairwise and linear forms
    sel_lin = t["linear"]["result"].ids[0][: int(t["linear"]["result"].counts[0])].cpu().numpy()
    _, dens_pw = t["pairwise"]["result"]
    m = dens_pw.shape[0]
    dens_lin = Xc[:m].astype(np.float64) @ (cand_sum / cand.size)
    max_dens_diff = float(np.abs(dens_pw.double().cpu().numpy() - dens_lin).max())
    agree = None
    n_diff = n_not_tie = None
    if full:
        sel_pw = t["pairwise"]["result"][0].cpu().numpy()
        s64 = id_scores64(Xc, w64, b64, cand_sum / cand.size)
        pos = {int(i): j for j, i in enumerate(cand.tolist())}
        bth = np.sort(s64)[-B]
        diff = np.setxor1d(sel_pw, sel_lin)
        n_diff = int(diff.size)
        n_not_tie = int(sum(abs(s64[pos[int(i)]] - bth) > 1e-6 * abs(bth) + 1e-12 for i in diff))
        agree = n_not_tie == 0
    common = {"n": n, "candidates": int(cand.size), "pool": len(pool), "fit_s": med["fit"]}
    rows = [
        {
            **common,
            "form": "id-all pairwise",
            "select_s": t_pair,
            "round_s": med["fit"] + t_pair,
            "how": how,
            "selection_agrees": agree,
            "ids_differing": n_diff,
            "differing_not_ties": n_not_tie,
            "max_density_diff": max_dens_diff,
        },
        {
            **common,
            "form": "id-all linear",
            "select_s": med["linear"],
            "round_s": med["fit"] + med["linear"],
            "how": "measured",
        },
        {
            **common,
            "form": "id-seals",
            "select_s": med["seals"],
            "round_s": med["fit"] + med["seals"],
            "how": "measured",
        },
    ]
    for r in rows:
        r["x_vs_pairwise"] = t_pair / r["select_s"]
        print(
            f"  |U|={cm.fmt_n(n)} {r['form']:<16} select {r['select_s']:.3f}s round {r['round_s']:.3f}s "
            f"({r['how']})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = cm.make_parser(NAME, __doc__)
    p.add_argument(
        "--sizes",
        type=lambda s: [int(float(x)) for x in s.split(",")],
        default=None,
        help="|U| (default 1e5,1e6; --quick 2e4,1e5)",
    )
    p.add_argument(
        "--pairwise-cap",
        type=float,
        default=None,
        help="largest |U|^2 the pairwise form runs in full (default 1.1e10; --quick 5e8)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = cm.parse(p, argv)
    sizes = sorted(args.sizes or ([20_000, 100_000] if args.quick else [100_000, 1_000_000]))
    if args.pairwise_cap is None:
        args.pairwise_cap = 5e8 if args.quick else 1.1e10
    choice = cm.resolve(args.device)
    t0 = time.perf_counter()
    X, cluster = cm.clustered_vectors(sizes[-1], D, seed=args.seed)
    print(f"generated {sizes[-1]:,} x {D} in {time.perf_counter() - t0:.1f}s", flush=True)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        rows.extend(run_size(n, X, cluster, args, choice))
    # the pairwise form at OpenImages-like scale, by its quadratic cost (a model, not a measurement)
    big = rows[-3]
    for n_big in (10_000_000,):
        f = (n_big / big["candidates"]) ** 2
        rows.append(
            {
                "n": n_big,
                "candidates": None,
                "pool": None,
                "fit_s": None,
                "form": "id-all pairwise",
                "select_s": big["select_s"] * f,
                "round_s": None,
                "how": f"model: {cm.fmt_n(big['n'])} time x (|U| ratio)^2",
                "x_vs_pairwise": None,
            }
        )
    cols = [
        "n",
        "form",
        "candidates",
        "pool",
        "fit_s",
        "select_s",
        "round_s",
        "x_vs_pairwise",
        "how",
        "selection_agrees",
        "ids_differing",
        "differing_not_ties",
        "max_density_diff",
    ]
    print()
    cm.print_table(
        rows,
        cols,
        title="ID per round, one concept (seconds, medians; x_vs_pairwise = pairwise select "
        "time over this form's)",
    )
    checks = [
        {
            "check": f"pairwise and linear selections agree at {cm.fmt_n(r['n'])}",
            "value": r["ids_differing"],
            "met": r["selection_agrees"],
        }
        for r in rows
        if r["form"] == "id-all pairwise" and r.get("selection_agrees") is not None
    ]
    if checks:
        print()
        cm.print_table(checks, title="checks")
    cm.write_json(args.out, NAME, args, rows, checks=checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
