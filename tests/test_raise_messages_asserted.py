"""Every refusal of the core modules has its message asserted by some test.

A message is what a user reads (one line naming the value and the fix), and a message replaced by None or
reworded is the commonest mutant to survive, so this keeps the habit: each ``raise`` with a literal message
in a core module must have at least one of its fixed fragments (the text between placeholders and
punctuation, 12 characters or more) in some test file. A new refusal without a test fails here, naming it.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# under `make mutate` the package beside the tests is mutmut's mutated copy (every message rewritten
# in some mutant), so the scan would read mutants, not the code
pytestmark = pytest.mark.skipif(
    "MUTANT_UNDER_TEST" in os.environ, reason="reads the source; mutmut's is mutated"
)

# the core list of `make mutate` (Makefile's MUTATE); test_the_core_list_is_the_makefiles keeps them equal
CORE = [
    "metrics", "pool", "index.merge", "atomic", "evaluate", "strategies", "scoring", "selection", "split",
    "store", "driver", "learner", "distributed", "index.shard",
]  # fmt: skip

# raises no test can reach, each with why
UNREACHABLE = {
    ("scoring", "too many excluded ids"): "needs U x L >= 2**62 excluded ids in one call",
}


def _fragments(message: ast.expr) -> list[str]:
    if isinstance(message, ast.Constant) and isinstance(message.value, str):
        parts = [message.value]
    elif isinstance(message, ast.JoinedStr):
        parts = [v.value for v in message.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    else:
        return []
    return [c.strip() for p in parts for c in re.split(r"[;:,()'\"`]", p) if len(c.strip()) >= 12]


def _refusals(module: str) -> list[tuple[int, list[str]]]:
    tree = ast.parse((ROOT / "seals_gpu" / (module.replace(".", "/") + ".py")).read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            frags = _fragments(node.exc.args[0])
            if frags:
                out.append((node.lineno, frags))
    return out


def _test_text() -> str:
    me = Path(__file__).resolve()
    # regexes in tests escape punctuation: compare without the backslashes
    return "\n".join(
        p.read_text().replace("\\", "") for p in sorted((ROOT / "tests").glob("*.py")) if p != me
    )


def _unasserted(text: str) -> list[str]:
    missing = []
    for module in CORE:
        for line, frags in _refusals(module):
            if any(f in text for f in frags):
                continue
            if any(m == module and any(u in f for f in frags) for m, u in UNREACHABLE):
                continue
            missing.append(f"seals_gpu/{module.replace('.', '/')}.py:{line}: {frags[0]!r}")
    return missing


def test_every_core_refusal_has_its_message_asserted_by_a_test() -> None:
    missing = _unasserted(_test_text())
    assert not missing, "refusals whose message no test asserts:\n" + "\n".join(missing)


def test_the_scan_reports_a_refusal_whose_message_no_test_mentions() -> None:
    """Not vacuous: it finds the store's refusals, and with every fragment of ``write_store``'s empty-input
    message taken out of the tests' text it reports that refusal (and at most two others that shared them)."""
    assert len(_refusals("store")) > 40
    ((line, frags),) = [(ln, fr) for ln, fr in _refusals("store") if "no rows to write" in fr]
    gone = _test_text()
    for f in frags:
        gone = gone.replace(f, "")
    reported = _unasserted(gone)
    assert f"seals_gpu/store.py:{line}: 'no rows to write'" in reported
    assert len(reported) <= 3


def test_the_core_list_is_the_makefiles() -> None:
    make = (ROOT / "Makefile").read_text()
    (line,) = [ln for ln in make.splitlines() if ln.startswith("MUTATE ?=")]
    assert sorted(line.split("=", 1)[1].split()) == sorted(CORE)
    for (module, _), _why in UNREACHABLE.items():
        assert module in CORE
