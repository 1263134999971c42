"""Tests from the survivors of seed 8 (``make mutate-sample SAMPLE=40 SAMPLE_SEED=8 MUTATE=store``, session
14), each stated as the property a user relies on; the docstrings name the mutants they kill."""

from __future__ import annotations

import numpy as np
import pytest

from seals_gpu.errors import StoreError
from seals_gpu.store import Store, write_store

from .conftest import unit_rows as _unit


def test_a_single_row_is_a_store_and_no_rows_are_refused_writing_nothing(tmp_path) -> None:
    """One row is the smallest store there is: written, opened and read back; zero rows are refused before
    anything lands, with the writer's own message (kills ``write_store`` mutant 25: ``n == 1`` refused the
    one-row store and left the empty one to a later, different check)."""
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    store = write_store(tmp_path / "one", np.array([-(2**63)], dtype=np.int64), x, labels=[[7]])
    assert Store(tmp_path / "one").num_rows == store.num_rows == 1
    np.testing.assert_allclose(store.take(np.array([-(2**63)])), [[0.6, 0.8]], rtol=1e-6)
    with pytest.raises(StoreError) as err:
        write_store(tmp_path / "none", np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.float32))
    assert str(err.value) == "no rows to write; a store needs at least one row"
    assert not (tmp_path / "none").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (0.0, "is an all-zero vector, which cannot be l2-normalised"),
        (1e-40, "is a denormal vector (every value below 1.18e-38 in absolute value), too close to zero"),
    ],
)
def test_a_vector_without_direction_is_refused_in_one_line_naming_the_row_and_the_fix(
    tmp_path, value: float, what: str
) -> None:
    """A zero or denormal embedding has no direction to normalise: the write is refused in one line that
    names the row, what is wrong with it and the fix, and nothing is written (kills ``l2_normalize``
    mutant 58: the fix's text changed)."""
    x = _unit(6, 8, seed=8)
    x[4] = value
    with pytest.raises(StoreError) as err:
        write_store(tmp_path / "s", np.arange(6, dtype=np.int64) * 7, x)
    msg = str(err.value)
    assert msg.startswith(f"write: row 4 {what}")
    assert msg.endswith("; drop it or give it a real embedding")
    assert "\n" not in msg
    assert list(tmp_path.iterdir()) == []
