"""End to end: ``seals-gpu run`` for many concepts against the plain per-concept loop a user would write.

Both sides get the same concepts, strategy (MaxEnt), modes (SEALS and All), b, budget T, k and seed sets
(5 positives + 95 negatives per concept, drawn in this parent with ``seals_gpu.seeds.concept_seed`` and
``draw_seed_set`` and checked against the product's round 0), on all the machine's cores. Each side is one
fresh subprocess timed by wall clock from launch to exit, so Python start-up, imports, loading the store
and every index or graph build count. Measurements run one after another, never concurrently; with
``--repeats N`` they interleave (product, plain-graph, plain-per-round, product, ...) and the median is
reported. ``os.getloadavg()`` is recorded before and after each, and the CPU seconds the subprocess used.
``--threads`` is not used: both sides get every core (the product its libraries' defaults, the plain loop
one worker process per core, ``--workers``).

**Product**: ``seals-gpu run STORE --out RUN --concepts c1,c2,... --strategies maxent --modes seals,all
--k K --batch B --budget T --seed-positives 5 --seed-negatives 95 --seed 0 --quiet`` (plus ``--run-args``).
The product chooses its own index/graph; all of it happens inside that command, with an empty
``SEALS_GPU_CACHE`` folder so nothing an earlier run built is reused. Afterwards the script
reads ``RUN/metrics.parquet`` (quality at the final budget) and, when present, ``RUN/timings.json``
(``{"phases": {name: seconds}}``), printed as the product's per-phase breakdown ("outside phases" is the
wall time the phases do not cover: interpreter start-up, imports, ...).

**Plain loop** (``bench_sweep.py --baseline-worker SPEC.json``, scikit-learn + faiss + numpy): loads the
store's ``id``/``embedding`` columns with pyarrow and l2-normalises them, takes the split from
``Store.read_split()`` and the positives from ``Store.concept_positives``, then runs concepts in a
``multiprocessing`` pool (fork) of one worker per core, each worker limited to 1 thread
(``OMP_NUM_THREADS=1``, ``faiss.omp_set_num_threads(1)``, ``threadpoolctl.threadpool_limits(1)``). Per
concept, for each mode: round 0 labels the seed set; every round fits
``LogisticRegression(C=1.0, warm_start=True)`` on the labeled set, records test AP
(``average_precision_score`` of ``predict_proba`` on the test split) and recall (positives labeled / train
positives); the next round labels the b candidates of highest binary entropy (ties: lower id). All's
candidates are every unlabeled train item; SEALS's are the union of the k nearest train neighbours (inner
product on normalised rows, the item itself excluded) of every labeled item, minus the labeled. Two ways
to get the neighbours, both timed: ``graph`` builds the full kNN graph of the train rows once with
``faiss.IndexFlatIP`` (k+1, self dropped; all cores) before the workers start and shares it with them by
fork; ``per-round`` has each worker search the newly labeled ids of each round in its own
``IndexFlatIP`` over the train rows. The product's speed-up is taken against the faster of the two.

Experiments:

* ``wordnet`` (default): the WordNet store (``--store``, else ``CACHE/wordnet_store``, else imported from
  ``--wordnet-parquet`` with ``seals-gpu store wordnet OUT --from-parquet PARQUET``). 20 concepts: 10 with
  prevalence 0.1%-1% and 10 with 0.02%-0.1% (``sample_concepts``, seed 0), b=100, T=2000, k=100.
  Target: the product >= 3x faster than the faster plain variant. ``--quick``: 3 + 2 concepts, T=1000.
* ``imagenet``: the paper's ImageNet-like setting on a synthetic store (``seals-gpu store synth OUT --n
  800000 --dim 256 --concepts 450 --prevalence 0.00114:0.00203 --seed 0``, cached), all 450 concepts,
  strategies maxent,mlp,id, modes seals,all, T=2000, b=100, k=100. Only the product is run in full
  (target <= 900 s, builds included); the plain loop's time is an ESTIMATE, extrapolated from the
  ``per-round`` plain loop timed on the first 5 concepts x MaxEnt (setup + loop x concept-strategies / 5;
  the plain loop's per-strategy cost is taken to be MaxEnt's). ``--concepts N`` runs the first N concepts;
  ``--quick``: a 100,000-row store with 40 concepts.

    python benchmarks/bench_sweep.py --quick
    python benchmarks/bench_sweep.py                      # wordnet, 20 concepts, T=2000
    python benchmarks/bench_sweep.py --repeats 3 --run-args "--device cpu"
    python benchmarks/bench_sweep.py --experiment imagenet --quick
    python benchmarks/bench_sweep.py --experiment imagenet --concepts 50
"""

from __future__ import annotations

import json
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as cm
import numpy as np

NAME = "sweep"
TARGET_SPEEDUP = 3.0
TARGET_IMAGENET_S = 900.0
WORDNET_BANDS = {"common": (0.001, 0.01), "rare": (0.0002, 0.001)}
IMAGENET_PREVALENCE = (0.00114, 0.00203)
SEED_POS, SEED_NEG = 5, 95
MODES = ("seals", "all")
VARIANTS = ("graph", "per-round")
BASELINE_FLAG = "--baseline-worker"


# =========================================================================================== plain loop
# Everything below up to the parent's section runs in the ``--baseline-worker`` subprocess: it imports only
# what a plain script would (numpy, pyarrow, faiss, scikit-learn, threadpoolctl, seals_gpu.store).
_G: dict[str, Any] = {}  # read-only state shared with the pool's workers by fork


def _drop_self(I: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """``I`` (m, k+1) neighbour rows of queries ``q``: drop each query itself (else the last column)."""
    I = I.astype(np.int64, copy=False)
    is_self = I == q[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return I[~is_self].reshape(q.size, k)


def _top_b(h: np.ndarray, cand: np.ndarray, b: int) -> np.ndarray:
    """The ``b`` candidates (sorted ascending) of highest ``h``; ties go to the lower id."""
    if cand.size <= b:
        return cand
    thr = h[np.argpartition(-h, b - 1)[:b]].min()
    above = np.flatnonzero(h > thr)
    tied = np.flatnonzero(h == thr)[: b - above.size]
    return cand[np.sort(np.concatenate([above, tied]))]


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def _init_worker() -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = "1"
    faiss.omp_set_num_threads(1)
    _G["limiter"] = threadpool_limits(limits=1)
    if _G["variant"] == "per-round":
        index = faiss.IndexFlatIP(_G["Xtr"].shape[1])
        index.add(_G["Xtr"])
        _G["index"] = index


def _neighbours(new: np.ndarray) -> np.ndarray:
    """k nearest train neighbours (train positions) of train positions ``new``, flattened."""
    k = _G["k"]
    if _G["variant"] == "graph":
        return _G["graph"][new].ravel()
    _, I = _G["index"].search(_G["Xtr"][new], k + 1)
    return _drop_self(I, new, k).ravel()


def _run_concept(task: dict[str, Any]) -> dict[str, Any]:
    """Both modes of one concept; returns its metrics rows and seconds per phase."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    Xtr, Xte, train_ids = _G["Xtr"], _G["Xte"], _G["train_ids"]
    b, budget = _G["batch"], _G["budget"]
    pos = _G["positives"][task["key"]]
    y = np.isin(train_ids, pos)
    y_test = np.isin(_G["test_ids"], pos)
    n_pos_train = int(y.sum())
    seed = np.searchsorted(train_ids, np.asarray(task["seed_ids"], dtype=np.int64))
    n_rounds = math.ceil((budget - seed.size) / b)
    rows: list[dict[str, Any]] = []
    t = dict.fromkeys(("search", "fit", "eval", "select"), 0.0)
    not_converged = 0
    for mode in _G["modes"]:
        labeled = np.zeros(train_ids.size, dtype=bool)
        order: list[np.ndarray] = []
        in_pool = np.zeros(train_ids.size, dtype=bool) if mode == "seals" else None
        clf = LogisticRegression(C=_G["C"], warm_start=True)
        new = seed
        for r in range(n_rounds + 1):
            if r > 0:  # select with the previous round's model
                t0 = time.perf_counter()
                cand = np.flatnonzero(in_pool) if mode == "seals" else np.flatnonzero(~labeled)
                b_round = min(b, budget - seed.size - (r - 1) * b)
                h = _entropy(clf.predict_proba(Xtr[cand])[:, 1]) if cand.size else np.empty(0)
                new = _top_b(h, cand, b_round)
                t["select"] += time.perf_counter() - t0
            labeled[new] = True
            order.append(new)
            if in_pool is not None:
                t0 = time.perf_counter()
                in_pool[_neighbours(new)] = True
                in_pool[labeled] = False
                t["search"] += time.perf_counter() - t0
            lab = np.concatenate(order)
            t0 = time.perf_counter()
            clf.fit(Xtr[lab], y[lab])
            not_converged += int(clf.n_iter_[0] >= clf.max_iter)
            t["fit"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            ap = float(average_precision_score(y_test, clf.predict_proba(Xte)[:, 1]))
            t["eval"] += time.perf_counter() - t0
            rows.append(
                {
                    "concept": task["concept"],
                    "mode": mode,
                    "round": r,
                    "n_labeled": int(lab.size),
                    "test_ap": ap,
                    "recall": float(y[lab].sum()) / n_pos_train,
                    "pool_size": int(in_pool.sum()) if in_pool is not None else int((~labeled).sum()),
                }
            )
    return {"rows": rows, "seconds": t, "not_converged": not_converged}


def _load_embeddings(store) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, l2-normalised float32 embeddings)`` of every row, read with pyarrow."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids, xs = [], []
    for f in store.files:
        tab = pq.read_table(f, columns=["id", "embedding"])
        ids.append(tab.column("id").to_numpy())
        col = tab.column("embedding").combine_chunks()
        xs.append(pc.list_flatten(col).to_numpy().astype(np.float32, copy=False).reshape(len(tab), -1))
    x = np.concatenate(xs)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate(ids).astype(np.int64), x


def baseline_main(spec_path: str) -> int:
    """The plain loop (see the module docstring). Writes its rows and timings to ``spec["result"]``."""
    t_start = time.perf_counter()
    import multiprocessing as mp

    import faiss
    from threadpoolctl import threadpool_limits

    from seals_gpu.store import Store

    spec = json.loads(Path(spec_path).read_text())
    setup: dict[str, float] = {}
    t0 = time.perf_counter()
    store = Store(spec["store"])
    all_ids, is_test = store.read_split()
    ids, x = _load_embeddings(store)
    rows_of = np.argsort(ids, kind="stable")
    sorted_ids = ids[rows_of]
    train_ids = np.sort(all_ids[~is_test])
    test_ids = np.sort(all_ids[is_test])
    Xtr = np.ascontiguousarray(x[rows_of[np.searchsorted(sorted_ids, train_ids)]])
    Xte = np.ascontiguousarray(x[rows_of[np.searchsorted(sorted_ids, test_ids)]])
    del x
    concepts = [t["concept"] for t in spec["tasks"]]
    positives = store.concept_positives(concepts)
    setup["load"] = time.perf_counter() - t0
    workers = int(spec["workers"])
    k = int(spec["k"])
    _G.update(
        Xtr=Xtr,
        Xte=Xte,
        train_ids=train_ids,
        test_ids=test_ids,
        positives={repr(c): positives[c] for c in concepts},
        k=k,
        batch=int(spec["batch"]),
        budget=int(spec["budget"]),
        C=float(spec["C"]),
        modes=tuple(spec["modes"]),
        variant=spec["variant"],
    )
    if spec["variant"] == "graph":  # the whole train kNN graph, on all cores, before the workers start
        t0 = time.perf_counter()
        faiss.omp_set_num_threads(workers)
        with threadpool_limits(limits=workers):
            index = faiss.IndexFlatIP(Xtr.shape[1])
            index.add(Xtr)
            graph = np.empty((train_ids.size, k), dtype=np.int32)
            q = np.arange(train_ids.size, dtype=np.int64)
            for s in range(0, train_ids.size, 16_384):
                _, I = index.search(Xtr[s : s + 16_384], k + 1)
                graph[s : s + 16_384] = _drop_self(I, q[s : s + 16_384], k)
            del index
        _G["graph"] = graph
        setup["graph"] = time.perf_counter() - t0
    tasks = [
        {"concept": c, "key": repr(c), "seed_ids": t["seed_ids"]} for c, t in zip(concepts, spec["tasks"])
    ]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        results = pool.map(_run_concept, tasks, chunksize=1)
    loop = time.perf_counter() - t0
    phases = {name: sum(r["seconds"][name] for r in results) for name in results[0]["seconds"]}
    out = {
        "variant": spec["variant"],
        "workers": workers,
        "setup_s": setup,
        "loop_s": loop,
        "worker_cpu_phases_s": phases,
        "not_converged_fits": sum(r["not_converged"] for r in results),
        "n_train": int(train_ids.size),
        "n_test": int(test_ids.size),
        "rows": [row for r in results for row in r["rows"]],
        "in_process_s": time.perf_counter() - t_start,
    }
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, spec["result"])
    return 0


# =========================================================================================== the parent
def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _timed_subprocess(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (output to ``log``); wall seconds from launch to exit, CPU seconds, load before/after."""
    load0, cpu0 = _load(), _children_cpu()
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
        wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        raise SystemExit(
            f"bench_sweep: `{shlex.join(cmd)}` failed (exit {rc}); last lines of {log}:\n" + "\n".join(tail)
        )
    return {"wall_s": wall, "cpu_s": cpu, "load_before": load0, "load_after": _load()}


def _seals_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "seals-gpu"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "seals_gpu"]


def get_wordnet_store(args) -> Path:
    if args.store is not None:
        if not args.store.is_dir():
            raise SystemExit(f"bench_sweep: --store {args.store} is not a folder; pass a built WordNet store")
        return args.store
    out = args.cache / "wordnet_store"
    if out.is_dir():
        return out
    src = args.wordnet_parquet
    if src is None or not Path(src).is_file():
        raise SystemExit(
            f"bench_sweep: no WordNet store: pass --store STORE_DIR, or --wordnet-parquet PATH to the embedded "
            f"wordnet_noun_minilm.parquet ({src} not found), or build one with `seals-gpu store wordnet OUT`"
        )
    cmd = [*_seals_cmd(), "store", "wordnet", str(out), "--from-parquet", str(src)]
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def get_synth_store(args, n: int, n_concepts: int) -> Path:
    lo, hi = IMAGENET_PREVALENCE
    out = args.cache / f"synth_n{n}_d256_c{n_concepts}_p{lo}-{hi}_s0"
    if not out.is_dir():
        cmd = [
            *_seals_cmd(),
            *("store", "synth", str(out), "--n", str(n), "--dim", "256", "--concepts", str(n_concepts)),
            *("--prevalence", f"{lo}:{hi}", "--seed", "0"),
        ]
        print("$", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"[store built in {time.perf_counter() - t0:.0f}s; cached, not part of any timing]", flush=True)
    return out


def seed_sets(store, concepts: list[Any], seed: int) -> dict[Any, list[int]]:
    """The product's seed sets, from its own helpers (5 positives + 95 negatives from the train split)."""
    from seals_gpu.pool import isin_sorted
    from seals_gpu.seeds import concept_seed, draw_seed_set

    ids, is_test = store.read_split()
    train_ids = np.sort(ids[~is_test])
    pos = store.concept_positives(concepts)
    out = {}
    for c in concepts:
        p_train = pos[c][isin_sorted(pos[c], train_ids)]
        s, _ = draw_seed_set(concept_seed(seed, c), train_ids, p_train, SEED_POS, SEED_NEG)
        out[c] = [int(i) for i in s]
    return out


def _py(c: Any) -> Any:
    return int(c) if isinstance(c, (int, np.integer)) else str(c)


def run_product(
    args, store: Path, concepts: list[Any], strategies: str, budget: int, tag: str
) -> dict[str, Any]:
    """``seals-gpu run`` in a subprocess; returns timing, metrics rows, phases and round-0 ids."""
    import pyarrow.parquet as pq

    work = args.runs_dir
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{tag}_product_run"
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        *_seals_cmd(),
        *("run", str(store), "--out", str(out), "--concepts", ",".join(str(c) for c in concepts)),
        *(
            "--strategies",
            strategies,
            "--modes",
            ",".join(MODES),
            "--k",
            str(args.k),
            "--batch",
            str(args.batch),
        ),
        *("--budget", str(budget), "--seed-positives", str(SEED_POS), "--seed-negatives", str(SEED_NEG)),
        *("--seed", str(args.seed), "--quiet"),
        *(("--device", args.device) if args.device in ("cpu", "cuda") else ()),
        *shlex.split(args.run_args or ""),
    ]
    # a fresh, empty cache folder: every build the product does (its search index) is inside the timing
    cache = work / f"{tag}_product_cache"
    if cache.exists():
        shutil.rmtree(cache)
    env = {**os.environ, "SEALS_GPU_CACHE": str(cache)}
    res = _timed_subprocess(cmd, work / f"{tag}_product.log", env=env)
    metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    sel = pq.read_table(out / "selections.parquet", columns=["concept", "mode", "round", "id"]).to_pydict()
    round0: dict[Any, set[int]] = {}
    for c, r, i in zip(sel["concept"], sel["round"], sel["id"]):
        if r == 0:
            round0.setdefault(c, set()).add(int(i))
    timings = cm.read_json(out / "timings.json")
    phases = timings.get("phases") if isinstance(timings, dict) else None
    if isinstance(phases, dict):  # numbers only: tolerate extra keys in a newer timings.json
        phases = {str(k): float(v) for k, v in phases.items() if isinstance(v, (int, float))}
    else:
        phases = None
    plan = timings.get("plan") if isinstance(timings, dict) else None
    res.update(
        command=shlex.join(cmd),
        run_dir=out,
        metrics=metrics,
        phases=phases,
        plan=plan,
        timings=timings,
        round0=round0,
    )
    return res


def run_plain(
    args, store: Path, variant: str, concepts: list[Any], seeds: dict[Any, list[int]], budget: int, tag: str
) -> dict[str, Any]:
    """The plain loop in a fresh subprocess (``--baseline-worker``); returns timing and its rows."""
    work = args.runs_dir
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / f"{tag}_{variant}_spec.json"
    result = work / f"{tag}_{variant}_result.json"
    result.unlink(missing_ok=True)
    spec = {
        "store": str(store),
        "variant": variant,
        "workers": args.workers,
        "k": args.k,
        "batch": args.batch,
        "budget": budget,
        "C": 1.0,
        "modes": list(MODES),
        "tasks": [{"concept": _py(c), "seed_ids": seeds[c]} for c in concepts],
        "result": str(result),
    }
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), BASELINE_FLAG, str(spec_path)]
    res = _timed_subprocess(cmd, work / f"{tag}_{variant}.log")
    out = json.loads(result.read_text())
    res["metrics"] = out.pop("rows")
    res.update(command=shlex.join(cmd), **out)
    return res


# ------------------------------------------------------------------------------------------ quality
def final_rows(metrics: list[dict[str, Any]], strategy: str | None = None) -> dict[tuple[Any, str], dict]:
    """Last round of each (concept, mode) (for one strategy when the rows have one)."""
    last: dict[tuple[Any, str], dict] = {}
    for m in metrics:
        if strategy is not None and m.get("strategy", strategy) != strategy:
            continue
        key = (_py(m["concept"]), m["mode"])
        if key not in last or m["round"] > last[key]["round"]:
            last[key] = m
    return last


def quality(metrics: list[dict[str, Any]], strategy: str | None = None) -> dict[str, Any]:
    last = final_rows(metrics, strategy)
    q: dict[str, Any] = {}
    for mode in MODES:
        rs = [r for (_, m), r in last.items() if m == mode]
        q[f"{mode}_ap"] = float(np.nanmean([r["test_ap"] for r in rs])) if rs else None
        q[f"{mode}_recall"] = float(np.mean([r["recall"] for r in rs])) if rs else None
        q[f"{mode}_n_labeled"] = int(np.mean([r["n_labeled"] for r in rs])) if rs else None
    return q


def gaps(product: list[dict], plain: list[dict], names: dict[Any, str], top: int = 3) -> list[dict[str, Any]]:
    """Product minus plain at the final budget, per concept and mode: the ``top`` largest |AP gap| per mode
    and the ``top`` largest |recall gap| per mode (deduplicated)."""
    a, b = final_rows(product, "maxent"), final_rows(plain)
    out = []
    for mode in MODES:
        per = []
        for key in sorted(set(a) & set(b), key=repr):
            if key[1] != mode:
                continue
            per.append(
                {
                    "mode": mode,
                    "concept": key[0],
                    "name": names.get(key[0], ""),
                    "ap_product": a[key]["test_ap"],
                    "ap_plain": b[key]["test_ap"],
                    "ap_gap": a[key]["test_ap"] - b[key]["test_ap"],
                    "recall_product": a[key]["recall"],
                    "recall_plain": b[key]["recall"],
                    "recall_gap": a[key]["recall"] - b[key]["recall"],
                }
            )
        chosen = sorted(per, key=lambda r: -abs(r["ap_gap"]))[:top]
        chosen += [r for r in sorted(per, key=lambda r: -abs(r["recall_gap"]))[:top] if r not in chosen]
        out.extend(chosen)
    return out


def _median_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [e["wall_s"] for e in entries]
    return {
        "wall_s": statistics.median(walls),
        "walls": walls,
        "cpu_s": statistics.median(e["cpu_s"] for e in entries),
        "loads": [(e["load_before"], e["load_after"]) for e in entries],
    }


def _load_cell(entries: list[dict[str, Any]]) -> str:
    return " ".join(f"{e['load_before'][0]:.2f}->{e['load_after'][0]:.2f}" for e in entries)


def print_phases(
    phases: dict[str, float] | None, wall: float, title: str, plan: Any = None
) -> list[dict[str, Any]]:
    if isinstance(plan, dict):
        print("\nproduct plan: " + "; ".join(f"{k}: {v}" for k, v in plan.items()), flush=True)
    elif plan is not None:
        print(f"\nproduct plan: {plan}", flush=True)
    if not phases:
        print(f"\n{title}: no RUN/timings.json (this version of seals-gpu does not write one)", flush=True)
        return []
    rows = [{"phase": k, "seconds": float(v), "share": float(v) / wall} for k, v in phases.items()]
    covered = sum(r["seconds"] for r in rows)
    rows.append({"phase": "outside phases", "seconds": wall - covered, "share": (wall - covered) / wall})
    rows.append({"phase": "wall (launch to exit)", "seconds": wall, "share": 1.0})
    print()
    cm.print_table(rows, ["phase", "seconds", "share"], title=title)
    return rows


# ------------------------------------------------------------------------------------------ experiments
def wordnet(args) -> int:
    from seals_gpu.seeds import sample_concepts
    from seals_gpu.store import Store

    n_total = args.concepts or (5 if args.quick else 20)
    budget = args.budget or (1000 if args.quick else 2000)
    store_path = get_wordnet_store(args)
    store = Store(store_path)
    ids, is_test = store.read_split()
    train_ids = np.sort(ids[~is_test])
    per_band = {"common": (n_total + 1) // 2, "rare": n_total // 2}
    concepts: list[Any] = []
    for band, (lo, hi) in WORDNET_BANDS.items():
        if per_band[band]:
            concepts += sample_concepts(store, per_band[band], (lo, hi), args.seed, SEED_POS, train_ids)
    concepts = [_py(c) for c in concepts]
    names = store.concept_names()
    seeds = seed_sets(store, concepts, args.seed)
    variants = [v for v in args.variants.split(",") if v]
    print(
        f"wordnet store {store_path} ({store.num_rows:,} rows x {store.dim}, train {train_ids.size:,}); "
        f"{len(concepts)} concepts ({per_band['common']} at 0.1%-1%, {per_band['rare']} at 0.02%-0.1%): "
        f"{', '.join(str(names.get(c, c)) for c in concepts)}",
        flush=True,
    )
    print(
        f"maxent x seals,all; b={args.batch}, T={budget}, k={args.k}; plain loop: {args.workers} worker(s) x 1 "
        f"thread; variants {','.join(variants)}; repeats {args.repeats}; interleaved, one at a time\n",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {"product": [], **{f"plain-{v}": [] for v in variants}}
    for rep in range(args.repeats):
        r = run_product(args, store_path, concepts, "maxent", budget, "wordnet")
        runs["product"].append(r)
        print(
            f"[{rep + 1}/{args.repeats}] product          {r['wall_s']:7.1f}s  load {r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}",
            flush=True,
        )
        for v in variants:
            r = run_plain(args, store_path, v, concepts, seeds, budget, "wordnet")
            runs[f"plain-{v}"].append(r)
            print(
                f"[{rep + 1}/{args.repeats}] plain-{v:<10} {r['wall_s']:7.1f}s  load "
                f"{r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}  (setup "
                + ", ".join(f"{k} {s:.1f}s" for k, s in r["setup_s"].items())
                + f", loop {r['loop_s']:.1f}s)",
                flush=True,
            )
    # the seed sets must be the same on both sides (the plain loop gets them from this parent)
    prod_last = runs["product"][-1]
    seeds_match = all(prod_last["round0"].get(c) == set(seeds[c]) for c in concepts)
    med = {k: _median_entry(v) for k, v in runs.items()}
    t_prod = med["product"]["wall_s"]
    plain_keys = [k for k in runs if k != "product"]
    fastest = min(plain_keys, key=lambda k: med[k]["wall_s"]) if plain_keys else None
    rows = []
    for key, entries in runs.items():
        q = quality(entries[-1]["metrics"], "maxent" if key == "product" else None)
        rows.append(
            {
                "path": key,
                "wall_s": med[key]["wall_s"],
                "cpu_s": med[key]["cpu_s"],
                "product_speedup": None if key == "product" else med[key]["wall_s"] / t_prod,
                "seals_ap": q["seals_ap"],
                "seals_recall": q["seals_recall"],
                "all_ap": q["all_ap"],
                "all_recall": q["all_recall"],
                "n_labeled": q["seals_n_labeled"],
                "load_1m": _load_cell(entries),
            }
        )
    speedup = med[fastest]["wall_s"] / t_prod if fastest else None
    print()
    cm.print_table(
        rows,
        [
            "path",
            "wall_s",
            "cpu_s",
            "product_speedup",
            "seals_ap",
            "seals_recall",
            "all_ap",
            "all_recall",
            "n_labeled",
            "load_1m",
        ],
        title=f"WordNet, {len(concepts)} concepts, maxent x seals/all, b={args.batch}, T={budget}, k={args.k} "
        f"(wall: median of {args.repeats}; load_1m: 1-min load average before->after each run)",
    )
    phase_rows = print_phases(
        prod_last["phases"],
        prod_last["wall_s"],
        "product phases (last repeat, RUN/timings.json)",
        prod_last["plan"],
    )
    plain_phase_rows = []
    for k in plain_keys:
        e = runs[k][-1]
        plain_phase_rows.append(
            {
                "path": k,
                **{f"setup_{n}": s for n, s in e["setup_s"].items()},
                "loop": e["loop_s"],
                **{f"cpu_{n}": s for n, s in e["worker_cpu_phases_s"].items()},
                "wall": e["wall_s"],
                "not_converged_fits": e["not_converged_fits"],
            }
        )
    if plain_phase_rows:
        print()
        cm.print_table(
            plain_phase_rows,
            title="plain loop: setup and loop wall seconds; cpu_*: worker CPU-seconds summed over workers",
        )
    gap_rows = []
    if fastest:
        gap_rows = gaps(prod_last["metrics"], runs[fastest][-1]["metrics"], names)
        print()
        cm.print_table(
            gap_rows,
            [
                "mode",
                "concept",
                "name",
                "ap_product",
                "ap_plain",
                "ap_gap",
                "recall_product",
                "recall_plain",
                "recall_gap",
            ],
            title=f"largest per-concept gaps at the final budget, product - {fastest}",
        )
    met = speedup is not None and speedup >= TARGET_SPEEDUP
    print(
        f"\nseed sets identical on both sides: {'yes' if seeds_match else 'NO'}\n"
        f"product {t_prod:.1f}s vs {fastest} {med[fastest]['wall_s']:.1f}s: {speedup:.2f}x "
        f"(target >= {TARGET_SPEEDUP}x: {'met' if met else 'NOT met'})"
        if fastest
        else ""
    )
    cm.write_json(
        args.out,
        NAME,
        args,
        rows,
        experiment="wordnet",
        target={"speedup": TARGET_SPEEDUP},
        speedup=speedup,
        speedup_vs=fastest,
        met=met,
        store=store_path,
        concepts=concepts,
        concept_names={str(c): names.get(c) for c in concepts},
        budget=budget,
        seed_sets_match=seeds_match,
        product_phases=phase_rows,
        plain_phases=plain_phase_rows,
        gaps=gap_rows,
        measurements={
            k: [{kk: vv for kk, vv in e.items() if kk not in ("metrics", "round0")} for e in v]
            for k, v in runs.items()
        },
        load_end=_load(),
    )
    return 0


def imagenet(args) -> int:
    from seals_gpu.seeds import sample_concepts
    from seals_gpu.store import Store

    n_rows, n_planted = (100_000, 40) if args.quick else (800_000, 450)
    budget = args.budget or 2000
    strategies = args.strategies
    store_path = get_synth_store(args, n_rows, n_planted)
    store = Store(store_path)
    ids, is_test = store.read_split()
    train_ids = np.sort(ids[~is_test])
    concepts = [
        _py(c) for c in sample_concepts(store, n_planted, IMAGENET_PREVALENCE, args.seed, SEED_POS, train_ids)
    ]
    if args.concepts:
        concepts = concepts[: args.concepts]
    n_strat = len(strategies.split(","))
    n_rounds = math.ceil((budget - SEED_POS - SEED_NEG) / args.batch)
    print(
        f"synthetic store {store_path} ({store.num_rows:,} rows x {store.dim}, train {train_ids.size:,}); "
        f"{len(concepts)} concepts x {strategies} x seals,all; b={args.batch}, T={budget}, k={args.k}\n",
        flush=True,
    )
    prod = []
    for rep in range(args.repeats):
        r = run_product(args, store_path, concepts, strategies, budget, "imagenet")
        prod.append(r)
        print(
            f"[{rep + 1}/{args.repeats}] product {r['wall_s']:7.1f}s  load {r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}",
            flush=True,
        )
    med = _median_entry(prod)
    wall = med["wall_s"]
    last = prod[-1]
    est = None
    if not args.no_estimate:
        sub = concepts[: args.estimate_concepts]
        seeds = seed_sets(store, sub, args.seed)
        p = run_plain(args, store_path, "per-round", sub, seeds, budget, "imagenet_subset")
        setup = sum(p["setup_s"].values())
        overhead = p["wall_s"] - p["loop_s"]  # start-up, imports, load: paid once
        est_wall = overhead + p["loop_s"] * (len(concepts) * n_strat) / len(sub)
        est = {
            "subset_concepts": len(sub),
            "subset_strategy": "maxent",
            "subset_wall_s": p["wall_s"],
            "subset_setup_s": setup,
            "subset_loop_s": p["loop_s"],
            "estimated_wall_s": est_wall,
            "estimated_product_speedup": est_wall / wall,
            "subset_quality": quality(p["metrics"]),
            "load": [p["load_before"], p["load_after"]],
            "command": p["command"],
        }
        print(
            f"plain per-round loop on {len(sub)} concepts x maxent: {p['wall_s']:.1f}s (start-up+load {overhead:.1f}s, "
            f"loop {p['loop_s']:.1f}s) -> ESTIMATE for {len(concepts)} x {n_strat}: {est_wall:.0f}s",
            flush=True,
        )
    rows = []
    for s in strategies.split(","):
        q = quality(last["metrics"], s)
        rows.append(
            {
                "strategy": s,
                "seals_ap": q["seals_ap"],
                "all_ap": q["all_ap"],
                "ap_gap": None if q["seals_ap"] is None else q["seals_ap"] - q["all_ap"],
                "seals_recall": q["seals_recall"],
                "all_recall": q["all_recall"],
                "recall_gap": None if q["seals_recall"] is None else q["seals_recall"] - q["all_recall"],
                "n_labeled": q["seals_n_labeled"],
            }
        )
    summary = {
        "concepts": len(concepts),
        "units": len(concepts) * n_strat * len(MODES),
        "rounds": n_rounds,
        "wall_s": wall,
        "cpu_s": med["cpu_s"],
        "concept_rounds_per_s": len(concepts) * n_rounds / wall,
        "unit_rounds_per_s": len(concepts) * n_strat * len(MODES) * n_rounds / wall,
        "plain_estimate_s": est["estimated_wall_s"] if est else None,
        "speedup_vs_estimate": est["estimated_product_speedup"] if est else None,
        "load_1m": _load_cell(prod),
    }
    print()
    cm.print_table(
        [summary],
        title=f"ImageNet-like synthetic, product end to end (wall: median of {args.repeats}; target <= {TARGET_IMAGENET_S:.0f}s"
        " for 450 concepts on 800k rows; plain_estimate_s is an ESTIMATE)",
    )
    print()
    cm.print_table(rows, title="SEALS vs All at the final budget, per strategy (product)")
    phase_rows = print_phases(
        last["phases"], last["wall_s"], "product phases (last repeat, RUN/timings.json)", last["plan"]
    )
    full = not args.quick and not args.concepts
    met = wall <= TARGET_IMAGENET_S if full else None
    if full:
        print(f"\nwall {wall:.0f}s (target <= {TARGET_IMAGENET_S:.0f}s: {'met' if met else 'NOT met'})")
    cm.write_json(
        args.out,
        NAME,
        args,
        rows,
        experiment="imagenet",
        target={"wall_s": TARGET_IMAGENET_S},
        met=met,
        summary=summary,
        store=store_path,
        concepts=concepts,
        budget=budget,
        product_phases=phase_rows,
        plain_estimate=est,
        measurements=[{k: v for k, v in e.items() if k not in ("metrics", "round0")} for e in prod],
        load_end=_load(),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [BASELINE_FLAG]:
        return baseline_main(argv[1])
    p = cm.make_parser(NAME, __doc__)
    p.add_argument("--experiment", choices=["wordnet", "imagenet"], default="wordnet")
    p.add_argument("--store", type=Path, default=None, help="an already built WordNet store (wordnet)")
    p.add_argument(
        "--wordnet-parquet",
        type=Path,
        default=cm.ROOT.parent / "shared" / "data" / "wordnet_noun_minilm.parquet",
        help="embedded WordNet parquet to import when there is no store (default ../shared/data/...)",
    )
    p.add_argument("--cache", type=Path, default=cm.OUT_DIR / "cache", help="where built stores are kept")
    p.add_argument("--runs-dir", type=Path, default=cm.OUT_DIR / "sweep", help="run folders, specs, logs")
    p.add_argument(
        "--concepts",
        type=int,
        default=None,
        help="wordnet: concepts in all, split over the two bands (default 20; --quick 5); imagenet: the first N",
    )
    p.add_argument(
        "--budget", type=int, default=None, help="T, seed set included (default 2000; wordnet --quick 1000)"
    )
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", default="maxent,mlp,id", help="imagenet only (wordnet is maxent)")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="plain-loop variants for wordnet: graph,per-round"
    )
    p.add_argument(
        "--workers", type=int, default=_usable_cores(), help="plain-loop worker processes (default: cores)"
    )
    p.add_argument("--run-args", default="", help='extra arguments for `seals-gpu run`, e.g. "--device cpu"')
    p.add_argument("--no-estimate", action="store_true", help="imagenet: skip the timed plain-loop subset")
    p.add_argument("--estimate-concepts", type=int, default=5, help="imagenet: concepts in that subset")
    args = cm.parse(p, argv)
    args.repeats = args.repeats or 1
    if args.experiment == "imagenet" and args.out == cm.OUT_DIR / f"{NAME}.json":
        args.out = cm.OUT_DIR / f"{NAME}_imagenet.json"
    for v in args.variants.split(","):
        if v and v not in VARIANTS:
            p.error(f"--variants: {v!r} is not one of {','.join(VARIANTS)}")
    print(f"machine: {cm.describe_machine(cm.machine())}; load {_load()}", flush=True)
    return wordnet(args) if args.experiment == "wordnet" else imagenet(args)


if __name__ == "__main__":
    raise SystemExit(main())
