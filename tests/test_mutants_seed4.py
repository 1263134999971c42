"""Tests written from the survivors of the fifth sampled mutation run (session 11, ``make mutate-sample
SAMPLE=40 SAMPLE_SEED=4 MUTATE="store driver learner atomic"``: a fresh draw of the modules below the bar
in seed 3, after every test written for seeds 0-3).

Each test states the property a user relies on; the docstring names the mutants it kills. Survivors that no
test can observe are listed, with the reason, in ``benchmarks/mutation_equivalent.json``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from seals_gpu.store import Store, write_store


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
