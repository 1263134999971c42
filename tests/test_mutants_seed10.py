"""Tests from the survivors of seed 10 (``make mutate-sample SAMPLE=20 SAMPLE_SEED=10`` over the twelve core
modules not checked whole, session 14), each stated as the property a user relies on; the docstrings name
the mutants they kill. (Seed 10's learner survivor is killed in ``test_learner``'s chunking test.)"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from seals_gpu.errors import StoreError
from seals_gpu.store import check_store_out


def test_an_output_folder_that_cannot_be_listed_is_refused_with_the_os_reason(tmp_path, monkeypatch) -> None:
    """An existing output folder the OS will not list (permissions, a stale network mount) is refused
    before anything is written, in one line with the OS's reason in words, not a traceback or an errno
    dump (kills ``atomic.check_output_dir`` mutant 36). Root ignores permissions, so the refusal of the
    listing is simulated."""
    out = tmp_path / "store"
    out.mkdir()
    listing = Path.iterdir

    def refuse(self: Path) -> Iterator[Path]:
        if self == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(StoreError) as err:
        check_store_out(out, overwrite=True)
    assert str(err.value) == f"store {out} cannot be read (Permission denied); pick another path"
    monkeypatch.undo()
    assert out.is_dir() and list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "how"),
    [("in/sub", "is inside"), ("in", "is"), ("", "contains")],
    ids=["inside", "same", "contains"],
)
def test_an_output_that_overlaps_an_input_is_refused_whole_saying_what_to_do(tmp_path, where, how) -> None:
    """An output that is, is inside or contains an input the command reads is refused before anything is
    written, in one line naming both paths and the fix (kills ``atomic.check_not_input`` mutant 22: the
    fix's text changed)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-0.parquet").write_bytes(b"data")
    out = tmp_path / where if where else tmp_path
    with pytest.raises(StoreError) as err:
        check_store_out(out, overwrite=True, inputs=[("store", tmp_path / "in")])
    assert str(err.value) == (
        f"store {out} {how} the store {tmp_path / 'in'}, which this command reads; pick an output path elsewhere"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in", "part-0.parquet"]
