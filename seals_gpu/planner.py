"""The planner: how a run finds neighbours, decided from the work ahead, said out loud, overridable.

A SEALS run searches the k nearest train neighbours of every newly labeled id. How much searching that is
follows from the configuration before anything runs: at most ``concepts x seed set + SEALS units x
(budget - seed set)`` distinct queries (strategies of one concept share the seed set; later picks mostly
differ), each against the ``n_train`` rows. The planner compares the multiply-adds of exact search with an
IVF search (a k-means build, then ``~1/6`` of the rows per query at the recall target, with a 2x allowance
for its bookkeeping) and picks the cheaper; small stores always get exact search. It never picks for the
user when they said: ``--graph`` (lookups in a precomputed graph), ``--search flat|ivf``, an ``--index``
of kind ivfpq (its own search), or a GPU (exact torch search is the fast path there).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .index.subset import default_nlist

SEARCH_CHOICES = ("auto", "flat", "ivf")
# Below these, exact search costs well under a second in all: no index worth building.
SMALL_ROWS = 20_000
SMALL_WORK = 2e10  # multiply-adds
IVF_FRACTION = 1 / 6  # share of the rows an IVF search reads at ~0.95 recall@100 (MiniLM text, synthetic)
IVF_OVERHEAD = 2.0  # its per-list bookkeeping, relative to the same work done as one GEMM
# Keeping the best k of every (query, row) similarity costs about this many multiply-adds' time: at d = 64
# exact search of 2,400 queries over 800k rows took 11.7 s on 2 cores, mostly in FAISS's top-k heaps.
SELECT_COST = 64
BUILD_WEIGHT = 0.25  # k-means and list assignment are large dense GEMMs: ~4x the search's rate


@dataclass(frozen=True)
class SearchPlan:
    """``method``: "flat" (exact over train rows), "ivf" (GEMM-batched IVF over train rows, nprobe
    calibrated to ``recall``), "graph", "index" (the built index's own search) or "none" (no SEALS unit).
    ``reason``: one sentence for the run log."""

    method: str
    reason: str
    recall: float = 0.95
    queries: int = 0
    precompute: bool = False  # search every train row once up front (a graph in memory, cached for reuse)

    def describe(self) -> str:
        pre = (
            "; every train row's neighbours up front (more queries than train rows)"
            if self.precompute
            else ""
        )
        return f"{self.method} ({self.reason}{pre})"


def expected_queries(*, concepts: int, seals_units: int, seed_size: int, budget: int) -> int:
    """Upper bound on the distinct ids a run searches the neighbours of."""
    return int(concepts * seed_size + seals_units * max(0, budget - seed_size))


def plan_search(
    *,
    requested: str,
    n_train: int,
    dim: int,
    concepts_with_seals: int,
    seals_units: int,
    seed_size: int,
    budget: int,
    recall: float,
    device_kind: str = "cpu",
    graph: bool = False,
    index_kind: str | None = None,
) -> SearchPlan:
    """Choose how neighbours are found (see the module docstring)."""
    if requested not in SEARCH_CHOICES:
        raise ConfigError(f"--search {requested!r}: choose one of {', '.join(SEARCH_CHOICES)}")
    if not (0.0 < recall <= 1.0):
        raise ConfigError(f"--search-recall {recall}: must be in (0, 1]; 0.95 is a good default")
    q = expected_queries(
        concepts=concepts_with_seals, seals_units=seals_units, seed_size=seed_size, budget=budget
    )
    if seals_units == 0:
        return SearchPlan("none", "no SEALS unit: nothing to search", recall, 0)
    if graph:
        return SearchPlan("graph", "--graph given: pools grow by lookup", recall, q)
    pre = q >= n_train
    if requested != "auto":
        return SearchPlan(requested, f"--search {requested}", recall, q, pre)
    if index_kind == "ivfpq":
        return SearchPlan("index", "the --index is IVF-PQ: its own search, test rows filtered", recall, q)
    if device_kind == "cuda":
        return SearchPlan("flat", "GPU: exact search by matmul is the fast path", recall, q)
    flat_work = float(q) * n_train * dim
    if n_train < SMALL_ROWS or flat_work < SMALL_WORK:
        return SearchPlan(
            "flat",
            f"{q:,} queries x {n_train:,} train rows is small: exact search ({flat_work:.1e} multiply-adds)",
            recall,
            q,
        )
    # a graph of every train row bounds the queries; each (query, row) pair costs d + SELECT_COST
    flat_work = float(min(q, n_train)) * n_train * (dim + SELECT_COST)
    nlist = default_nlist(n_train)
    build = BUILD_WEIGHT * (64.0 * nlist * nlist * dim * 12 + float(n_train) * nlist * dim)
    ivf_work = build + flat_work * IVF_FRACTION * IVF_OVERHEAD
    if ivf_work < 0.5 * flat_work:
        return SearchPlan(
            "ivf",
            f"{q:,} queries x {n_train:,} train rows: exact search {flat_work:.1e} multiply-adds, "
            f"IVF ~{ivf_work:.1e} with its build (recall target {recall:g}; --search flat for exact)",
            recall,
            q,
            pre,
        )
    return SearchPlan(
        "flat", f"exact search ({flat_work:.1e} multiply-adds) is not worth an IVF build here", recall, q, pre
    )
