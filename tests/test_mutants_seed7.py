"""Tests from the survivors of seed 7 (``make mutate-sample SAMPLE=40 SAMPLE_SEED=7 MUTATE=store``, session
13), of the whole-module run of ``pool`` beside it and of the store's metadata functions (``info``,
``concept_counts``, ``resolve_concepts``, ``concept_names``, ...) checked whole after it, each stated as the
property a user relies on; the docstrings name the mutants they kill."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu.errors import StoreError
from seals_gpu.pool import NeighborCache
from seals_gpu.store import Store, write_store

from .conftest import embedding_column
from .conftest import unit_rows as _unit

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# ------------------------------------------------------------------------------------------------- store
def test_a_row_group_without_id_statistics_may_hold_any_int64_id(tmp_path) -> None:
    """A Parquet file written without column statistics (some writers skip them) cannot say which ids its
    row groups hold, so each one's range is the whole int64 range, exactly, and lookups still find ids at
    both ends of it (kills ``Store.id_ranges`` mutant 11: the upper end past int64)."""
    root = tmp_path / "s"
    root.mkdir()
    ids = np.array([INT64_MIN, -3, 0, 5, INT64_MAX], dtype=np.int64)
    x = _unit(5, 4, seed=7)
    table = pa.table({"id": pa.array(ids), "embedding": embedding_column(x)})
    pq.write_table(table, root / "part-0.parquet", row_group_size=2, write_statistics=False)
    store = Store(root)
    assert store.id_ranges(0) == [(INT64_MIN, INT64_MAX)] * 3
    assert all(type(a) is int and type(z) is int for a, z in store.id_ranges(0))
    assert store.row_groups_with(0, np.array([INT64_MAX], dtype=np.int64)) == [0, 1, 2]
    np.testing.assert_allclose(store.take(ids[[4, 0]]), x[[4, 0]], rtol=1e-6, atol=1e-7)


def test_the_dimension_is_read_from_the_first_embedding_that_is_not_null(tmp_path) -> None:
    """Variable-length list embeddings carry no dimension in the schema: it is read from the first non-null
    row, so a null first row does not make the store unreadable with a wrong reason; the null itself is
    refused when rows are read, naming its row (kills ``Store._first_list_len`` mutant 5: rows read two at
    a time, so the second row was never looked at; and 12, the all-null file's message)."""
    root = tmp_path / "s"
    root.mkdir()
    emb = pa.array([None, [0.6, 0.8, 0.0]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "embedding": emb}), root / "a.parquet")
    store = Store(root)
    assert store.dim == 3
    with pytest.raises(StoreError, match=r"column 'embedding' has a null at row 0"):
        store.validate()
    # every embedding null: nothing to read a dimension from, said so, naming the file
    emb = pa.array([None, None], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "embedding": emb}), root / "a.parquet")
    with pytest.raises(StoreError) as e:
        Store(root)
    assert str(e.value) == f"{root / 'a.parquet'}: no embedding to read a dimension from"


def test_concept_names_keyed_by_strings_for_an_int_store_are_refused_saying_int64(tmp_path) -> None:
    """A ``_concepts.parquet`` keyed by strings beside int64 labels is refused, the message saying which kind
    the store's labels are (kills ``Store.concept_names`` mutant 57: 'string' said for an int store)."""
    store = write_store(tmp_path / "s", np.arange(4), _unit(4, 4), labels=[[1], [2], [], [1]])
    names = pa.table({"concept_id": pa.array(["a", "b"]), "name": pa.array(["cat", "dog"])})
    pq.write_table(names, store.path / "_concepts.parquet")
    with pytest.raises(StoreError, match=r"the store's labels are int64 concept ids; rewrite it"):
        Store(store.path).concept_names()


@pytest.mark.parametrize("token", [str(INT64_MIN - 1), str(-(3**40)), str(2**63)])
def test_concept_ids_outside_int64_are_unknown_concepts(tmp_path, token: str) -> None:
    """Labels are int64, so an int token outside that range can name no concept: refused as unknown with
    the hint, on both ends of the range (kills ``Store.resolve_concepts`` mutant 53: the lower end moved to
    -(3**63))."""
    store = write_store(tmp_path / "s", np.arange(4), _unit(4, 4), labels=[[1], [2], [], [1]])
    with pytest.raises(StoreError, match=rf"^unknown concept '{token}'; list the store's concepts"):
        store.resolve_concepts([token])
    assert store.resolve_concepts([str(INT64_MIN), str(INT64_MAX)]) == [INT64_MIN, INT64_MAX]


# -------------------------------------------------------------------------------------------------- pool
def _cache_near_2_62() -> tuple[NeighborCache, np.ndarray]:
    """A neighbour cache of ids 2**62 + 0..9: consecutive ids that float64 cannot tell apart."""
    ids = np.arange(10, dtype=np.int64) + 2**62
    cache = NeighborCache(3)
    D = np.tile(np.float32([0.9, 0.8, 0.7]), (10, 1))
    I = np.stack([ids + 1, ids + 2, ids + 3], axis=1)
    cache.add(ids, D, I)
    return cache, ids


@pytest.mark.parametrize("dtype", [np.uint64, np.int64, object])
def test_neighbor_cache_lookup_is_exact_for_ids_in_any_integer_dtype(dtype) -> None:
    """Ids handed over as uint64 (an Arrow column) or Python ints are looked up exactly, also past 2**53
    where float64 rounds neighbouring ids together (kills ``NeighborCache.lookup`` mutants 3 and 5: the
    ids not cast to int64, so numpy compared them as float64 and reported cached ids as missing)."""
    cache, ids = _cache_near_2_62()
    want = ids[[7, 1, 8]]
    D, I = cache.lookup(np.array([int(v) for v in want], dtype=dtype))
    assert I.dtype == np.int64 and D.dtype == np.float32
    np.testing.assert_array_equal(I[:, 0], want + 1)


def test_neighbor_cache_names_at_most_five_missing_ids() -> None:
    """A lookup of ids that were never cached raises a KeyError naming the first five of them, not the
    whole list (kills ``NeighborCache.lookup`` mutant 38)."""
    cache, ids = _cache_near_2_62()
    missing = [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(KeyError, match=r"ids \[1, 2, 3, 4, 5\] are not in the neighbour cache"):
        cache.lookup(np.concatenate([ids[:2], missing]))


def test_neighbor_cache_stores_a_similarity_float32_cannot_hold_as_a_missing_slot() -> None:
    """Similarities are kept as float32 and a slot whose similarity is not finite is stored as missing
    (-inf / -1): a float64 similarity past float32's range (1e39) becomes -inf / -1, not +inf beside a real
    id (kills ``NeighborCache.add`` mutants 16 and 18: the finiteness test made on the float64 input)."""
    cache = NeighborCache(3)
    D = np.array([[0.9, 1e39, 0.5]], dtype=np.float64)
    with np.errstate(over="ignore"):  # the cast to float32 overflows, as it should
        cache.add(np.array([7]), D, np.array([[11, 12, 13]]))
    D_got, I_got = cache.lookup(np.array([7]))
    assert D_got.dtype == np.float32
    assert I_got.tolist() == [[11, -1, 13]]
    assert D_got[0, 1] == -np.inf and np.allclose(D_got[0, [0, 2]], [0.9, 0.5])


def test_neighbor_cache_grows_geometrically_one_id_at_a_time() -> None:
    """Adding ids one at a time (the driver adds each round's new labels) is amortised O(1): the first tables
    hold 1,024 rows and then double, so 3,000 adds reallocate them three times, and they never hold more than
    twice the cached rows past the first 1,024 (kills ``NeighborCache.add`` mutants 63 and 68, which grew
    the tables by exactly what was needed, so every add past the first capacity copied them all; 64, which
    started from one row and doubled a dozen times; and 67, which tripled them)."""
    cache = NeighborCache(2)
    reallocations, table = 0, cache._I
    for i in range(3000):
        cache.add(np.array([i]), np.float32([[0.5, 0.25]]), np.array([[i + 1, i + 2]]))
        if cache._I is not table:
            reallocations, table = reallocations + 1, cache._I
        assert cache._I.shape[0] <= 2 * max(len(cache), 1024)
    assert reallocations <= 4
    D, I = cache.lookup(np.array([2999, 0, 1500]))
    assert I[:, 0].tolist() == [3000, 1, 1501]


def test_a_concept_without_positives_gets_an_empty_int64_id_array(tmp_path) -> None:
    """``concept_positives`` answers int64 ids for every concept asked, an empty int64 array for one that no
    row holds (ids are int64 everywhere; kills ``Store.concept_positives`` mutant 42: float64 for those)."""
    store = write_store(tmp_path / "s", np.arange(4) - 2, _unit(4, 4), labels=[[1], [2], [], [1]])
    pos = store.concept_positives([1, 99])
    assert pos[1].dtype == np.int64 and pos[1].tolist() == [-2, 1]
    assert pos[99].dtype == np.int64 and pos[99].size == 0


# a concept on the first n of 20,000 rows for each n: prevalences on every histogram edge (n / 20,000 is the
# double nearest each edge), one below the first edge and one on every row (prevalence 1.0)
_INFO_COUNTS = {
    3: 1,
    11: 1,
    21: 2,
    22: 4,
    23: 10,
    24: 20,
    25: 40,
    26: 100,
    27: 199,
    28: 200,
    29: 2000,
    30: 20_000,
}


@pytest.fixture(scope="module")
def info_store(tmp_path_factory) -> Store:
    n = 20_000
    labels: list[list[int]] = [[] for _ in range(n)]
    for c, m in _INFO_COUNTS.items():
        for row in range(m):
            labels[row].append(c)
    split = np.where(np.arange(n) % 5 == 0, "test", "train")  # 4,000 test rows
    ids = np.arange(n, dtype=np.int64) * 3 - 7
    x = np.random.default_rng(7).normal(size=(n, 4)).astype(np.float32)
    return write_store(
        tmp_path_factory.mktemp("info") / "s", ids, x, labels=labels, split=split, rows_per_file=8000
    )


def test_info_reports_every_field_against_counts_made_independently(info_store: Store) -> None:
    """``store info``'s summary, field by field, against what the rows written say: rows, dimension, files,
    fingerprint, split source and sizes, concept count and kind, the prevalence histogram with every edge
    (a prevalence on an edge falls in the bin it opens, 1.0 in the last), the ten largest concepts (ties
    by the key's text) and the counts (kills the ``Store.info`` mutants that rename a key, report another
    path (53), move an edge or change the binning, the split arithmetic or the top-ten order)."""
    info = info_store.info()
    edges = [0.0, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 1e-1, 1.0]
    # 3 and 11 at 5e-5; 21 on 1e-4; 22 on 2e-4; 23 on 5e-4; 24 on 1e-3; 25 on 2e-3; 26 on 5e-3; 27 just below
    # 1e-2 and 28 on it; 29 on 0.1 and 30 at 1.0
    per_bin = [2, 1, 1, 1, 1, 1, 2, 1, 2]
    assert info == {
        "path": str(info_store.path),
        "rows": 20_000,
        "dim": 4,
        "files": 3,
        "fingerprint": info_store.fingerprint,
        "split": {"source": "column", "train": 16_000, "test": 4_000},
        "concepts": 12,
        "label_kind": "int",
        "prevalence_histogram": [
            {"min": edges[i], "max": edges[i + 1], "concepts": per_bin[i]} for i in range(9)
        ],
        "top_concepts": [
            (30, 20_000),
            (29, 2000),
            (28, 200),
            (27, 199),
            (26, 100),
            (25, 40),
            (24, 20),
            (23, 10),
            (22, 4),
            (21, 2),
        ],
        "counts": _INFO_COUNTS,
    }
    assert [h["concepts"] for h in info["prevalence_histogram"]] == per_bin
    assert list(info) == [
        "path",
        "rows",
        "dim",
        "files",
        "fingerprint",
        "split",
        "concepts",
        "label_kind",
        "prevalence_histogram",
        "top_concepts",
        "counts",
    ]


def test_info_breaks_ties_among_the_top_concepts_by_the_key_as_text(tmp_path) -> None:
    """Concepts with equal counts are listed by their key's text ('11' before '3'), and only ten are
    listed (kills the ``Store.info`` mutants that drop the tie-break or the cut)."""
    labels = [list(range(1, 13)), [], [], []]
    info = write_store(tmp_path / "s", np.arange(4), _unit(4, 4), labels=labels).info()
    assert [c for c, _ in info["top_concepts"]] == [1, 10, 11, 12, 2, 3, 4, 5, 6, 7]
    assert info["split"]["source"] == "hash(id)"
    assert info["split"]["train"] + info["split"]["test"] == 4


def test_concept_counts_within_each_split(info_store: Store) -> None:
    """Counts per concept within the test split (every fifth row) and the train split add up to the
    whole store's, each counted here from the rows as written."""
    test = info_store.concept_counts(split="test")
    train = info_store.concept_counts(split="train")
    want_test = {c: len(range(0, m, 5)) for c, m in _INFO_COUNTS.items()}
    assert test == want_test
    assert train == {c: m - want_test[c] for c, m in _INFO_COUNTS.items() if m - want_test[c]}
    assert info_store.concept_counts() == _INFO_COUNTS
    with pytest.raises(StoreError, match=r"split='dev'; use 'train', 'test' or None"):
        info_store.concept_counts(split="dev")


@pytest.fixture
def named_store(tmp_path) -> Store:
    """Int labels 1..9 with a ``_concepts.parquet``: 'Dog' and 'dog' (two concepts, one name in any case),
    'cat', and six concepts all named 'bird'."""
    store = write_store(tmp_path / "s", np.arange(9), _unit(9, 4), labels=[[c] for c in range(1, 10)])
    names = ["Dog", "cat", "dog", "bird", "bird", "bird", "bird", "bird", "bird"]
    t = pa.table({"concept_id": pa.array(range(1, 10), pa.int64()), "name": pa.array(names)})
    pq.write_table(t, store.path / "_concepts.parquet")
    return Store(store.path)


def test_resolve_concepts_reads_ids_wordnet_ids_and_names_in_any_case(named_store: Store) -> None:
    """``--concepts`` tokens: an int id, a WordNet-style ``n<digits>`` id, a name in any case with blanks
    around it; empty tokens are skipped; the keys come back in the order given (kills ``Store.resolve_
    concepts`` mutants that stop stripping, lowercasing, reading ``n``-ids or skipping empty tokens)."""
    assert named_store.concept_names()[2] == "cat"
    assert named_store.resolve_concepts(["5", " n3 ", "", "  ", "CAT ", "-4"]) == [5, 3, 2, -4]
    assert named_store.resolve_concepts(["n00000007"]) == [7]


def test_resolve_concepts_refuses_ambiguous_and_unknown_names_saying_what_to_do(named_store: Store) -> None:
    """A name shared by several concepts is refused with how many and the first five of them, and the fix
    (pass the id); a name no concept has is refused naming the command that lists them; ``n`` alone or
    ``nx5`` are names, not ids (kills ``Store.resolve_concepts`` mutants that change a message, the five,
    or let an ambiguous name through)."""
    with pytest.raises(
        StoreError,
        match=r"^concept name 'dog' is ambiguous \(2 concepts: \[1, 3\]\); pass the concept id instead$",
    ):
        named_store.resolve_concepts(["dog"])
    with pytest.raises(
        StoreError, match=r"^concept name 'Bird' is ambiguous \(6 concepts: \[4, 5, 6, 7, 8\]\)"
    ):
        named_store.resolve_concepts(["1", "Bird"])
    for tok in ("horse", "n", "nx5"):
        with pytest.raises(StoreError) as e:
            named_store.resolve_concepts([tok])
        assert str(e.value) == (
            f"unknown concept {tok!r}; list the store's concepts with `seals-gpu store info {named_store.path}`"
        )
    with pytest.raises(StoreError, match=r"^concept 5 is listed twice; list each concept once$"):
        named_store.resolve_concepts(["5", "n5"])


def test_resolve_concepts_of_a_string_store_takes_the_labels_as_given(tmp_path) -> None:
    """String labels are their own keys: tokens are stripped but not lowercased or parsed as ids."""
    s = write_store(tmp_path / "s", np.arange(3), _unit(3, 4), labels=[["Cat"], ["n5"], ["7"]])
    assert s.resolve_concepts([" Cat", "n5", "7", ""]) == ["Cat", "n5", "7"]


def test_concept_names_side_file_read_or_refused_with_its_fix(tmp_path) -> None:
    """``_concepts.parquet``: absent gives no names; keyed by ``concept_id`` or by ``concept``; a folder, a
    file that is not Parquet, or one without the two columns is refused naming the file and saying to
    rewrite or remove it; int keys beside string labels are refused saying the labels are strings."""
    fix = "rewrite it, or remove it (the store works without names)"
    s = write_store(tmp_path / "s", np.arange(3), _unit(3, 4), labels=[["a"], ["b"], []])
    f = s.path / "_concepts.parquet"
    assert s.concept_names() == {}
    pq.write_table(pa.table({"concept": ["a", "b"], "name": ["Apple", "Bee"]}), f)
    assert s.concept_names() == {"a": "Apple", "b": "Bee"}
    pq.write_table(pa.table({"concept_id": pa.array([1, 2]), "name": ["Apple", "Bee"]}), f)
    with pytest.raises(StoreError) as e:
        s.concept_names()
    assert (
        str(e.value)
        == f"{f}: column 'concept_id' holds int64, but the store's labels are string concept ids; {fix}"
    )
    pq.write_table(pa.table({"concept_id": ["a"], "title": ["Apple"]}), f)
    with pytest.raises(StoreError) as e:
        s.concept_names()
    assert (
        str(e.value)
        == f"{f}: expected columns 'concept_id' (or 'concept') and 'name', found ['concept_id', 'title']; {fix}"
    )
    f.write_bytes(b"not parquet")
    with pytest.raises(
        StoreError, match=rf"^{f}: not a readable Parquet file \(.+\); rewrite it, or remove it"
    ):
        s.concept_names()
    f.unlink()
    f.mkdir()
    with pytest.raises(StoreError) as e:
        s.concept_names()
    assert str(e.value) == f"{f} is not a file (the concept-names side file); {fix}"


def test_info_reads_no_embedding_so_it_summarises_a_store_with_bad_vectors(tmp_path) -> None:
    """``store info`` reads ids, labels and the split only (on a billion-row store the vectors are nearly all
    the bytes): a store written by another tool with an all-zero and a NaN vector is still summarised,
    while ``validate`` refuses it (kills ``Store.info`` mutants 5 and 7: the vectors read and normalised)."""
    root = tmp_path / "s"
    root.mkdir()
    x = _unit(4, 3)
    x[1] = 0.0
    x[2, 0] = np.nan
    labels = pa.array([[1], [1], [], [2]], type=pa.list_(pa.int64()))
    table = pa.table({"id": pa.array(np.arange(4)), "embedding": embedding_column(x), "labels": labels})
    pq.write_table(table, root / "a.parquet")
    store = Store(root)
    info = store.info()
    assert info["rows"] == 4 and info["counts"] == {1: 2, 2: 1}
    with pytest.raises(StoreError):
        store.validate()
