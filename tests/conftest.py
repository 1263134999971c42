"""Shared fixtures: seeded clustered embeddings with planted rare concepts, a small store, GPU skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seals_gpu.store import write_store


def clustered(n: int, d: int, *, n_concepts: int = 3, seed: int = 0, id_offset: int = 10_000):
    """Clustered unit vectors with planted concepts: each concept is one tight-ish cluster plus a few members
    spread elsewhere (so a linear model is good, not perfect). Ids are a shuffled, offset range so positions
    and ids never coincide."""
    rng = np.random.default_rng(seed)
    n_centres = max(8, n // 200)
    centres = rng.normal(size=(n_centres, d))
    assign = rng.integers(0, n_centres, size=n)
    x = centres[assign] + 0.9 * rng.normal(size=(n, d))
    labels: list[list[int]] = [[] for _ in range(n)]
    for c in range(n_concepts):
        size = min(n, max(20, int(n * 0.01 * (c + 1))))
        members = rng.choice(n, size=size, replace=False)
        anchor = rng.normal(size=d) * 1.5
        core = members[: int(size * 0.85)]
        x[core] = anchor + 0.9 * rng.normal(size=(core.size, d))
        for m in members:
            labels[m].append(c)
    ids = (rng.permutation(n) * 7 + id_offset).astype(np.int64)
    return ids, x.astype(np.float32), labels


@pytest.fixture
def small_store(tmp_path):
    ids, x, labels = clustered(3000, 16, seed=1)
    return write_store(tmp_path / "store", ids, x, labels=labels)


def pytest_addoption(parser):
    parser.addoption(
        "--shuffle", type=int, default=None, metavar="SEED", help="run the tests in a shuffled order"
    )


def _mutmut_durations() -> dict[str, float]:
    """Under ``make mutate`` (mutmut sets MUTANT_UNDER_TEST and runs pytest in mutants/): each test's time
    from mutmut's traced run; otherwise empty."""
    import json
    import os

    if "MUTANT_UNDER_TEST" not in os.environ or not os.path.isfile("mutmut-stats.json"):
        return {}
    try:
        with open("mutmut-stats.json") as f:
            return {str(k): float(v) for k, v in json.load(f)["duration_by_test"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def pytest_runtest_makereport(item, call):
    # mutmut times each test by its call phase only, so a test whose module fixture builds a store and an
    # index looked nearly free: mutants whose tests were mostly fixture setup got time limits a fraction of
    # what an unmutated run needs and were counted "timeout" (detected) when they survived. In mutmut's
    # traced run (MUTANT_UNDER_TEST=stats) setup and teardown are added to the test's time as well.
    import os

    if call.when == "call" or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    try:
        from mutmut.state import state
    except ImportError:
        return
    durations = state().duration_by_test
    if item.nodeid in durations:
        durations[item.nodeid] += call.duration


# mutmut's traced run gives a test the functions called between its previous test's teardown and its own:
# a module-scoped fixture (a store, a whole run) is charged to the first test that uses it only, so a mutant
# in the code it ran was never tested by the fixture's later users, which read and check its output (a
# budget overshoot with --probe survived so). In the traced run (MUTANT_UNDER_TEST=stats) what a shared
# fixture's setup ran is charged to every test that uses the fixture.
_FIXTURE_FUNCTIONS: dict[tuple[str, str], set[str]] = {}


def _mutmut_stats_state():
    import os

    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return None
    try:
        from mutmut.state import state
    except ImportError:
        return None
    return state()


def _shared_fixturedefs(item) -> list:
    info = getattr(item, "_fixtureinfo", None)
    defs = [d[-1] for d in getattr(info, "name2fixturedefs", {}).values() if d]
    return [d for d in defs if getattr(d, "scope", "function") != "function"]


def _fixture_key(d) -> tuple[str, str]:
    return (str(getattr(d, "baseid", "")), str(getattr(d, "argname", "")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    state = _mutmut_stats_state()
    if state is None:
        yield
        return
    fresh = [d for d in _shared_fixturedefs(item) if getattr(d, "cached_result", None) is None]
    before = set(state._stats)
    yield
    ran = set(state._stats) - before
    for d in fresh:
        if getattr(d, "cached_result", None) is not None:
            _FIXTURE_FUNCTIONS.setdefault(_fixture_key(d), set()).update(ran)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    state = _mutmut_stats_state()
    if state is not None:
        for d in _shared_fixturedefs(item):
            state._stats.update(_FIXTURE_FUNCTIONS.get(_fixture_key(d), ()))


def pytest_collection_modifyitems(config, items):
    # mutmut's fork server runs a mutant's tests in the order of a Python set (a new order every run): the
    # fastest first instead, as its plain fork runner does, so a killed mutant dies in its quickest test and
    # every run sees one order (the suite passes in any order: TESTING.md)
    durations = _mutmut_durations()
    if durations:
        items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
    seed = config.getoption("shuffle")
    if seed is not None:  # `make test-shuffled`: no test may depend on another having run first
        import random

        random.Random(seed).shuffle(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def assert_same_neighbors(D, I, D_ref, I_ref, tol=1e-5):
    """Row by row the same ids, in the same order except among similarities within ``tol`` (float32 GEMM
    rounding), and the same similarities to ``tol``."""
    np.testing.assert_allclose(D, D_ref, atol=tol)
    for r in range(I.shape[0]):
        if not np.array_equal(I[r], I_ref[r]):
            same_set = set(I[r].tolist()) == set(I_ref[r].tolist())
            assert same_set or (D_ref[r, -1] - D_ref[r, -2] < tol), (r, I[r], I_ref[r])


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Runs cache what they build under $SEALS_GPU_CACHE: point it at a temporary folder so the suite never
    writes to (or reuses from) the user's ~/.cache."""
    import os

    old = os.environ.get("SEALS_GPU_CACHE")
    os.environ["SEALS_GPU_CACHE"] = str(tmp_path_factory.mktemp("seals_gpu_cache"))
    yield
    if old is None:
        os.environ.pop("SEALS_GPU_CACHE", None)
    else:
        os.environ["SEALS_GPU_CACHE"] = old
