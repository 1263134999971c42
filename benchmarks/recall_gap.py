"""Where SEALS's recall goes: how much of the SEALS-vs-All recall gap is geometry no kNN pool can reach, and
how much is the method.

SEALS labels only items that entered its pool, and an item enters the pool only as one of the k nearest
train neighbours of a labeled item. So a train positive is, for a concept:

* **seed-reachable**: in the closure of the seed positives under "is among the k nearest train neighbours
  of a positive" (the sub-clusters the seed touches and everything chained to them through positives);
* **linked**: among the k nearest neighbours of some other positive, but not chained to a seed positive (an
  unseeded sub-cluster: SEALS reaches it only through a labeled negative that happens to neighbour it);
* **isolated**: no positive has it among its k nearest neighbours (a scattered positive, drawn like the
  background: reachable only through negatives).

For a finished run holding ``seals`` and ``all`` units of the same concepts and strategy, this script counts
each unit's found positives in each class and splits the recall gap ``All - SEALS`` into the three classes.
The gap inside the seed-reachable class is the method's (SEALS had the positives within reach and did not
label them); the gap in the other two classes is the geometry's (All scores every item and can stumble on
positives no neighbour chain leads to).

Usage::

    python benchmarks/recall_gap.py RUN STORE [--concepts 45] [--strategy maxent] [--k 100]

Writes ``benchmarks/out/recall_gap.json`` and prints the table. The kNN lists are exact (FAISS
``IndexFlatIP`` over the train rows, l2-normalised), one query per train positive of the chosen concepts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

from seals_gpu.store import Store  # noqa: E402

CLASSES = ("seed_reachable", "linked", "isolated")


def classify(pos: np.ndarray, nbrs: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray]:
    """Split the sorted positive ids ``pos`` into the three classes (see the module docstring).

    ``nbrs[i]`` are the k nearest train neighbours (ids) of ``pos[i]``; ``seeds`` the seed positives."""
    index = {int(p): i for i, p in enumerate(pos.tolist())}
    out_edges = [[index[j] for j in row.tolist() if j in index and j != pos[i]] for i, row in enumerate(nbrs)]
    linked = np.zeros(pos.size, bool)
    for edges in out_edges:
        linked[edges] = True
    reach = np.zeros(pos.size, bool)
    stack = [index[int(s)] for s in seeds.tolist() if int(s) in index]
    reach[stack] = True
    while stack:
        for j in out_edges[stack.pop()]:
            if not reach[j]:
                reach[j] = True
                stack.append(j)
    return {
        "seed_reachable": pos[reach],
        "linked": pos[linked & ~reach],
        "isolated": pos[~linked & ~reach],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run folder with seals and all units")
    p.add_argument("store", type=Path)
    p.add_argument("--concepts", type=int, default=45, help="the first N concepts of the run")
    p.add_argument("--strategy", default="maxent")
    p.add_argument("--k", type=int, default=100, help="the run's k (neighbours per labeled item)")
    p.add_argument("--out", type=Path, default=cm.OUT_DIR / "recall_gap.json")
    args = p.parse_args(argv)
    import faiss

    t0 = time.perf_counter()
    cfg = json.loads((args.run / "config.json").read_text())
    concepts = list(cfg["concepts"])[: args.concepts]
    sel = pq.read_table(args.run / "selections.parquet")
    sel = sel.filter(pc.equal(sel["strategy"], args.strategy))
    store = Store(args.store)
    all_ids, is_test = store.read_split()
    train = np.sort(all_ids[~is_test])
    positives = store.concept_positives(concepts)
    xt = store.take(train)
    index = faiss.IndexFlatIP(xt.shape[1])
    index.add(xt)

    rows: list[dict[str, Any]] = []
    totals = {m: dict.fromkeys(CLASSES, 0) for m in ("seals", "all")}
    n_total = dict.fromkeys(CLASSES, 0)
    for c in concepts:
        pos = np.intersect1d(positives[c], train)
        _, I = index.search(store.take(pos), args.k + 1)  # + 1: a positive is its own nearest neighbour
        nbrs = np.where(I >= 0, train[np.maximum(I, 0)], np.iinfo(np.int64).min)
        mine = sel.filter(pc.equal(sel["concept"], c))
        seed = mine.filter(pc.equal(mine["round"], 0))
        seeds = np.unique(seed.filter(seed["label"])["id"].to_numpy())
        cls = classify(pos, nbrs, seeds)
        row: dict[str, Any] = {"concept": c, "n_pos_train": int(pos.size)}
        for name in CLASSES:
            row[f"n_{name}"] = int(cls[name].size)
            n_total[name] += int(cls[name].size)
        for mode in ("seals", "all"):
            m = mine.filter(pc.equal(mine["mode"], mode))
            found = np.unique(m.filter(m["label"])["id"].to_numpy())
            for name in CLASSES:
                k = int(np.isin(cls[name], found).sum())
                row[f"{mode}_{name}"] = k
                totals[mode][name] += k
            row[f"{mode}_recall"] = float(np.isin(pos, found).mean())
        rows.append(row)
        print(
            f"  concept {c}: {pos.size} positives, reachable/linked/isolated "
            f"{row['n_seed_reachable']}/{row['n_linked']}/{row['n_isolated']}; "
            f"seals {row['seals_recall']:.3f} all {row['all_recall']:.3f}",
            flush=True,
        )

    P = max(1, sum(n_total.values()))
    seals_r = sum(totals["seals"].values()) / P
    all_r = sum(totals["all"].values()) / P
    table = []
    for name in CLASSES:
        table.append(
            {
                "class": name,
                "share_of_positives": n_total[name] / P,
                "seals_recall_in_class": totals["seals"][name] / max(n_total[name], 1),
                "all_recall_in_class": totals["all"][name] / max(n_total[name], 1),
                "gap_contribution": (totals["all"][name] - totals["seals"][name]) / P,
            }
        )
    print(
        f"\n{len(concepts)} concepts, {args.strategy}, k={args.k}: recall SEALS {seals_r:.3f}, All {all_r:.3f}"
    )
    print("| class | share of positives | SEALS recall in class | All recall in class | gap (All - SEALS) |")
    print("|---|---|---|---|---|")
    for t in table:
        print(
            f"| {t['class']} | {t['share_of_positives']:.3f} | {t['seals_recall_in_class']:.3f} | "
            f"{t['all_recall_in_class']:.3f} | {t['gap_contribution']:+.3f} |"
        )
    cm.write_json(
        args.out,
        "recall_gap",
        args,
        table,
        strategy=args.strategy,
        concepts=len(concepts),
        seals_recall=seals_r,
        all_recall=all_r,
        per_concept=rows,
        seconds=time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
