"""Markdown tables of the benchmark JSON in ``benchmarks/out`` (date, command, machine, rows), to paste into
``benchmarks/RESULTS.md`` after a run on a new machine.

    python benchmarks/results_md.py                      # every NAME.json / NAME_full.json found
    python benchmarks/results_md.py benchmarks/out/index_full.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common as cm

COLUMNS = {
    "latency": [
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
    ],
    "concurrency": [
        "concepts",
        "batched_round_s",
        "sequential_round_s",
        "batched_cr_per_s",
        "sequential_cr_per_s",
        "speedup",
        "batched_fit_s",
        "sequential_fit_s",
        "singles_timed",
    ],
    "learner": [
        "case",
        "units",
        "labels",
        "dim",
        "ours_s",
        "sklearn_s",
        "speedup",
        "ours_iters_mean",
        "sklearn_iters_mean",
        "max_dp_vs_sklearn",
        "max_dp_vs_tight",
        "grad_ours",
        "grad_sklearn",
    ],
    "index": [
        "index",
        "nlist",
        "nprobe",
        "rerank",
        "build_s",
        "train_s",
        "add_s",
        "peak_extra_mib",
        "index_mib",
        "recall",
        "qps",
        "qps_x",
    ],
    "id": [
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
    ],
    "paper": [
        "band",
        "k",
        "kind",
        "strategy",
        "mode",
        "n_concepts",
        "test_ap",
        "recall",
        "pool_fraction",
        "test_ap_gap",
        "recall_gap",
        "select_speedup",
        "seconds_select",
    ],
    "scale_model": [
        "n",
        "method",
        "shards",
        "gpus",
        "fit_s@500",
        "search_s@500",
        "select_s@500",
        "round_s@500",
        "round_s@1900",
        "sweep_h",
    ],
}


def section(path: Path) -> str:
    d = cm.read_json(path)
    if d is None:
        return f"<!-- {path}: unreadable -->"
    name = d.get("benchmark", path.stem)
    cols = COLUMNS.get(name) or list(d["rows"][0]) if d.get("rows") else []
    lines = [
        f"### {name} ({path.name})",
        "",
        f"- date: {d['date']}",
        f"- command: `{d['command']}`",
        f"- machine: {cm.describe_machine(d['machine'])}",
        "",
        cm.md_table(d["rows"], cols),
    ]
    if d.get("checks"):
        keys = list(dict.fromkeys(k for c in d["checks"] for k in c))
        lines += ["", cm.md_table(d["checks"], keys)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    paths = [Path(a) for a in args] or sorted(cm.OUT_DIR.glob("*.json"))
    print("\n\n".join(section(p) for p in paths if not p.name.endswith(".tmp")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
