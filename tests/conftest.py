"""Shared fixtures: seeded clustered embeddings with planted rare concepts, a small store, GPU skip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from seals_gpu.store import write_store

from .mutmut_hooks import (  # noqa: F401 - hooks for `make mutate`, registered by being in this module
    deselect_kill_tests,
    mutmut_durations,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)


def run_object(store, out, *, log=None, **kwargs):
    """A ``Run`` built over ``store`` (its checks done, nothing written), not started: RunConfig fields go to
    the config, the rest (index, graph, backend, cache, ...) to ``Run``; CPU, no progress bar, quiet log
    unless given."""
    from seals_gpu.config import RunConfig
    from seals_gpu.device import resolve_device
    from seals_gpu.driver import Run

    run_args = ("index", "graph", "backend")  # objects for Run itself, not the config's paths
    settings = {
        key: kwargs.pop(key)
        for key in list(kwargs)
        if key in RunConfig.__dataclass_fields__ and key not in run_args
    }
    cfg = RunConfig(store=str(store.path), store_fingerprint=store.fingerprint, **settings)
    kwargs.setdefault("device", resolve_device("cpu"))
    kwargs.setdefault("progress", False)
    return Run(cfg, out, store=store, log=log or (lambda *_: None), **kwargs)


def embedding_column(x: np.ndarray) -> pa.Array:
    """Rows of ``x`` as the Parquet ``embedding`` column (fixed-size float32 lists), for files written by hand."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(x, np.float32).ravel()), x.shape[1])


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded random unit vectors of dimension ``d``, float32."""
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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


def bare_selection(**attrs):
    """A :class:`seals_gpu.selection.Selection` holding only ``attrs`` (config, round, backend, neighbors):
    one selection method tested on its own, without a run."""
    from seals_gpu.selection import Selection

    sel = Selection()
    for name, value in attrs.items():
        setattr(sel, name, value)
    return sel


@pytest.fixture
def small_store(tmp_path):
    ids, x, labels = clustered(3000, 16, seed=1)
    return write_store(tmp_path / "store", ids, x, labels=labels)


def pytest_addoption(parser):
    parser.addoption(
        "--shuffle", type=int, default=None, metavar="SEED", help="run the tests in a shuffled order"
    )


def pytest_collection_modifyitems(config, items):
    # mutmut's fork server runs a mutant's tests in the order of a Python set (a new order every run): the
    # fastest first instead, as its plain fork runner does, so a killed mutant dies in its quickest test and
    # every run sees one order (the suite passes in any order: TESTING.md)
    deselect_kill_tests(config, items)
    durations = mutmut_durations()
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
