"""pytest hooks for `make mutate` (mutmut 3): they act only under mutmut (MUTANT_UNDER_TEST set) and are
imported into conftest.py. See TESTING.md, "Mutation testing"."""

from __future__ import annotations

import json
import os

import pytest

# mutmut's traced run gives a test the functions called between its previous test's teardown and its own:
# a module-scoped fixture (a store, a whole run) is charged to the first test that uses it only, so a mutant
# in the code it ran was never tested by the fixture's later users, which read and check its output (a
# budget overshoot with --probe survived so). In the traced run (MUTANT_UNDER_TEST=stats) what a shared
# fixture's setup ran is charged to every test that uses the fixture.
_FIXTURE_FUNCTIONS: dict[tuple[str, str], set[str]] = {}


def mutmut_durations() -> dict[str, float]:
    """Under ``make mutate`` (mutmut runs pytest in mutants/): each test's time from mutmut's traced run;
    otherwise empty."""
    if "MUTANT_UNDER_TEST" not in os.environ or not os.path.isfile("mutmut-stats.json"):
        return {}
    try:
        with open("mutmut-stats.json") as f:
            return {str(k): float(v) for k, v in json.load(f)["duration_by_test"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


# The tests that start `seals-gpu` processes and kill them (marked ``kills``) are two thirds of the suite's
# time (a minute for the SIGKILL-at-any-moment test alone) and reach the code in a subprocess, where the
# mutant under test runs too. They guard the write-then-rename and lock logic; for a mutant elsewhere the
# in-process tests of the same code are the ones that kill it, and a surviving mutant would pay for them in
# full. So a mutant outside these modules runs without them (a mutant that only they would kill then
# counts as surviving: the score can only be lower for it).
KILL_TESTS_FOR = ("seals_gpu.atomic.", "seals_gpu.driver.")


def deselect_kill_tests(config, items: list) -> None:
    """Under mutmut, for a mutant outside :data:`KILL_TESTS_FOR`, drop the tests marked ``kills``."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if not mutant.startswith("seals_gpu.") or mutant.startswith(KILL_TESTS_FOR):
        return  # not a mutant (the clean run, the traced run, mutmut's forced failure) or one they guard
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("kills") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _stats_state():
    """mutmut's state during its traced run (MUTANT_UNDER_TEST=stats), else None."""
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


def pytest_runtest_makereport(item, call):
    # mutmut times each test by its call phase only, so a test whose module fixture builds a store and an
    # index looked nearly free: mutants whose tests were mostly fixture setup got time limits a fraction of
    # what an unmutated run needs and were counted "timeout" (detected) when they survived. In the traced
    # run setup and teardown are added to the test's time as well.
    state = _stats_state()
    if state is not None and call.when != "call" and item.nodeid in state.duration_by_test:
        state.duration_by_test[item.nodeid] += call.duration


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    state = _stats_state()
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
    state = _stats_state()
    if state is not None:
        for d in _shared_fixturedefs(item):
            state._stats.update(_FIXTURE_FUNCTIONS.get(_fixture_key(d), ()))
