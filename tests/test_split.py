"""The train/test split answered where the rows live (seals_gpu/split.py): every question a run asks of it
(sizes, membership, ids by rank, full lists) against one sorted array, over any sharding; the store-side
readers (a shard's own test ids, the streamed split) against ``Store.read_split``; and a Ray run whose driver
never reads the split, equal to the in-process run."""

from __future__ import annotations

import numpy as np
import pytest

from seals_gpu.errors import IndexError_
from seals_gpu.seeds import draw_excluding, draw_seed_set
from seals_gpu.split import ABSENT, TEST, TRAIN, ShardSplit, Split, shard_test_ids, split_codes, store_split
from seals_gpu.store import Store, write_store

from .conftest import clustered
from .ray_fixture import ray_local_fixture  # noqa: F401  (the session-wide local Ray)

I64 = np.iinfo(np.int64)


def _sharded(ids: np.ndarray, is_test: np.ndarray, n_shards: int, rng: np.random.Generator) -> Split:
    """``ids`` (sorted) cut into ``n_shards`` contiguous parts at random places (empty parts included)."""
    cuts = np.sort(rng.integers(0, ids.size + 1, size=n_shards - 1))
    bounds = np.concatenate([[0], cuts, [ids.size]])
    parts = [ShardSplit(ids[a:b], is_test[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return Split.of_parts(parts)


def _random_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(rng.integers(I64.min, I64.max, size=n, dtype=np.int64, endpoint=True))
    ids[: min(2, ids.size)] = [I64.min, I64.min + 1][: min(2, ids.size)]  # the ends of the int64 range
    ids[-1] = I64.max
    ids = np.unique(ids)
    return ids, rng.random(ids.size) < 0.3


@pytest.mark.parametrize("seed", range(6))
def test_split_answers_like_one_sorted_array(seed, monkeypatch):
    import seals_gpu.split

    if seed % 2:  # membership asked in many small chunks (each routed on its own)
        monkeypatch.setattr(seals_gpu.split, "CODES_CHUNK", 37)
    rng = np.random.default_rng(seed)
    ids, is_test = _random_split(rng, int(rng.integers(50, 3000)))
    train, test = ids[~is_test], ids[is_test]
    split = _sharded(ids, is_test, int(rng.integers(1, 7)), rng)
    assert (split.train.size, split.test.size) == (train.size, test.size)
    np.testing.assert_array_equal(split.train.all(), train)
    np.testing.assert_array_equal(split.test.all(), test)
    # ranks in any order, repeated: like indexing the sorted array
    r = rng.integers(0, train.size, size=500)
    np.testing.assert_array_equal(split.train.take(r), train[r])
    rt = rng.integers(0, test.size, size=200)
    np.testing.assert_array_equal(split.test.take(rt), test[rt])
    # membership of ids of the store, absent ids between and beyond shards, repeats, any order
    absent = rng.integers(I64.min, I64.max, size=300, dtype=np.int64)
    absent = absent[~np.isin(absent, ids)]
    q = rng.permutation(np.concatenate([ids[rng.integers(0, ids.size, size=400)], absent, absent[:5]]))
    want = np.where(np.isin(q, train), TRAIN, np.where(np.isin(q, test), TEST, ABSENT))
    np.testing.assert_array_equal(split.codes(q), want)
    np.testing.assert_array_equal(split.train.contains(q), np.isin(q, train))
    np.testing.assert_array_equal(split.test.contains(q), np.isin(q, test))
    groups = [q[:10], q[10:10], q[10:]]
    for got, g in zip(split_codes(split, groups), groups, strict=True):
        np.testing.assert_array_equal(got, split.codes(g))


def test_ranks_outside_the_side_are_refused():
    split = Split.of_parts([ShardSplit(np.array([1, 2, 5, 9]), np.array([False, True, False, False]))])
    for bad in (-1, 3):
        with pytest.raises(IndexError, match=f"rank {bad}"):
            split.train.take(np.array([0, bad]))
    assert split.train.take(np.empty(0, np.int64)).size == 0


def test_empty_answers_are_int64_ids():
    """No shard, empty shards, an empty side: every listing is an empty int64 array (never float64, which
    would turn ids into floats wherever it is concatenated)."""
    empty = ShardSplit(np.empty(0, np.int64), np.empty(0, bool))
    only_test = ShardSplit(np.array([3, 4]), np.array([True, True]))
    for parts in ([], [empty], [empty, only_test, empty]):
        split = Split.of_parts(parts)
        got = split.train.all()
        assert got.dtype == np.int64 and got.shape == (0,), (len(parts), got)
    np.testing.assert_array_equal(Split.of_parts([empty, only_test]).test.all(), [3, 4])


@pytest.mark.parametrize("seed", range(4))
def test_draws_through_the_split_equal_draws_from_the_list(seed):
    """A run's random draws (seed negatives, probes, All-mode random) give the same ids whether the driver
    holds the sorted train ids or asks the shards by rank: same seed, same selections, any sharding."""
    rng = np.random.default_rng(seed)
    ids, is_test = _random_split(rng, 2000)
    train = ids[~is_test]
    split = _sharded(ids, is_test, 4, rng)
    pos = np.sort(rng.choice(train, size=30, replace=False))
    a = draw_excluding(np.random.default_rng(seed + 100), train, pos, 200)
    b = draw_excluding(np.random.default_rng(seed + 100), split.train, pos, 200)
    np.testing.assert_array_equal(a, b)
    assert not np.isin(b, pos).any() and np.unique(b).size == b.size and np.isin(b, train).all()
    s1, _ = draw_seed_set(np.random.default_rng(seed), train, pos, 5, 95)
    s2, _ = draw_seed_set(np.random.default_rng(seed), split.train, pos, 5, 95)
    np.testing.assert_array_equal(s1, s2)


@pytest.fixture(scope="module", params=["column", "hash"])
def split_store(request, tmp_path_factory) -> Store:
    """Ids in shuffled order over several files (so row groups overlap in id range), with a split column or
    the hash split."""
    rng = np.random.default_rng(5)
    ids = rng.permutation(np.unique(rng.integers(-(10**15), 10**15, size=2500)))
    x = rng.standard_normal((ids.size, 8)).astype(np.float32)
    split = np.where(rng.random(ids.size) < 0.25, "test", "train") if request.param == "column" else None
    return write_store(tmp_path_factory.mktemp("split") / "s", ids, x, split=split, rows_per_file=400)


def test_test_ids_between_equals_read_split(split_store):
    ids, is_test = split_store.read_split()
    test = np.sort(ids[is_test])
    rng = np.random.default_rng(0)
    for lo, hi in [(I64.min, I64.max), (0, 0), *np.sort(rng.choice(np.sort(ids), size=(6, 2)), axis=1)]:
        want = test[(test >= lo) & (test <= hi)]
        np.testing.assert_array_equal(split_store.test_ids_between(int(lo), int(hi)), want)


def test_sorted_store_is_read_only_around_the_range(tmp_path):
    """A store written in id order: a shard's range touches only its row groups (statistics skip the rest)."""
    import pyarrow.parquet as pq

    ids = np.arange(10_000, dtype=np.int64) * 3
    x = np.ones((ids.size, 4), np.float32)
    split = np.where(ids % 7 == 0, "test", "train")
    store = write_store(tmp_path / "s", ids, x, split=split, rows_per_file=1000)
    calls = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **k):
        calls.append(k.get("row_groups"))
        return real(self, *a, **k)

    pq.ParquetFile.iter_batches = spy
    try:
        got = store.test_ids_between(3 * 2500, 3 * 3400)
    finally:
        pq.ParquetFile.iter_batches = real
    np.testing.assert_array_equal(got, ids[(ids >= 7500) & (ids <= 10200) & (ids % 7 == 0)])
    assert len(calls) == 2, f"read {len(calls)} of {len(store.files)} files; 2 hold the range"


def test_shard_reads_its_own_test_ids(split_store):
    ids, is_test = split_store.read_split()
    order = np.argsort(ids)
    ids, is_test = ids[order], is_test[order]
    t = np.flatnonzero(is_test)
    # shards whose first and last rows are test rows (a boundary must be kept on both sides), one test row
    # alone, and no row at all
    ranges = [(0, ids.size), (100, 900), (2000, ids.size), (t[3], t[40] + 1), (t[7], t[7] + 1), (5, 5)]
    for a, b in ranges:
        got = shard_test_ids(str(split_store.path), split_store.fingerprint, ids[a:b])
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ids[a:b][is_test[a:b]])
    with pytest.raises(IndexError_, match="rebuild the index"):
        shard_test_ids(str(split_store.path), "0" * 32, ids[:10])


def test_store_split_streams_membership(split_store):
    ids, is_test = split_store.read_split()
    split = store_split(split_store)
    rng = np.random.default_rng(1)
    q = np.concatenate([rng.choice(ids, 300), [I64.min, I64.max, 123456789]])
    want = np.where(np.isin(q, ids[is_test]), TEST, np.where(np.isin(q, ids), TRAIN, ABSENT))
    np.testing.assert_array_equal(split.codes(q), want)
    for ask in (lambda: split.train.size, lambda: split.train.take(np.array([0])), split.test.all):
        with pytest.raises(NotImplementedError):
            ask()


@pytest.mark.ray
def test_ray_run_reads_no_split_in_the_driver(ray_local, tmp_path, monkeypatch):
    """With ``excluded=store.path`` every shard actor reads its own test rows; the driver never lists the
    split (Store.read_split is made to fail in the driver), and the run equals the in-process run."""
    import pyarrow.parquet as pq

    from seals_gpu.config import RunConfig
    from seals_gpu.device import resolve_device
    from seals_gpu.distributed import RayBackend
    from seals_gpu.driver import Run
    from seals_gpu.index import IndexSpec, build_index

    rng = np.random.default_rng(2)
    ids, x, labels = clustered(2400, 16, seed=3)
    split = np.where(rng.random(ids.size) < 0.2, "test", "train")  # a split column: read from the files
    store = write_store(tmp_path / "store", ids, x, labels=labels, split=split)
    build_index(store, tmp_path / "idx", IndexSpec(kind="flat", shards=3))
    cpu = resolve_device("cpu")
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(1, 2),
        index=str(tmp_path / "idx"),
        strategies=("maxent", "random"),
        modes=("seals",),
        k=10,
        batch=20,
        budget=160,
        seed_positives=3,
        seed_negatives=17,
        probe=5,
    )

    def run(out, **kw):
        r = Run(cfg, tmp_path / out, store=store, device=cpu, progress=False, log=lambda *_: None, **kw)
        r.start()
        return pq.read_table(tmp_path / out / "selections.parquet").to_pylist()

    want = run("local")

    def no_split(self):
        raise AssertionError("the driver read the whole split")

    monkeypatch.setattr(Store, "read_split", no_split)
    with RayBackend(tmp_path / "idx", excluded=store.path, device=cpu) as be:
        assert (be.split.train.size, be.split.test.size) == (
            int((split == "train").sum()),
            int((split == "test").sum()),
        )
        got = run("ray", backend=be)
    assert got == want


@pytest.mark.parametrize("seed", range(4))
def test_random_all_on_shards_equals_one_sorted_list(seed):
    """All-mode Random drawn shard by shard (each shard's train rows, merged) picks what scoring the whole
    train list at once picks: the b best random scores (ties by lower id), labeled ids never."""
    import torch

    from seals_gpu.scoring import TopB, merge_topb, random_topb
    from seals_gpu.strategies import random_scores

    rng = np.random.default_rng(seed)
    ids, is_test = _random_split(rng, 3000)
    split = _sharded(ids, is_test, 5, rng)
    train = ids[~is_test]
    keys = [int(k) for k in rng.integers(0, 2**32, size=4)]
    exclude = [np.sort(rng.choice(train, size=int(rng.integers(0, 300)), replace=False)) for _ in keys]
    exclude[0] = np.empty(0, np.int64)
    b = int(rng.integers(1, 120))
    merged = TopB.empty(len(keys), b)
    for s in range(split.counts.shape[0]):
        part = split._call("side_ids", {s: (False,)})[s]
        top = random_topb(part, exclude, keys, 7, 3, b)
        merged = top if s == 0 else merge_topb(merged, top, b)
    for j, key in enumerate(keys):
        cand = train[~np.isin(train, exclude[j])]
        sc = random_scores(cand, 7, key, 3).numpy()
        want = cand[np.lexsort((cand, -sc))][:b]
        n = int(merged.counts[j])
        np.testing.assert_array_equal(merged.ids[j, :n].numpy(), want)
        assert merged.scores.dtype == torch.float64


def test_row_groups_with_keeps_every_row_group_holding_an_id(split_store, tmp_path):
    """Skipping row groups by their id statistics never skips one that holds a wanted id (shuffled store:
    ranges overlap), and on a store written in id order it keeps exactly the row groups holding them; the
    queue's pass-through columns read that way equal a full read."""
    import pyarrow.parquet as pq

    from seals_gpu.queue import _passthrough

    rng = np.random.default_rng(3)
    for store in (
        split_store,
        write_store(
            tmp_path / "sorted",
            np.arange(0, 9000, 3),
            np.ones((3000, 4)),
            extra={"text": [f"t{i}" for i in range(3000)]},
            rows_per_file=500,
        ),
    ):
        all_ids = store.read_ids()
        want = np.sort(rng.choice(all_ids, size=7, replace=False))
        for fi, f in enumerate(store.files):
            kept = set(store.row_groups_with(fi, want))
            pf = pq.ParquetFile(f)
            holding = {
                g
                for g in range(pf.num_row_groups)
                if np.isin(pf.read_row_group(g, columns=["id"]).column("id").to_numpy(), want).any()
            }
            assert holding <= kept
            if store is not split_store:
                assert kept == holding
    got = _passthrough(store, want[::-1])
    assert got["text"].to_pylist() == [f"t{i // 3}" for i in want[::-1]]
