"""What a run is told before its first round: ``check_k``'s sizes and limits, and ``Run.__init__``'s planner
and backend arguments, defaults, starting state, units, split checks and messages.

Session 12 ran mutmut over every mutant of ``check_k`` and ``Run.__init__`` (the functions where the fresh
draws of seeds 3 and 4 kept finding survivors); these tests state, as properties of a run, what those
mutants changed: the planner sees the run's true shape (SEALS units, concepts, index kind, graph, device),
the local backend searches with the plan's method, the run's k and recall and leaves the sorted test ids
out, a cached search is keyed by what it depends on, and a refused setting names its value and the fix.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from seals_gpu import driver
from seals_gpu.cache import ids_digest
from seals_gpu.config import RunConfig
from seals_gpu.device import resolve_device
from seals_gpu.driver import NEIGHBOR_SLOT_BYTES, Run, check_k
from seals_gpu.errors import ConfigError
from seals_gpu.graph import KnnGraph, build_graph
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.index.build import LocalIndex
from seals_gpu.planner import SearchPlan
from seals_gpu.store import write_store
from seals_gpu.synth import make_synthetic_store

from .conftest import run_object as _run
from .conftest import unit_rows as _unit

SMALL = dict(k=5, batch=10, budget=40, seed_positives=2, seed_negatives=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    """A two-concept store with a flat index, an IVF-PQ index and a kNN graph over it."""
    root = tmp_path_factory.mktemp("run_setup")
    store = make_synthetic_store(root / "s", n=1200, dim=8, concepts=2, prevalence=(0.03, 0.05), seed=5)
    flat = build_index(store, root / "flat", IndexSpec(kind="flat", shards=2))
    ivfpq = build_index(store, root / "ivfpq", IndexSpec(kind="ivfpq", nlist=8, pq_m=4, shards=1))
    graph_dir = build_graph(flat.path, k=6)
    ids, is_test = store.read_split()
    return SimpleNamespace(
        store=store,
        flat=LocalIndex.open(flat.path),
        ivfpq=LocalIndex.open(ivfpq.path),
        graph=KnnGraph.open(graph_dir),
        test_ids=np.sort(ids[is_test]),
        train_ids=np.sort(ids[~is_test]),
    )


def _config(store, **settings: Any) -> RunConfig:
    return RunConfig(store=str(store.path), store_fingerprint=store.fingerprint, **settings)


def _spy(monkeypatch, name: str) -> list[tuple[tuple, dict]]:
    """Record every call of ``driver.<name>`` (the real one still runs)."""
    calls: list[tuple[tuple, dict]] = []
    real = getattr(driver, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, name, spy)
    return calls


# ------------------------------------------------------------------------------------------------ check_k
@pytest.mark.parametrize(
    ("precompute", "every_row", "queries", "rows"),
    [
        (False, False, 30, 30),  # the ids it will search
        (False, False, 0, 1),  # at least one row
        (False, False, 5000, 400),  # never more than the train rows
        (True, False, 30, 400),  # every train row searched up front
        (False, True, 30, 400),  # id-knn: every train row scored by its neighbours
        (True, True, 30, 400),
    ],
)
def test_the_neighbour_table_is_sized_by_the_rows_it_can_hold_and_refused_only_past_the_free_memory(
    monkeypatch, precompute: bool, every_row: bool, queries: int, rows: int
) -> None:
    """The table holds ``NEIGHBOR_SLOT_BYTES`` per neighbour of each searched row: a table exactly the size of
    the free memory is accepted, one byte less memory is refused with both sizes named; unknown free memory
    refuses nothing."""
    n_train, k = 400, 7
    plan = SearchPlan("flat", "test", queries=queries, precompute=precompute)
    need = rows * k * NEIGHBOR_SLOT_BYTES
    cfg = SimpleNamespace(k=k)
    monkeypatch.setattr(driver, "available_memory", lambda: need)
    check_k(cfg, plan, n_train, every_row=every_row)
    monkeypatch.setattr(driver, "available_memory", lambda: need - 1)
    with pytest.raises(ConfigError) as err:
        check_k(cfg, plan, n_train, every_row=every_row)
    assert str(err.value) == (
        f"--k {k} needs about {need / 2**30:.1f} GiB for the neighbours of up to {rows:,} rows, more than the "
        f"{(need - 1) / 2**30:.1f} GiB of memory available; lower --k"
    )
    monkeypatch.setattr(driver, "available_memory", lambda: None)
    check_k(cfg, plan, n_train, every_row=every_row)


def test_a_plain_check_k_sizes_only_the_searched_rows(monkeypatch) -> None:
    """``every_row`` is off unless asked: memory for the plan's queries is enough."""
    plan = SearchPlan("flat", "test", queries=10)
    monkeypatch.setattr(driver, "available_memory", lambda: 10 * 3 * NEIGHBOR_SLOT_BYTES)
    check_k(SimpleNamespace(k=3), plan, 1000)
    with pytest.raises(ConfigError, match="up to 1,000 rows"):
        check_k(SimpleNamespace(k=3), plan, 1000, every_row=True)


def test_the_memory_message_reports_gib_to_one_decimal(monkeypatch) -> None:
    """3 GiB free against a 6.3 GiB table: both figures as a user reads them."""
    plan = SearchPlan("flat", "test", precompute=True)
    monkeypatch.setattr(driver, "available_memory", lambda: 3 << 30)
    with pytest.raises(ConfigError) as err:
        check_k(SimpleNamespace(k=50), plan, 11_300_000)  # 11.3e6 x 50 x 12 bytes = 6.31 GiB
    assert str(err.value) == (
        "--k 50 needs about 6.3 GiB for the neighbours of up to 11,300,000 rows, more than the 3.0 GiB of "
        "memory available; lower --k"
    )


def test_a_k_past_the_other_train_rows_names_how_many_there_are(monkeypatch) -> None:
    monkeypatch.setattr(driver, "available_memory", lambda: None)
    with pytest.raises(ConfigError) as err:
        check_k(SimpleNamespace(k=12), SearchPlan("flat", "test"), 10)
    assert str(err.value) == (
        "--k 12 is more than the 9 neighbours a train row can have (the other train rows); "
        "lower --k to at most 9"
    )


# ------------------------------------------------------------------------------------------ the planner
def test_the_planner_is_told_the_runs_true_shape(setup, tmp_path, monkeypatch) -> None:
    """SEALS units = SEALS modes x strategies x concepts; concepts searched only when a SEALS unit exists;
    the index kind of the in-process index ("flat" when none is given), none for a given backend; the graph;
    the device."""
    calls = _spy(monkeypatch, "plan_search")
    n_train = setup.train_ids.size
    common = dict(requested="auto", n_train=n_train, dim=8, seed_size=10, budget=40, recall=0.95)
    common["device_kind"] = "cpu"

    a = _run(setup.store, tmp_path / "a", concepts=(0, 1), strategies=("mlp", "maxent"), modes=("seals", "all"),
             **SMALL)  # fmt: skip
    assert calls[-1] == (
        (),
        dict(common, concepts_with_seals=2, seals_units=4, graph=False, index_kind="flat"),
    )
    _run(setup.store, tmp_path / "b", concepts=(0, 1), strategies=("mlp", "maxent"), modes=("seals",),
         index=setup.ivfpq, search_recall=0.9, **SMALL)  # fmt: skip
    assert calls[-1] == (
        (),
        dict(common, recall=0.9, concepts_with_seals=2, seals_units=4, graph=False, index_kind="ivfpq"),
    )
    _run(setup.store, tmp_path / "c", concepts=(1,), strategies=("mlp",), modes=("all",), index=setup.flat,
         search="flat", **SMALL)  # fmt: skip
    assert calls[-1] == (
        (),
        dict(common, requested="flat", concepts_with_seals=0, seals_units=0, graph=False, index_kind="flat"),
    )
    _run(setup.store, tmp_path / "d", concepts=(0,), strategies=("mlp",), modes=("seals",), backend=a.backend,
         graph=setup.graph, **SMALL)  # fmt: skip
    assert calls[-1] == (
        (),
        dict(common, concepts_with_seals=1, seals_units=1, graph=True, index_kind=None),
    )


# ------------------------------------------------------------------------------------------ the backend
@pytest.mark.parametrize(
    ("settings", "plan_method", "search_method"),
    [
        (dict(modes=("seals",)), "flat", "flat"),
        (dict(modes=("seals",), search="ivf", search_recall=0.9), "ivf", "ivf"),
        (dict(modes=("seals",), index="ivfpq"), "index", "index"),
        # the graph answers every neighbour lookup: the backend is left at flat, its search unused for them
        (dict(modes=("seals",), index="flat", graph=True), "graph", "flat"),
        (dict(modes=("all",)), "none", "flat"),  # no SEALS unit: All mode needs no search
    ],
)
def test_the_local_backend_searches_as_planned_without_the_test_rows(
    setup, tmp_path, monkeypatch, settings: dict, plan_method: str, search_method: str
) -> None:
    settings = dict(settings)
    index = {"ivfpq": setup.ivfpq, "flat": setup.flat, None: None}[settings.pop("index", None)]
    graph = setup.graph if settings.pop("graph", False) else None
    calls = _spy(monkeypatch, "LocalBackend")
    log = print
    r = _run(setup.store, tmp_path / "r", concepts=(0,), strategies=("mlp",), index=index, graph=graph, log=log,
             **settings, **dict(SMALL, k=4))  # fmt: skip
    assert r.plan.method == plan_method
    ((args, kwargs),) = calls
    if index is None:  # the store's rows, in memory
        assert args[0].manifest["shards"][0]["dir"] is None and len(args[0].shards) == 1
    else:
        assert args[0] is index
    assert args[1] is r.device
    excluded = kwargs.pop("excluded")
    assert excluded.dtype == np.int64 and np.array_equal(excluded, setup.test_ids)
    assert kwargs == dict(
        search_method=search_method,
        search_recall=settings.get("search_recall", 0.95),
        search_k=4,
        cache_key=r.cache_key,
        log=log,
    )
    assert r.backend.split is r.split


def test_a_cached_search_is_keyed_by_what_it_depends_on(setup, tmp_path) -> None:
    """Caching is on by default; its key names the store, the test ids, the index and the planned method; a
    backend given from outside (one this run did not build) and ``cache=False`` have no key."""
    cfg = _config(setup.store, concepts=(0,), strategies=("mlp",), modes=("seals",), **SMALL)
    r = Run(cfg, tmp_path / "a", store=setup.store, device=resolve_device("cpu"), log=lambda *_: None)
    assert r.cache_key == {
        "store": setup.store.fingerprint,
        "test": ids_digest(setup.test_ids),
        "index": "in-memory",
        "shards": 1,
        "method": r.plan.method,
    }
    on_disk = Run(cfg, tmp_path / "b", store=setup.store, index=setup.flat, device=resolve_device("cpu"))
    assert on_disk.cache_key["index"] == str(setup.flat.path.resolve()) and on_disk.cache_key["shards"] == 2
    off = Run(cfg, tmp_path / "c", store=setup.store, cache=False, device=resolve_device("cpu"))
    assert off.cache_key is None
    given = Run(cfg, tmp_path / "d", store=setup.store, backend=r.backend, device=resolve_device("cpu"))
    assert given.cache_key is None and given.backend is r.backend


# ------------------------------------------------------------------------------- defaults and initial state
def test_a_run_keeps_what_it_was_given_and_defaults_to_the_auto_device(setup, tmp_path) -> None:
    cfg = _config(setup.store, concepts=(0,), strategies=("mlp",), modes=("seals",), **SMALL)
    lines: list[str] = []
    log = lines.append
    r = Run(cfg, str(tmp_path / "r"), store=setup.store, log=log)
    assert r.config is cfg and r.store is setup.store and r.log is log
    assert r.out == tmp_path / "r" and isinstance(r.out, Path)
    assert r.progress is True
    assert r.device == resolve_device("auto")


def test_a_new_run_starts_before_its_seed_round_with_nothing_recorded(setup, tmp_path) -> None:
    r = _run(setup.store, tmp_path / "r", concepts=(0,), strategies=("mlp",), modes=("seals",), **SMALL)
    assert r.round == -1 and r.already_finished is False
    assert r.model is None and r.pending is None and r.awaiting is None
    assert r.metrics == [] and r.selections == [] and r.known == {} and r._probe_rows == {}
    assert r.timings == {
        "seed": 0.0, "fit": 0.0, "search": 0.0, "select": 0.0, "label": 0.0, "record": 0.0, "checkpoint": 0.0
    }  # fmt: skip
    assert r._precomputed is False and r._nbr.k == 5 and len(r._nbr._keys) == 0
    assert r.graph is None and r.seed_file is None


def test_units_follow_concept_strategy_mode_order_with_their_train_positives(setup, tmp_path) -> None:
    """One unit per (concept, strategy, mode), numbered in that order; each knows its concept's train
    positives; id units start with a zero float64 reference sum; AP groups each concept's units with its
    test positives."""
    r = _run(setup.store, tmp_path / "r", concepts=(1, 0), strategies=("id", "mlp"), modes=("seals", "all"),
             **SMALL)  # fmt: skip
    positives = setup.store.concept_positives([0, 1])
    train = {c: np.intersect1d(positives[c], setup.train_ids) for c in (0, 1)}
    test = {c: np.intersect1d(positives[c], setup.test_ids) for c in (0, 1)}
    expected = [
        (i, c, s, m, int(train[c].size))
        for i, (c, s, m) in enumerate(
            (c, s, m) for c in (1, 0) for s in ("id", "mlp") for m in ("seals", "all")
        )
    ]
    assert [(u.index, u.concept, u.strategy, u.mode, u.n_pos_train) for u in r.units] == expected
    for u in r.units:
        if u.strategy == "id":
            assert u.ref_sum.dtype == np.float64 and np.array_equal(u.ref_sum, np.zeros(8))
        else:
            assert u.ref_sum is None
    for c in (0, 1):
        assert np.array_equal(np.sort(r._train_pos[c]), train[c])
        assert np.array_equal(np.sort(r._test_pos[c]), test[c])
    assert [(g.dtype, g.tolist()) for g, _ in r._ap_groups] == [
        (np.int64, [0, 1, 2, 3]),
        (np.int64, [4, 5, 6, 7]),
    ]
    for (_, t), c in zip(r._ap_groups, (1, 0), strict=True):
        assert np.array_equal(np.sort(t), test[c])
    assert r.positives.keys() == r.oracle.positives.keys() == {0, 1}
    for c in (0, 1):
        assert np.array_equal(np.sort(r.positives[c]), np.sort(positives[c]))
        assert np.array_equal(r.oracle.positives[c], np.sort(positives[c]))


# ----------------------------------------------------------------------------------- checks and messages
def _tiny_store(path: Path, split: list[str], labels: list[list[str]] | None = None):
    n = len(split)
    ids = np.arange(n, dtype=np.int64) * 3 + 100
    labels = labels if labels is not None else [["a"] if i % 5 == 0 else [] for i in range(n)]
    return write_store(path, ids, _unit(n, 4), labels=labels, split=split)


@pytest.mark.parametrize(("n_train", "n_test"), [(0, 20), (20, 0)])
def test_a_split_without_train_or_test_rows_is_refused(tmp_path, n_train: int, n_test: int) -> None:
    store = _tiny_store(tmp_path / "s", ["train"] * n_train + ["test"] * n_test)
    with pytest.raises(ConfigError) as err:
        _run(store, tmp_path / "r", concepts=("a",), strategies=("mlp",), modes=("all",), k=1, batch=2,
             budget=4, seed_positives=1, seed_negatives=1)  # fmt: skip
    assert str(err.value) == (
        f"store {store.path} needs both train and test rows; its split gives {n_train} train and {n_test} test"
    )


def test_a_budget_of_every_train_row_is_allowed_and_one_more_is_refused(tmp_path) -> None:
    store = _tiny_store(tmp_path / "s", ["train"] * 30 + ["test"] * 10)
    common = dict(concepts=("a",), strategies=("mlp",), modes=("all",), k=1, batch=5, seed_positives=1)
    _run(store, tmp_path / "r", budget=30, seed_negatives=1, **common)
    with pytest.raises(ConfigError) as err:
        _run(store, tmp_path / "r", budget=31, seed_negatives=1, **common)
    assert str(err.value) == (
        f"--budget 31 is more than the 30 train rows of {store.path}: no unit can label more than the train "
        "split; lower --budget to at most 30"
    )


def test_k_is_checked_only_for_runs_that_search_neighbours(setup, tmp_path, monkeypatch) -> None:
    """An All-mode run of a strategy that searches nothing takes any k; a SEALS run, and id-knn in either
    mode (it scores rows by their neighbours), must fit k in the train rows."""
    n_train = setup.train_ids.size
    big = dict(SMALL, k=n_train)
    _run(setup.store, tmp_path / "a", concepts=(0,), strategies=("mlp", "id"), modes=("all",), **big)
    for strategies, modes in [(("mlp",), ("seals",)), (("id-knn",), ("all",)), (("id-knn",), ("seals",))]:
        with pytest.raises(ConfigError, match=rf"^--k {n_train} is more than the {n_train - 1} neighbours"):
            _run(setup.store, tmp_path / "b", concepts=(0,), strategies=strategies, modes=modes, **big)


def test_id_knn_needs_a_graph_only_in_all_mode(setup, tmp_path) -> None:
    common = dict(concepts=(0,), strategies=("id-knn",), **SMALL)
    _run(setup.store, tmp_path / "a", modes=("seals",), **common)
    with_graph = _run(setup.store, tmp_path / "b", modes=("all", "seals"), graph=setup.graph, **common)
    assert with_graph.graph is setup.graph
    with pytest.raises(ConfigError) as err:
        _run(setup.store, tmp_path / "c", modes=("seals", "all"), **common)
    assert str(err.value) == (
        "id-knn in All mode needs every item's neighbours: build a graph with `seals-gpu index graph` and pass "
        "--graph, or use id / id-pairwise"
    )


def test_a_concept_without_test_positives_is_run_with_one_warning(tmp_path) -> None:
    """A concept whose one positive is in the train split is accepted (one positive is enough to seed it) and
    warned about, once, by name; a concept with test positives is not."""
    split = ["train"] * 30 + ["test"] * 10
    labels = [(["a"] if i % 5 == 0 else []) + (["b"] if i == 7 else []) for i in range(40)]
    store = _tiny_store(tmp_path / "s", split, labels)
    lines: list[str] = []
    r = _run(store, tmp_path / "r", concepts=("a", "b"), strategies=("mlp",), modes=("all",), k=1, batch=5,
             budget=10, seed_positives=1, seed_negatives=2, log=lambda *m: lines.append(" ".join(map(str, m))))  # fmt: skip
    assert [u.n_pos_train for u in r.units] == [6, 1]
    assert lines == [
        "warning: concept 'b' has no positive in the test split: its test AP is undefined (NaN, left out of the "
        "means); its recall is still measured. Pick another concept for AP"
    ]


def test_a_store_without_labels_warns_of_nothing_and_has_no_positives(tmp_path) -> None:
    """``--oracle queue`` over an unlabeled store with ``--seed-ids``: no ground truth, so no positives and
    no warning about test positives."""
    n = 40
    ids = np.arange(n, dtype=np.int64) * 3 + 100
    store = write_store(tmp_path / "s", ids, _unit(n, 4), split=["train"] * 30 + ["test"] * 10)
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(f"concept,id,label\na,{ids[0]},1\na,{ids[1]},0\n")
    lines: list[str] = []
    r = _run(store, tmp_path / "r", concepts=("a",), strategies=("mlp",), modes=("all",), k=1, batch=5,
             budget=10, seed_positives=1, seed_negatives=2, seed_ids=str(seeds),
             log=lambda *m: lines.append(" ".join(map(str, m))))  # fmt: skip
    assert lines == []
    assert r.positives["a"].dtype == np.int64 and r.positives["a"].size == 0
    assert r.known == {("a", int(ids[0])): True, ("a", int(ids[1])): False}
    assert r.seed_file["a"][0].tolist() == [ids[0]] and r.seed_file["a"][1].tolist() == [ids[1]]


def test_seed_ids_replace_the_seed_set_check(tmp_path) -> None:
    """With ``--seed-ids`` the file's positives seed the concept, so a concept with fewer train positives than
    ``--seed-positives`` is accepted; without it, refused."""
    split = ["train"] * 30 + ["test"] * 10
    labels = [["a"] if i in (2, 35) else [] for i in range(40)]
    store = _tiny_store(tmp_path / "s", split, labels)
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("concept,id,label\na,106,1\na,100,0\n")  # ids[2] = 106 is a's one train positive
    common = dict(concepts=("a",), strategies=("mlp",), modes=("all",), k=1, batch=5, budget=10)
    common.update(seed_positives=3, seed_negatives=2)
    r = _run(store, tmp_path / "a", seed_ids=str(seeds), **common)
    assert r.known == {("a", 106): True, ("a", 100): False}
    with pytest.raises(ConfigError) as err:
        _run(store, tmp_path / "b", **common)
    assert str(err.value) == (
        "concept 'a' has 1 train positives, fewer than --seed-positives 3; lower --seed-positives or choose "
        "another concept"
    )
