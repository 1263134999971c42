"""Pin the error messages of the data modules' checks (store, index shard, split, atomic output checks).

Each message names the bad value and the fix; each test asserts that part of it, through the most public way
that reaches the check (the `seals-gpu` CLI where the bad value is a user's input to a command, else the
Python API). Found by mutation testing: a message replaced by None (`raise StoreError(None)`) survived.
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from seals_gpu.cli import main
from seals_gpu.errors import IndexError_, StoreError
from seals_gpu.index.shard import IndexShard
from seals_gpu.split import TEST, TRAIN, ShardSplit, Split, store_split
from seals_gpu.store import Store, StoreWriter, write_store

from .test_bad_input import _store_of, _table

DIM = 4


# ---------------------------------------------------------------------------------------------- helpers
def _unit(n: int, d: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; it must exit 2 with one line on stderr (no traceback). Returns that line."""
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("seals-gpu"), err
    return lines[0]


def _small_store(path: Path, n: int = 20) -> Store:
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    split = np.where(np.arange(n) % 4 == 0, "test", "train")
    return write_store(path, ids, _unit(n), labels=[[i % 3] for i in range(n)], split=split)


# ---------------------------------------------------------------------------------------------- IndexShard
def test_an_unknown_index_kind_is_refused_with_the_kinds_to_choose_from() -> None:
    """A shard of a kind that does not exist is refused, naming the kind given and the kinds there are
    (kills raise-message mutants of IndexShard.__init__)."""
    ids = np.arange(5, dtype=np.int64)
    with pytest.raises(
        IndexError_, match=re.escape("unknown index kind 'hnsw'; choose one of ('flat', 'ivfpq')")
    ):
        IndexShard(ids, _unit(5), kind="hnsw")


def test_an_ivfpq_shard_without_its_faiss_index_is_refused() -> None:
    """An IVF-PQ shard constructed without the FAISS index it searches is refused, saying it needs one
    (kills raise-message mutants of IndexShard.__init__)."""
    ids = np.arange(5, dtype=np.int64)
    with pytest.raises(
        IndexError_, match=re.escape("an ivfpq shard needs its FAISS index; build it with IndexShard.build(")
    ):
        IndexShard(ids, _unit(5), kind="ivfpq")


@pytest.mark.parametrize("trained", ["none", "untrained"])
def test_building_an_ivfpq_shard_needs_a_trained_index(trained: str) -> None:
    """Building an IVF-PQ shard without a trained IndexIVFPQ (none given, or one not trained yet) is refused,
    saying to train one with train_ivfpq() (kills raise-message mutants of IndexShard.build)."""
    index = None
    if trained == "untrained":
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, 4, 2, 8, faiss.METRIC_INNER_PRODUCT)
        assert not index.is_trained
    ids = np.arange(50, dtype=np.int64)
    with pytest.raises(
        IndexError_,
        match=re.escape("ivfpq shards need a trained IndexIVFPQ; train one with train_ivfpq()"),
    ):
        IndexShard.build(ids, _unit(50), kind="ivfpq", trained=index)


# ---------------------------------------------------------------------------------------------- writing a store
def test_labels_mixing_ints_and_strings_are_refused(tmp_path: Path) -> None:
    """Labels that mix int and string concept ids are refused, naming both types and saying to use one kind
    for all; nothing is written (kills raise-message mutants of _labels_array)."""
    with pytest.raises(
        StoreError, match=re.escape("labels mix types ['int', 'str']; use all int64 or all strings")
    ):
        write_store(tmp_path / "s", np.arange(3), _unit(3), labels=[[1], ["cat"], []])
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4)])
def test_write_store_refuses_embeddings_that_are_not_2d(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """write_store refuses embeddings that are not a 2-D (n, d) array, naming their shape and saying to
    reshape the data; nothing is written (kills raise-message mutants of write_store)."""
    x = np.ones(shape, dtype=np.float32)
    with pytest.raises(
        StoreError,
        match=re.escape(f"embeddings must be 2-D (n, d), got shape {shape}; reshape your data"),
    ):
        write_store(tmp_path / "s", np.arange(shape[0]), x)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("ids", "shown"),
    [
        (np.arange(4, dtype=np.int64).reshape(2, 2), "got shape (2, 2) dtype int64"),
        (np.arange(2, dtype=np.float64), "got shape (2,) dtype float64"),
    ],
)
def test_store_writer_refuses_ids_that_are_not_a_1d_integer_array(
    tmp_path: Path, ids: np.ndarray, shown: str
) -> None:
    """StoreWriter.write refuses ids that are not a 1-D integer array, naming their shape and dtype; the
    store is not created (kills raise-message mutants of StoreWriter.write)."""
    with pytest.raises(StoreError, match=re.escape(f"ids must be a 1-D integer array, {shown}")):
        with StoreWriter(tmp_path / "s", dim=DIM) as w:
            w.write(ids, _unit(2))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (["train", "val", "test"], "split holds 'val' at row 1; each row's split must be 'train' or 'test'"),
        (["train", "test"], "split has shape (2,), expected (3,): one of 'train'/'test' per row"),
    ],
    ids=["bad-value", "too-short"],
)
def test_store_writer_refuses_a_split_that_is_not_train_or_test_per_row(
    tmp_path: Path, split: list[str], message: str
) -> None:
    """StoreWriter.write refuses a split with a value other than 'train'/'test' (naming it and its row), or
    not one per row (naming both lengths); the store is not created (kills raise-message mutants of
    StoreWriter.write)."""
    with pytest.raises(StoreError, match=re.escape(message)):
        with StoreWriter(tmp_path / "s", dim=DIM) as w:
            w.write(np.arange(3), _unit(3), split=split)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------- opening a store
def test_a_store_with_int_labels_in_one_file_and_string_labels_in_another_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`store info` on a store whose files disagree on the kind of concept id (int in one, string in
    another) exits 2 naming the file and both kinds (kills raise-message mutants of Store.__init__)."""
    store = _store_of(
        tmp_path / "s",
        _table(5),
        _table(5, first_id=5, labels=pa.array([["a"]] * 5, type=pa.list_(pa.string()))),
    )
    line = _refused(["store", "info", str(store)], capsys)
    assert "part-00001.parquet: 'labels' are str here but int in other files; use one kind" in line, line


def test_a_split_column_that_is_not_strings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`store info` on a store whose 'split' column holds integers exits 2 naming the file, the column's type
    and the type expected ('train'/'test' strings) (kills raise-message mutants of Store.__init__)."""
    store = _store_of(tmp_path / "s", _table(5, split=pa.array(np.zeros(5, dtype=np.int64))))
    line = _refused(["store", "info", str(store)], capsys)
    assert "part-00000.parquet: column 'split' has type int64, expected string ('train'/'test')" in line, line


def test_a_split_column_in_some_files_only_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`store info` on a store whose split column is in some files only exits 2 naming the file and saying to
    add it to all or none (kills raise-message mutants of Store.__init__)."""
    store = _store_of(tmp_path / "s", _table(5), _table(5, first_id=5, split=pa.array(["train"] * 5)))
    line = _refused(["store", "info", str(store)], capsys)
    assert "part-00001.parquet: 'split' column present in some files only; add it to all or none" in line, (
        line
    )


def test_concept_counts_refuses_an_unknown_split(tmp_path: Path) -> None:
    """Store.concept_counts with a split other than 'train', 'test' or None is refused, naming the value and
    the ones allowed (kills raise-message mutants of Store.concept_counts)."""
    store = _small_store(tmp_path / "s")
    assert sum(store.concept_counts(split="train").values()) == 15  # the good values work
    with pytest.raises(StoreError, match=re.escape("split='val'; use 'train', 'test' or None")):
        store.concept_counts(split="val")


def test_a_concept_names_side_file_that_is_a_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`store info` on a store whose _concepts.parquet is a folder exits 2 saying it is not a file and to
    rewrite or remove it (kills raise-message mutants of Store.concept_names)."""
    store = _small_store(tmp_path / "s")
    (store.path / "_concepts.parquet").mkdir()
    line = _refused(["store", "info", str(store.path)], capsys)
    assert (
        "_concepts.parquet is not a file (the concept-names side file); rewrite it, or remove it" in line
    ), line


# ---------------------------------------------------------------------------------------------- output checks
def test_a_store_output_that_is_a_symlink_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`store synth` to an output path that is a symbolic link exits 2 naming the link and its target and
    saying to pass the real folder or another path; the target is untouched (kills raise-message mutants
    of check_output_dir)."""
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    line = _refused(["store", "synth", str(link), "--n", "100"], capsys)
    assert f"store {link} is a symbolic link (to {target}); pass the real folder, or another path" in line, (
        line
    )
    assert link.is_symlink() and not any(target.iterdir())


# ---------------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("ask", ["size", "take", "all"])
def test_a_stores_own_split_refuses_all_but_membership(tmp_path: Path, ask: str) -> None:
    """The split read from a store itself answers membership, and refuses sizes, draws by rank and full
    listings, saying it answers membership only and that sizes come from a backend (kills raise-message
    mutants of store_split's counts; every Split method but codes asks counts first, so call's own
    refusal of other methods is not reachable through a Split)."""
    store = _small_store(tmp_path / "s")
    sp = store_split(store)
    assert sp.test.contains(np.array([1, 4, 999])).tolist() == [True, False, False]
    asks = {"size": lambda: sp.train.size, "take": lambda: sp.train.take(np.array([0])), "all": sp.train.all}
    with pytest.raises(
        NotImplementedError,
        match=re.escape("a store's own split answers membership only; its sizes come from a backend"),
    ):
        asks[ask]()
    # the shard call it hands to Split (the route every Split method takes to the shards) serves codes only
    assert sp._call("codes", {0: (np.array([4, 1]),)})[0].tolist() == [TRAIN, TEST]
    with pytest.raises(NotImplementedError, match=r"answers membership only, not 'side_ids'$"):
        sp._call("side_ids", {0: (False,)})


@pytest.mark.parametrize(
    ("test", "ranks", "message"),
    [
        (False, [0, 3], "rank 3 is outside the 3 train ids"),
        (False, [-1], "rank -1 is outside the 3 train ids"),
        (True, [2], "rank 2 is outside the 2 test ids"),
    ],
)
def test_a_rank_outside_a_side_is_refused_naming_it(test: bool, ranks: list[int], message: str) -> None:
    """Split.take with a rank outside one side's ids is refused, naming the rank, the side and its size
    (kills raise-message mutants of Split.take)."""
    split = Split.of_parts([ShardSplit(np.arange(5), np.array([False, True, False, True, False]))])
    side = split.test if test else split.train
    assert side.take(np.array([0, 1])).tolist() == ([1, 3] if test else [0, 2])
    with pytest.raises(IndexError, match=re.escape(message)):
        side.take(np.array(ranks))
