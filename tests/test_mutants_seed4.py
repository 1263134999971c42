"""Seed 4 of ``make mutate-sample`` (session 11: store, driver, learner and atomic drawn afresh after the
tests for seeds 0-3): one test per real survivor, each the property a user relies on, naming the mutant it
kills; the survivors nothing can observe are in ``benchmarks/mutation_equivalent.json`` with the reason.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from seals_gpu.store import Store, write_store

from .conftest import run_object
from .conftest import unit_rows as _unit


# -------------------------------------------------------------------------------------------------- store
def test_validate_counts_rescaled_rows_in_every_file_of_the_store(tmp_path) -> None:
    """``store validate`` reports how many rows hold values so large or small that normalising them needs a
    rescale first: counted over the whole store, not only its last batch (kills ``Store.validate`` mutant
    29: the count replaced by each batch's)."""
    ids = np.arange(900, dtype=np.int64) * 7 - 3000
    x = _unit(900, 8)
    x[[5, 40, 310, 620]] *= np.float32(3e37)  # sum of squares overflows float32
    x[700] *= np.float32(1e-21)  # underflows
    write_store(tmp_path / "s", ids, x, normalize=False, rows_per_file=300)
    store = Store(tmp_path / "s")
    assert len(store.files) == 3
    assert store.validate() == 5


def test_info_names_where_the_split_comes_from(tmp_path) -> None:
    """``store info`` says whether the train/test split is a column of the store or the hash of the id
    (kills ``Store.info`` mutant 67: "column" reported for a store without a split column)."""
    ids, x = np.arange(50, dtype=np.int64), _unit(50, 4)
    hashed = write_store(tmp_path / "hashed", ids, x).info()
    assert hashed["split"]["source"] == "hash(id)"
    column = write_store(tmp_path / "column", ids, x, split=["train"] * 40 + ["test"] * 10).info()
    assert column["split"]["source"] == "column"


# ------------------------------------------------------------------------------------------------- driver
def test_a_run_started_from_python_records_its_index_in_the_run_folder(tmp_path) -> None:
    """``run(..., index=...)`` writes the index's path into the run folder's config.json, as the command
    line does, so the folder says which index its neighbours came from and a resume with another index is
    refused (kills ``run`` mutant 22: the index left out of the run's config)."""
    import json

    from seals_gpu.driver import run
    from seals_gpu.errors import RunDirError
    from seals_gpu.index import IndexSpec, build_index
    from seals_gpu.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s", n=1500, dim=8, concepts=1, prevalence=(0.03, 0.04), seed=2)
    idx = build_index(store, tmp_path / "i", IndexSpec(kind="flat", shards=2)).path
    small = dict(strategies=("mlp",), modes=("seals",), budget=40, k=5, batch=20, seed_positives=2)
    small.update(seed_negatives=8, device="cpu")
    run(store, tmp_path / "r", concepts=[0], index=idx, **small)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["index"] == str(idx)
    other = build_index(store, tmp_path / "j", IndexSpec(kind="flat", shards=3)).path
    with pytest.raises(RunDirError, match=r"different configuration \(index changed\)"):
        run(store, tmp_path / "r", concepts=[0], index=other, resume=True, **small)


def test_a_neighbour_table_too_large_is_refused_with_its_size_in_gib(monkeypatch) -> None:
    """``--k`` whose neighbour table (12 bytes a slot, a row per train item when every row is searched up
    front) exceeds the free memory is refused with both sizes in GiB, and one that fits is accepted (kills
    ``check_k`` mutant 38: the table's size computed as bytes / 2 * 30)."""
    from types import SimpleNamespace

    from seals_gpu import driver
    from seals_gpu.errors import ConfigError
    from seals_gpu.planner import SearchPlan

    plan = SearchPlan("flat", "test", precompute=True)
    monkeypatch.setattr(driver, "available_memory", lambda: 4 << 30)
    message = (
        "--k 100 needs about 11.2 GiB for the neighbours of up to 10,000,000 rows, more than the 4.0 GiB "
        "of memory available; lower --k"
    )
    with pytest.raises(ConfigError) as err:
        driver.check_k(SimpleNamespace(k=100), plan, 10_000_000)  # 1e7 x 100 x 12 bytes = 11.18 GiB
    assert str(err.value) == message
    monkeypatch.setattr(driver, "available_memory", lambda: 12 << 30)
    driver.check_k(SimpleNamespace(k=100), plan, 10_000_000)


# ------------------------------------------------------------------------------------------------ learner
def test_the_line_searchs_next_trial_stays_inside_its_bracket() -> None:
    """Whatever the Newton step does, the next trial of the 1-D search lies strictly inside the bracket
    ``(lo, hi)`` once both ends are known: the Newton step if it lands inside, else the bisection when the
    lower end is positive, else a tenth of the upper end (kills ``_next_step`` mutant 19: bisection only
    for lo > 1, so a bracket such as (0.2, 0.8) was left for 0.08)."""
    from seals_gpu.learner import _next_step

    rng = np.random.default_rng(11)
    for _ in range(2000):
        lo = 0.0 if rng.random() < 0.3 else float(10.0 ** rng.uniform(-6, 2))
        hi = lo + float(10.0 ** rng.uniform(-6, 2))
        t = float(rng.uniform(lo, hi)) if lo > 0 else float(hi * rng.uniform(0.01, 1.0))
        d1, d2 = float(rng.normal()), float(rng.normal())
        tn = _next_step(t, d1, d2, lo, hi)
        assert lo < tn < hi, (t, d1, d2, lo, hi, tn)
    assert _next_step(0.5, 1.0, -1.0, 0.2, 0.8) == 0.5  # no usable curvature: bisect
    assert _next_step(0.5, 1.0, -1.0, 0.0, 0.8) == pytest.approx(0.08)  # no lower end yet: shrink towards 0
    assert _next_step(2.0, -1.0, -1.0, 2.0, math.inf) == 8.0  # no upper end yet: expand


def _run_object(store, out, **settings):
    """A Run built (its checks done, nothing written), not started; no search cache."""
    return run_object(store, out, cache=False, **settings)


def test_seed_negatives_that_exactly_use_up_the_rows_besides_the_seed_ids_are_allowed(tmp_path) -> None:
    """With ``--seed-ids``, the seed negatives still to draw must fit in the train rows the file does not
    list: exactly as many is allowed, one more is refused naming the concept and the count (kills
    ``Run.__init__`` mutant 186: the boundary refused)."""
    from seals_gpu.errors import ConfigError

    n = 60
    ids = np.arange(n, dtype=np.int64) * 5 + 1000
    labels = [["a"] if i in (3, 7, 55) else [] for i in range(n)]
    split = ["train"] * 50 + ["test"] * 10  # ids[3], ids[7] train positives, ids[55] a test positive
    store = write_store(tmp_path / "s", ids, _unit(n, 4), labels=labels, split=split)
    seeds = tmp_path / "seeds.csv"
    known_neg = ids[[0, 1, 2, 4, 5]]
    listed = f"a,{ids[3]},1\na,{ids[7]},1\n" + "".join(f"a,{i},0\n" for i in known_neg)
    seeds.write_text("concept,id,label\n" + listed)
    free = 50 - 2 - known_neg.size  # train rows the file does not list
    common = dict(concepts=("a",), strategies=("mlp",), modes=("all",), seed_ids=str(seeds), k=3, batch=5)
    r = _run_object(
        store, tmp_path / "r", seed_positives=1, seed_negatives=known_neg.size + free, budget=50, **common
    )
    assert len(r.units) == 1
    with pytest.raises(ConfigError) as err:
        _run_object(
            store,
            tmp_path / "r2",
            seed_positives=1,
            seed_negatives=known_neg.size + free + 1,
            budget=50,
            **common,
        )
    assert str(err.value) == (
        f"--seed-negatives {known_neg.size + free + 1}: concept a has only {free} train rows besides its "
        "--seed-ids; lower --seed-negatives"
    )


def test_only_id_knn_sizes_the_neighbour_table_for_every_train_row(tmp_path, monkeypatch) -> None:
    """id-knn scores every train row by its neighbours, so its run must hold a neighbour row per train
    item; a SEALS run without it holds rows only for the ids it searches. With memory for the second and
    not the first, the SEALS run is accepted and the id-knn run refused (kills ``Run.__init__`` mutant 88:
    the two swapped)."""
    from seals_gpu import driver
    from seals_gpu.errors import ConfigError
    from seals_gpu.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s", n=3000, dim=8, concepts=1, prevalence=(0.03, 0.04), seed=3)
    common = dict(
        concepts=(0,), modes=("seals",), k=10, batch=10, budget=40, seed_positives=2, seed_negatives=8
    )
    n_train = int((~store.read_split()[1]).sum())
    every_row = n_train * 10 * driver.NEIGHBOR_SLOT_BYTES
    monkeypatch.setattr(driver, "available_memory", lambda: every_row // 2)
    r = _run_object(store, tmp_path / "a", strategies=("mlp",), **common)
    assert r.plan.queries * 10 * driver.NEIGHBOR_SLOT_BYTES < every_row // 2
    with pytest.raises(
        ConfigError, match=rf"--k 10 needs about .* GiB for the neighbours of up to {n_train:,} rows"
    ):
        _run_object(store, tmp_path / "b", strategies=("id-knn",), **common)


def test_an_ivf_search_is_calibrated_for_the_runs_k(tmp_path) -> None:
    """With ``--search ivf`` the IVF's nprobe is calibrated to reach the recall target at the run's k (the
    run log says so), not at a default k (kills ``Run.__init__`` mutant 117: the run's k not passed)."""
    from seals_gpu.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s", n=3000, dim=8, concepts=1, prevalence=(0.03, 0.04), seed=3)
    r = _run_object(
        store, tmp_path / "r", concepts=(0,), strategies=("mlp",), modes=("seals",), k=7, batch=10, budget=40,
        seed_positives=2, seed_negatives=8, search="ivf",
    )  # fmt: skip
    assert r.backend.search_k == 7
    assert "nprobe calibrated to recall@7 >= 0.95" in r.backend.search_path
