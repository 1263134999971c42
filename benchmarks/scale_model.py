"""Scale model: per-round latency and a full 450-concept, 2,000-label sweep at |U| = 1e8 and 1e9, predicted from
measured per-shard throughputs, for a given number of shards and devices (``--shards``, ``--gpus``).

Rates are read from the JSON the other benchmarks wrote (``benchmarks/out/NAME_full.json`` if present, else
``NAME.json``), or measured here on small problems when a file is missing. They are the rates of the machine
that measured them (here: CPU rates, 2 cores); GPU rates are pending (no GPU this session): rerun the
benchmarks on a GPU machine and point ``--*-json`` at their output, or pass ``--rates-json`` with your own.

The model (C units, b = 100 labels per round, |L| labels at selection time, N = |U| rows in S shards served by
G devices, each device running ceil(S / G) shards one after the other; d the embedding width, rates measured at
d0 and scaled by d0 / d):

    |P|(L)          = min(N, rho * k * |L|)                   rho: measured unique-neighbour fraction
    fit             = C * t_unit * (|L| / L0) * (d / d0)       one batched solve on the driver's device; t_unit
                                                               from the fit measured nearest d (latency: d 128,
                                                               |L| 500; learner: d 384, |L| 2000)
    search  IVF-PQ  = ceil(S/G) * C * b / QPS_ivf(N / S)       QPS_ivf(n) = QPS_ivf(n0) * sqrt(n0 / n)
            graph   = C * b * t_lookup                         (precomputed kNN graph: N * k * 12 bytes)
    select  SEALS   = ceil(S/G) * C * |P| / S / r_pool         r_pool: candidates scored+selected per second
            All     = ceil(S/G) * C * N / S / r_all            r_all: (row, unit) pairs per second
    round           = fit + search + select;   sweep = sum over rounds |L| = 100, 200, ..., budget - b

(nlist grows like sqrt(n) at fixed nprobe, so an IVF-PQ query scans ~sqrt(n) codes; search is every query
against every shard.)

    python benchmarks/scale_model.py --shards 64 --gpus 8
    python benchmarks/scale_model.py --quick                 # model only; measures missing rates small

A second table projects the measured end-to-end ImageNet-like sweep (``bench_sweep.py --experiment imagenet``,
its JSON and run folder) to other collection sizes on the same machine (``--project-sizes``, default the
paper's OpenImages 6.8M and 1e9), phase by phase, each phase scaled by what it depends on:

    fixed (per label, not per row)  fit, SEALS select, label, checkpoint, seed, startup, report
    linear in N                     All select (every train row per unit), record (test AP over the test
                                    split, 20% of N), load, index build
    search                          per query ~ sqrt(N) (IVF lists grow like sqrt(N) at fixed nprobe), times
                                    min(queries, train rows) (every train row's neighbours are precomputed
                                    when the queries outnumber them)

split into SEALS units and All units by the run's per-unit seconds (metrics.parquet).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import _common as cm
import numpy as np
import torch

NAME = "scale_model"
B = 100


def _load(name: str, explicit: Path | None) -> tuple[dict[str, Any] | None, Path | None]:
    paths = [explicit] if explicit else [cm.OUT_DIR / f"{name}_full.json", cm.OUT_DIR / f"{name}.json"]
    for p in paths:
        if p is not None and p.exists():
            d = cm.read_json(p)
            if d is not None:
                return d, p
    return None, None


def rates_from_json(args) -> dict[str, dict[str, Any]]:
    """Each rate: {'value', 'source', 'd'} (d: the embedding width it was measured at)."""
    rates: dict[str, dict[str, Any]] = {}
    lat, lat_p = _load("latency", args.latency_json)
    if lat is not None:
        rows = lat["rows"]
        n_max = max(r["n"] for r in rows)
        C_max = max(r["concepts"] for r in rows)

        def get(m):
            return next(r for r in rows if r["n"] == n_max and r["concepts"] == C_max and r["method"] == m)

        g, a = get("seals-graph"), get("all")
        src = f"{lat_p.name}: |U|={n_max:,}, C={C_max}"
        rates["r_pool"] = {
            "value": C_max * g["pool_mean"] / g["select_s"],
            "source": src,
            "d": 128,
            "unit": "candidates/s (score_pool)",
        }
        if g.get("select_alt_s"):
            rates["r_pool_alt"] = {
                "value": C_max * g["pool_mean"] / g["select_alt_s"],
                "source": src,
                "d": 128,
                "unit": "candidates/s (score_candidates + select_topk_segmented)",
            }
        rates["r_all"] = {
            "value": C_max * n_max / a["select_s"],
            "source": src,
            "d": 128,
            "unit": "(row, unit)/s (score_all)",
        }
        rates["t_lookup"] = {
            "value": g["search_s"] / (C_max * B),
            "source": src,
            "d": None,
            "unit": "s per looked-up id incl. pool growth",
        }
        rates["rho"] = {
            "value": g["pool_mean"] / (100 * 500),
            "source": src + ", k=100, |L|=500",
            "d": None,
            "unit": "|P| / (k |L|)",
        }
        rates["fit_unit_L500_d128"] = {
            "value": g["fit_s"] / C_max,
            "L0": 500,
            "source": src,
            "d": 128,
            "unit": "s per unit at |L|=500 (warm)",
        }
    lrn, lrn_p = _load("learner", args.learner_json)
    if lrn is not None:
        warm = [r for r in lrn["rows"] if r["case"] == "warm"]
        # the warm refit nearest the paper's size (d 384, |L| 2000), by width then labels
        w = min(warm, key=lambda r: (abs(r["dim"] - 384), abs(r["labels"] - 2000)))
        rates["t_unit"] = {
            "value": w["ours_s"] / w["units"],
            "L0": w["labels"],
            "d": w["dim"],
            "source": f"{lrn_p.name}: warm refit, U={w['units']}, L={w['labels']}, d={w['dim']}",
            "unit": "s per unit",
        }
    idx, idx_p = _load("index", args.index_json)
    if idx is not None:
        ok = [r for r in idx["rows"] if r.get("nlist") is not None and r["recall"] >= 0.9]
        if ok:
            best = max(ok, key=lambda r: r["qps"])
            rates["qps_ivf"] = {
                "value": best["qps"],
                "n0": idx.get("n"),
                "d": 128,
                "source": f"{idx_p.name}: n={idx.get('n'):,}, nlist {best['nlist']}, nprobe "
                f"{best['nprobe']}, rerank {best['rerank']}, recall {best['recall']:.3f}",
                "unit": "queries/s (k=100)",
            }
        ex = next((r for r in idx["rows"] if r["index"].startswith("flat")), None)
        if ex:
            rates["qps_exact"] = {
                "value": ex["qps"],
                "n0": idx.get("n"),
                "d": 128,
                "source": f"{idx_p.name}: n={idx.get('n'):,}",
                "unit": "queries/s (k=100)",
            }
    return rates


def measure_missing(rates: dict[str, dict[str, Any]]) -> None:
    """Small measurements for any rate no JSON provided (so the model always runs)."""
    from seals_gpu.backend import LocalBackend
    from seals_gpu.device import resolve_device
    from seals_gpu.index import IndexShard, SearchParams
    from seals_gpu.index.shard import train_ivfpq
    from seals_gpu.learner import fit_logistic

    need = [k for k in ("r_pool", "r_all", "t_lookup", "rho", "t_unit", "qps_ivf") if k not in rates]
    if not need:
        return
    print(f"measuring here (no JSON for): {', '.join(need)}", flush=True)
    n, d, C = 200_000, 128, 16
    X, _ = cm.clustered_vectors(n, d, seed=0)
    ids = np.arange(n, dtype=np.int64)
    choice = resolve_device("cpu")
    be = LocalBackend(cm.local_index(ids, X, IndexShard(ids, X, kind="flat")), choice)
    g = torch.Generator().manual_seed(0)
    W, bias, kind = torch.randn(C, d, generator=g), torch.zeros(C), torch.zeros(C, dtype=torch.int8)
    src = f"measured here: n={n:,}, C={C}"
    if "r_pool" in need:
        rng = np.random.default_rng(0)
        pools = [np.sort(rng.choice(n, 40_000, replace=False)) for _ in range(C)]
        off = np.concatenate([[0], np.cumsum([p.size for p in pools])])
        t = cm.timed(lambda: be.score_pool(np.concatenate(pools), off, W, bias, kind, None, 1.0, B))
        rates["r_pool"] = {"value": off[-1] / t["median"], "source": src, "d": d, "unit": "candidates/s"}
    if "r_all" in need:
        t = cm.timed(lambda: be.score_all([np.empty(0, np.int64)] * C, W, bias, kind, None, 1.0, B))
        rates["r_all"] = {"value": n * C / t["median"], "source": src, "d": d, "unit": "(row, unit)/s"}
    if "t_lookup" in need:
        rates["t_lookup"] = {"value": 2e-5, "source": "assumed (no latency JSON)", "d": None, "unit": "s/id"}
    if "rho" in need:
        rates["rho"] = {"value": 0.9, "source": "assumed (no latency JSON)", "d": None, "unit": "|P|/(k|L|)"}
    if "t_unit" in need:
        U, L, dd = 16, 2000, 384
        Xl = torch.nn.functional.normalize(torch.randn(U, L, dd, generator=g), dim=-1)
        y = (torch.rand(U, L, generator=g) < 0.05).float()
        m = torch.ones(U, L, dtype=torch.bool)
        m0 = m.clone()
        m0[:, 1900:] = False
        init = fit_logistic(Xl, y, m0)
        t = cm.timed(lambda: fit_logistic(Xl, y, m, init=init))
        rates["t_unit"] = {
            "value": t["median"] / U,
            "L0": L,
            "d": dd,
            "source": f"measured here: U={U}",
            "unit": "s per unit",
        }
    if "qps_ivf" in need:
        ivf = train_ivfpq(X[:65_536], nlist=256, pq_m=32)
        sh = IndexShard.build(ids, X, kind="ivfpq", trained=ivf, params=SearchParams(nprobe=16, rerank=4))
        q = X[:500]
        t = cm.timed(lambda: sh.search(q, 100))
        rates["qps_ivf"] = {
            "value": 500 / t["median"],
            "n0": n,
            "d": d,
            "unit": "queries/s",
            "source": f"measured here: n={n:,}, nlist 256, nprobe 16, rerank 4 (recall unchecked)",
        }


def fit_per_unit(rates: dict[str, dict[str, Any]], L: int, d: int) -> float:
    """Seconds per unit of a warm refit: the measurement whose width is nearest ``d``, linear in |L| and d."""
    cands = [r for r in (rates.get("t_unit"), rates.get("fit_unit_L500_d128")) if r is not None]
    r = min(cands, key=lambda r: abs(math.log(d / r["d"])))
    return r["value"] * (L / r.get("L0", 500)) * (d / r["d"])


def round_time(
    rates, *, N: float, C: int, L: int, k: int, S: int, G: int, d: int, method: str
) -> dict[str, float]:
    per_dev = math.ceil(S / max(G, 1))
    fit = C * fit_per_unit(rates, L, d)
    dscale = d / 128
    if method == "all":
        return {"fit": fit, "search": 0.0, "select": per_dev * C * (N / S) / rates["r_all"]["value"] * dscale}
    P = min(N, rates["rho"]["value"] * k * L)
    select = per_dev * C * P / S / rates["r_pool"]["value"] * dscale
    if method == "seals-graph":
        search = C * B * rates["t_lookup"]["value"]
    else:
        q = rates["qps_ivf"]["value"] * math.sqrt(rates["qps_ivf"]["n0"] / (N / S)) / dscale
        search = per_dev * C * B / q
    return {"fit": fit, "search": search, "select": select}


LINEAR = ("record", "load", "index", "full_supervision")  # ~ N (record: the test split's AP)
FIXED = ("fit", "label", "checkpoint", "seed", "startup", "report", "other")


def project_sweep(sweep_path: Path, sizes: list[float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The measured sweep's phases scaled to ``sizes`` (rows: one per size and mode; see the docstring)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    sw = cm.read_json(sweep_path)
    if sw is None:
        return [], {}
    cmd = sw["measurements"][0]["command"].split()
    run = Path(cmd[cmd.index("--out") + 1])
    timings = json.loads((run / "timings.json").read_text())
    ph = timings["phases"]
    m = pq.read_table(run / "metrics.parquet", columns=["mode", "seconds_select", "seconds_fit"])
    units = timings["units"]
    n_units = {
        md: int(pc.sum(pc.equal(m["mode"], md)).as_py()) // max(1, timings["rounds"] + 1)
        for md in ("seals", "all")
    }
    sel = {
        md: float(pc.sum(m.filter(pc.equal(m["mode"], md))["seconds_select"]).as_py() or 0.0)
        for md in n_units
    }
    sel_total = sum(sel.values()) or 1.0
    from seals_gpu.store import Store

    N0 = float(Store(sw["store"]).read_ids().size)
    train0 = N0 * 0.8
    queries = sw["summary"]["rounds"] * B * n_units["seals"]
    rows = []
    for N in sizes:
        f = N / N0
        for mode in ("seals", "all"):
            share = n_units[mode] / max(units, 1)  # shared phases split by unit count
            fixed = sum(ph.get(k, 0.0) for k in FIXED) * share
            linear = sum(ph.get(k, 0.0) for k in LINEAR) * share * f
            select = ph["select"] * sel[mode] / sel_total * (f if mode == "all" else 1.0)
            search = 0.0
            if mode == "seals":
                q0, q = min(queries, train0), min(queries, N * 0.8)
                search = ph["search"] * (q / q0) * math.sqrt(f)
            total = fixed + linear + select + search
            rows.append(
                {
                    "n": N,
                    "mode": mode,
                    "units": n_units[mode],
                    "fixed_s": fixed,
                    "test_ap_and_load_s": linear,
                    "select_s": select,
                    "search_s": search,
                    "total_s": total,
                    "total_h": total / 3600,
                }
            )
    src = {"sweep": str(sweep_path), "run": str(run), "measured_wall_s": sw["summary"]["wall_s"], "n0": N0}
    return rows, src


def main(argv: list[str] | None = None) -> int:
    p = cm.make_parser(NAME, __doc__)
    p.add_argument("--shards", type=int, default=64)
    p.add_argument(
        "--gpus", type=int, default=8, help="devices serving shards (CPU rates until GPU rates exist)"
    )
    p.add_argument("--concepts", type=int, default=450)
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--sizes", default="1e8,1e9")
    p.add_argument("--latency-json", type=Path, default=None)
    p.add_argument("--learner-json", type=Path, default=None)
    p.add_argument("--index-json", type=Path, default=None)
    p.add_argument("--rates-json", type=Path, default=None, help="override any rate: {name: value}")
    p.add_argument(
        "--sweep-json",
        type=Path,
        default=cm.OUT_DIR / "sweep_imagenet450.json",
        help="a bench_sweep.py --experiment imagenet result to project (skipped when missing)",
    )
    p.add_argument("--project-sizes", default="6.8e6,1e9", help="sizes for the sweep projection")
    args = cm.parse(p, argv)
    cm.resolve(args.device)
    t0 = time.perf_counter()
    rates = rates_from_json(args)
    measure_missing(rates)
    if args.rates_json:
        for kname, v in json.loads(args.rates_json.read_text()).items():
            rates.setdefault(kname, {}).update(value=float(v), source=f"{args.rates_json}")
    print()
    cm.print_table(
        [
            {"rate": k, "value": v["value"], "unit": v.get("unit"), "source": v.get("source")}
            for k, v in rates.items()
        ],
        title="measured inputs (CPU rates measured here; GPU rates pending)",
    )
    sizes = [float(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    Ls = list(
        range(B, args.budget, B)
    )  # |L| at each round's selection: 100 (the seed set), 200, ..., budget - b
    for N in sizes:
        for method in ("all", "seals-ivfpq", "seals-graph"):
            kw = dict(N=N, C=args.concepts, k=args.k, S=args.shards, G=args.gpus, d=args.dim, method=method)
            r500 = round_time(rates, L=500, **kw)
            r_last = round_time(rates, L=Ls[-1], **kw)
            sweep = sum(sum(round_time(rates, L=L, **kw).values()) for L in Ls)
            rows.append(
                {
                    "n": N,
                    "method": method,
                    "shards": args.shards,
                    "gpus": args.gpus,
                    "concepts": args.concepts,
                    "fit_s@500": r500["fit"],
                    "search_s@500": r500["search"],
                    "select_s@500": r500["select"],
                    "round_s@500": sum(r500.values()),
                    f"round_s@{Ls[-1]}": sum(r_last.values()),
                    "sweep_h": sweep / 3600,
                    "rounds": len(Ls),
                }
            )
    cols = [
        "n",
        "method",
        "shards",
        "gpus",
        "fit_s@500",
        "search_s@500",
        "select_s@500",
        "round_s@500",
        f"round_s@{Ls[-1]}",
        "sweep_h",
    ]
    print()
    cm.print_table(
        rows,
        cols,
        title=f"predicted: {args.concepts} concepts, k={args.k}, b={B}, budget {args.budget} "
        f"({len(Ls)} rounds), d={args.dim}; CPU rates, GPU rates pending",
    )
    notes = {
        "formula": __doc__.split("The model")[1].split("python benchmarks")[0].strip(),
        "graph_bytes": {f"{N:g}": N * args.k * 12 for N in sizes},
        "vectors_fp16_bytes": {f"{N:g}": N * args.dim * 2 for N in sizes},
        "rates_are": "CPU rates measured on this machine; GPU rates pending (no GPU this session)",
    }
    proj, proj_src = project_sweep(args.sweep_json, [float(x) for x in args.project_sizes.split(",")])
    if proj:
        print()
        cm.print_table(
            proj,
            ["n", "mode", "units", "fixed_s", "test_ap_and_load_s", "select_s", "search_s", "total_h"],
            title=f"the measured sweep ({proj_src['measured_wall_s']:.0f} s at {proj_src['n0']:,.0f} rows) "
            "projected on the same machine",
        )
    print(f"\n(model built in {time.perf_counter() - t0:.1f}s)")
    cm.write_json(
        args.out, NAME, args, rows, rates=rates, notes=notes, sweep_projection=proj, sweep_source=proj_src
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
