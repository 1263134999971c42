"""Messages of the store's and the atomic writer's refusals that no other test asserted whole (found in
session 14 by listing every ``raise`` of the core modules whose message text appears in no test): each names
the value and the fix (one line on the command line), and a refused write leaves nothing behind."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu.errors import StoreError
from seals_gpu.store import Store, StoreWriter, write_store

from .conftest import embedding_column
from .conftest import unit_rows as _unit


def _hand_written(root: Path, embedding: pa.Array, ids: pa.Array | None = None) -> Path:
    """A one-file store folder written by hand (ids 0..n-1 unless given); returns the file."""
    root.mkdir()
    f = root / "part-0.parquet"
    n = len(embedding)
    pq.write_table(
        pa.table({"id": ids if ids is not None else pa.array(np.arange(n)), "embedding": embedding}), f
    )
    return f


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (
            pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.int32)), 4),
            "column 'embedding' holds int32, expected float32 or float16 values; "
            "write embeddings as fixed_size_list<float32>[d]",
        ),
        (
            pa.array([[1, 2], [3, 4]], type=pa.list_(pa.int64())),
            "column 'embedding' holds int64, expected float values; write embeddings as fixed_size_list<float32>[d]",
        ),
        (
            pa.array(["a", "b"]),
            "column 'embedding' has type string, expected fixed_size_list<float32>[d] "
            "(float16 and list<float> are accepted too)",
        ),
        (pa.array([[], []], type=pa.list_(pa.float32(), 0)), None),
    ],
    ids=["int-values", "int-list", "string", "zero-dim"],
)
def test_an_embedding_column_that_is_not_float_vectors_is_refused_on_open(tmp_path, column, expected) -> None:
    """A store whose embedding column is not float vectors (or has dimension 0) is refused when opened, in one
    line naming the file, the type found and what to write instead (store ``_embedding_dim``,
    ``Store.__init__``)."""
    f = _hand_written(tmp_path / "s", column)
    if expected is None:
        expected_msg = f"store {tmp_path / 's'}: embedding dimension is 0; it must be at least 1"
    else:
        expected_msg = f"{f}: {expected}"
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "s")
    assert str(err.value) == expected_msg


def test_a_store_path_that_is_a_file_or_holds_only_empty_files_is_refused(tmp_path) -> None:
    """A file given as a store, and a store whose Parquet files hold no rows, are refused in one line naming
    the path (``Store.__init__``)."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "afile")
    assert str(err.value) == f"store {tmp_path / 'afile'} is a file; a store is a folder of Parquet files"
    root = tmp_path / "s"
    _hand_written(root, embedding_column(_unit(0, 4)), ids=pa.array([], pa.int64()))
    with pytest.raises(StoreError) as err:
        Store(root)
    assert str(err.value) == f"store {root}: its files hold no rows; it is empty"


def test_a_null_id_is_refused_when_read_naming_the_file_and_the_count(tmp_path) -> None:
    """Every row needs an id: a null one is refused in one line naming the file and how many there are
    (store ``_ids_to_numpy``)."""
    f = _hand_written(tmp_path / "s", embedding_column(_unit(3, 4)), ids=pa.array([1, None, 3], pa.int64()))
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "s").read_ids()
    assert str(err.value) == f"{f}: column 'id' has 1 null(s); every row needs an int64 id"


def test_an_oracle_needs_labels(tmp_path) -> None:
    """Reading labels from a store without a labels column is refused, saying why labels are wanted
    (``Store.iter_batches``)."""
    write_store(tmp_path / "s", np.arange(3), _unit(3, 4))
    with pytest.raises(StoreError) as err:
        next(Store(tmp_path / "s").iter_batches(labels=True))
    assert str(err.value) == f"store {tmp_path / 's'} has no 'labels' column; it cannot simulate an oracle"


def test_a_file_corrupt_inside_is_refused_when_read_not_returned_as_data(tmp_path, capsys) -> None:
    """A file whose footer is intact but whose pages are garbage opens (only the footer is read) and is
    refused by the first read, batches and test ids alike, naming the file and Arrow's reason; the command
    line shows it as one line and exits 2 (``Store.iter_batches``, ``Store.test_ids_between``)."""
    from seals_gpu.cli import main

    write_store(tmp_path / "s", np.arange(50), _unit(50, 8), split=["test", "train"] * 25)
    (f,) = sorted((tmp_path / "s").glob("*.parquet"))
    raw = bytearray(f.read_bytes())
    raw[4:68] = b"\xff" * 64  # the first page header, right after the 'PAR1' magic
    f.write_bytes(bytes(raw))
    store = Store(tmp_path / "s")
    # Arrow's own text may span lines: the library keeps it as Arrow gave it
    pattern = re.compile(
        rf"^{re.escape(str(f))}: could not be read \(.+\); the file is corrupt or truncated$", re.S
    )
    with pytest.raises(StoreError, match=pattern):
        list(store.iter_batches())
    with pytest.raises(StoreError, match=pattern):
        store.test_ids_between(0, 49)
    capsys.readouterr()
    assert main(["store", "validate", str(tmp_path / "s")]) == 2
    out, err = capsys.readouterr()
    assert (
        out == "" and err.count("\n") == 1 and err.startswith(f"seals-gpu: error: {f}: could not be read (")
    )
    assert err.endswith("); the file is corrupt or truncated\n")


def test_the_writer_refuses_a_bad_dimension_shape_or_schema_and_writes_nothing(tmp_path) -> None:
    """The batch writer refuses dim 0, a batch whose embeddings do not match its ids, a batch whose columns
    differ from the first one's and a side file that readers would take for data, each in one line, and
    nothing appears (``StoreWriter.__init__``, ``StoreWriter.write``, ``StoreWriter.add_side_table``)."""
    out = tmp_path / "s"
    with pytest.raises(StoreError) as err:
        StoreWriter(out, dim=0)
    assert str(err.value) == "dim=0; the embedding dimension must be at least 1"
    with pytest.raises(StoreError) as err, StoreWriter(out, dim=4) as w:
        w.write(np.arange(3), _unit(2, 4))
    assert str(err.value) == "embeddings must have shape (3, 4), got (2, 4)"
    with pytest.raises(StoreError) as err, StoreWriter(out, dim=4) as w:
        w.write(np.arange(3), _unit(3, 4), labels=[[1], [], [2]])
        w.write(np.arange(3, 6), _unit(3, 4))
    assert str(err.value) == (
        "batch columns ['id', 'embedding'] differ from the first batch's ['id', 'embedding', 'labels']"
    )
    with pytest.raises(StoreError) as err, StoreWriter(out, dim=4) as w:
        w.write(np.arange(3), _unit(3, 4))
        w.add_side_table("concepts.parquet", pa.table({"concept": [1]}))
    assert str(err.value) == "side file 'concepts.parquet' must start with '_' so readers skip it as data"
    assert list(tmp_path.iterdir()) == []


def test_overwrite_never_replaces_a_folder_that_is_not_a_store(tmp_path) -> None:
    """``overwrite`` (``--force``) replaces a store only: a folder holding anything else is refused in one
    line saying what it holds and what to do, and is left as it was (atomic ``check_output_dir``)."""
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StoreError) as err:
        write_store(out, np.arange(3), _unit(3, 4), overwrite=True)
    assert str(err.value) == (
        f"store {out} already exists and is not a store (it holds notes.txt, which is not a store's Parquet "
        "file), so overwrite / --force will not replace it either; pick another path, or remove it yourself"
    )
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
