"""Ids are any int64: -1, other negatives, int64's min and max are ids like any other.

Missing neighbours are told by their similarity (-inf) or a count, never by an id's sign or value; a concept
listed twice in one row counts once; a kNN graph part whose ids are not the store's is refused.

The end-to-end property: one small store written twice, with ids 0..n-1 and with the same rows under ids
spread over the whole int64 range (a monotonic map, so every "lower id first" tie-break and every seed draw
orders the rows the same way; rows stored in a shuffled order), selects the same items and records the same
metrics, through the in-process flat and IVF search, a precomputed graph and an IVF-PQ index.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seals_gpu.cli import main
from seals_gpu.driver import run
from seals_gpu.errors import IndexError_
from seals_gpu.graph import MANIFEST, KnnGraph, build_graph
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.index.merge import merge_neighbors, sort_neighbors
from seals_gpu.index.shard import IndexShard
from seals_gpu.index.subset import FlatSubset, IvfSubset
from seals_gpu.index.torch_exact import TorchExactIndex
from seals_gpu.oracle import SimulatedOracle
from seals_gpu.scoring import TopB, merge_topb
from seals_gpu.seeds import eligible_concepts
from seals_gpu.store import Store, write_store

from .conftest import clustered

I64 = np.iinfo(np.int64)
SPECIAL = np.array(
    [I64.min, I64.min + 1, -(2**62), -(2**40), -3, -2, -1, 0, 1, 2**40, I64.max - 1, I64.max], dtype=np.int64
)
N, DIM = 600, 8


def _spread_ids(n: int, seed: int) -> np.ndarray:
    """``n`` sorted distinct int64 ids over the whole range, SPECIAL included, about half negative."""
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.unique(rng.integers(I64.min, I64.max, size=4 * n, dtype=np.int64)), SPECIAL)
    return np.sort(np.r_[SPECIAL, rng.choice(pool, size=n - SPECIAL.size, replace=False)])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same rows as two stores: ids 0..N-1 ("plain") and ``spread[i]`` for id i ("spread")."""
    root = tmp_path_factory.mktemp("ids")
    ids, x, labels = clustered(N, DIM, n_concepts=2, seed=3, id_offset=0)
    base = ids // 7  # 0..N-1, shuffled over the rows
    rng = np.random.default_rng(1)
    split = np.where(rng.random(N) < 0.3, "test", "train")
    spread = _spread_ids(N, seed=2)
    # put -1, int64's min and max on train positives, so they can be seeds, neighbours, pool members, picks
    used: set[int] = set()
    for special, concept in ((-1, 0), (I64.min, 0), (I64.max, 1)):
        r = int(np.searchsorted(spread, special))  # the base id that maps to `special`
        j = next(j for j in range(N) if concept in labels[j] and split[j] == "train" and j not in used)
        other = int(np.flatnonzero(base == r)[0])
        base[j], base[other] = base[other], base[j]
        used.add(j)
    assert np.array_equal(np.sort(base), np.arange(N))
    plain = write_store(root / "plain", base, x, labels=labels, split=split)
    spread_store = write_store(root / "spread", spread[base], x, labels=labels, split=split)
    return {"root": root, "plain": plain, "spread": spread_store, "map": spread}


def _selections(run_dir: Path, id_map: np.ndarray | None) -> dict:
    sel = pq.read_table(run_dir / "selections.parquet").to_pydict()
    if id_map is not None:
        sel["id"] = np.searchsorted(id_map, np.asarray(sel["id"], dtype=np.int64)).tolist()
    return sel


def _metrics(run_dir: Path) -> dict:
    m = pq.read_table(run_dir / "metrics.parquet").to_pydict()
    return {k: v for k, v in m.items() if not k.startswith("seconds")}


def _assert_same_runs(a: Path, b: Path, id_map: np.ndarray) -> None:
    sa, sb = _selections(a, None), _selections(b, id_map)
    assert sa == sb, "the same rows under other ids selected other items"
    assert _metrics(a) == _metrics(b)
    raw = np.asarray(pq.read_table(b / "selections.parquet").column("id").to_numpy())
    assert (raw < 0).any() and np.isin([-1, I64.min, I64.max], raw).all()


SMALL = dict(concepts=[0, 1], budget=60, k=10, batch=10, seed_positives=2, seed_negatives=8)


@pytest.mark.parametrize(
    "settings",
    [
        dict(strategies=("maxent", "mlp", "id"), modes=("seals", "all"), search="flat"),
        dict(strategies=("maxent", "id"), modes=("seals",), search="ivf", expand="each"),
        dict(strategies=("id-knn",), modes=("seals",), search="auto"),
    ],
    ids=["flat", "ivf-each", "id-knn"],
)
def test_full_int64_ids_select_what_small_ids_select(pair, tmp_path, settings):
    for name in ("plain", "spread"):
        run(pair[name], tmp_path / name, **SMALL, **settings)
    _assert_same_runs(tmp_path / "plain", tmp_path / "spread", pair["map"])


def _cli(args: list) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("kind", ["graph", "ivfpq"])
def test_full_int64_ids_through_a_graph_and_an_ivfpq_index(pair, tmp_path, kind):
    for name in ("plain", "spread"):
        store = pair[name].path
        idx = tmp_path / f"idx-{name}"
        common = ["--concepts", "0,1", "--budget", 60, "--k", 10, "--batch", 10]
        common += ["--seed-positives", 2, "--seed-negatives", 8, "--device", "cpu", "--quiet"]
        if kind == "graph":
            assert _cli(["index", "build", store, idx, "--kind", "flat"]) == 0
            assert _cli(["index", "graph", idx, "--k", 10]) == 0
            extra = ["--graph", idx / "graph-k10", "--strategies", "maxent,id-knn", "--modes", "seals,all"]
        else:
            build = ["index", "build", store, idx, "--kind", "ivfpq", "--nlist", 8, "--pq-m", 4]
            assert _cli([*build, "--nprobe", 8, "--rerank", 8]) == 0
            extra = ["--index", idx, "--strategies", "maxent,mlp", "--modes", "seals"]
        assert _cli(["run", store, "--out", tmp_path / name, *common, *extra]) == 0
    _assert_same_runs(tmp_path / "plain", tmp_path / "spread", pair["map"])


# ------------------------------------------------------------------------------------ searchers, merge, pool
def _searchers(ids: np.ndarray, x: np.ndarray) -> dict:
    return {
        "shard": IndexShard(np.sort(ids), x[np.argsort(ids)], kind="flat"),
        "flat": FlatSubset(np.sort(ids), x[np.argsort(ids)]),
        "ivf": IvfSubset.train(ids, x, nlist=4, nprobe=4),
        "torch": TorchExactIndex(ids, x, device="cpu"),
    }


@pytest.mark.parametrize("monotonic, ties", [(True, False), (False, False), (True, True)])
def test_searchers_find_the_same_rows_under_any_ids(monotonic, ties):
    """With ``ties`` rows repeat (exact ties at the k-th place, resolved by the lower id after a float64
    re-score); only a monotonic map keeps "the lower id" the same row then."""
    rng = np.random.default_rng(5)
    n, k = 300, 12
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if ties:
        x = x[np.arange(n) // 5]  # every vector 5 times
    small = np.arange(n, dtype=np.int64)
    big = _spread_ids(n, seed=6)
    if not monotonic:
        big = rng.permutation(big)
    row_small = {int(i): r for r, i in enumerate(small)}
    row_big = {int(i): r for r, i in enumerate(big)}
    q = np.r_[np.flatnonzero(np.isin(big, [-1, I64.min, I64.max])), rng.choice(n, 20, replace=False)]
    for name, s_small in _searchers(small, x).items():
        s_big = _searchers(big, x)[name]
        D0, I0 = s_small.search(x[q], k, exclude_ids=small[q])
        D1, I1 = s_big.search(x[q], k, exclude_ids=big[q])
        assert np.isfinite(D0).all() and np.isfinite(D1).all(), name  # k real neighbours, none missing
        np.testing.assert_array_equal(D0, D1, err_msg=name)
        for r in range(q.size):  # the same rows (order may differ only inside exact ties)
            assert {row_small[int(i)] for i in I0[r]} == {row_big[int(i)] for i in I1[r]}, name
            assert big[q[r]] not in I1[r], f"{name}: the query's own id (maybe -1) was not excluded"
        # more neighbours asked for than rows: the missing slots are told by D, and -1 may still be real
        D2, I2 = s_big.search(x[q[:3]], n + 5)
        assert (np.isfinite(D2).sum(axis=1) == n).all(), name
        assert [set(row[np.isfinite(d)].tolist()) for d, row in zip(D2, I2)] == [set(big.tolist())] * 3, name


def test_merge_and_sort_tell_missing_entries_by_similarity():
    inf = np.inf
    D = np.array([[0.5, -inf, 0.9, 0.2, 0.9]], np.float32)
    I = np.array([[-1, 7, I64.max, I64.min, -5]], np.int64)
    Ds, Is = sort_neighbors(D, I, 6)
    assert Is[0, :4].tolist() == [-5, I64.max, -1, I64.min]
    assert Ds[0, :4].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.2]) and np.isneginf(Ds[0, 4:]).all()
    # shards: a real -1 in one, missing (-inf) entries in another; duplicates keep their best entry
    a = (np.array([[0.3, -inf]], np.float32), np.array([[-1, -1]], np.int64))
    b = (np.array([[0.8, 0.3, 0.1]], np.float32), np.array([[I64.min, -1, I64.max]], np.int64))
    Dm, Im = merge_neighbors([a, b], 4)
    assert Im[0, :3].tolist() == [I64.min, -1, I64.max] and np.isfinite(Dm[0, :3]).all()
    assert np.isneginf(Dm[0, 3]) and Im[0, 3] == -1
    assert merge_neighbors([b, a], 4)[1].tolist() == Im.tolist()


def test_merge_topb_keeps_valid_entries_first_whatever_their_id():
    """A valid entry whose score is -inf (a NaN score) and whose id is int64's max ties with the padding's
    sort key; the counts still say which entries are valid, and valid ones come first."""
    pad = TopB.empty(1, 2)  # no valid entry
    real = TopB(
        torch.tensor([[I64.max, -1]]), torch.tensor([[float("-inf"), float("-inf")]]), torch.tensor([2])
    )
    out = merge_topb(pad, real, 2)
    assert int(out.counts[0]) == 2 and sorted(out.ids[0].tolist()) == [-1, I64.max]
    one = merge_topb(pad, real, 1)
    assert int(one.counts[0]) == 1 and one.ids[0, 0].item() == -1  # ties by the lower id


# ------------------------------------------------------------------------------------------------ labels
def test_a_concept_listed_twice_in_a_row_counts_once(tmp_path):
    n = 200
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = np.arange(-100, 100, dtype=np.int64)
    # concept 5: 4 items, each listing it 3 times (12 values); concept 6: 10 items, listed once
    labels = [[5, 5, 7, 5] if i < 4 else ([6] if i < 14 else []) for i in range(n)]
    folder = tmp_path / "dup"
    folder.mkdir()
    table = pa.table(
        {
            "id": pa.array(ids),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
            "labels": pa.array(labels, type=pa.list_(pa.int64())),
            "split": pa.array(["train" if i % 4 else "test" for i in range(n)]),
        }
    )
    pq.write_table(table.slice(0, 150), folder / "part-00000.parquet")  # a repeat never spans files,
    pq.write_table(table.slice(150), folder / "part-00001.parquet")  # but batches do: two files
    store = Store(folder)
    assert store.concept_counts() == {5: 4, 6: 10, 7: 4}
    assert store.concept_counts(split="test") == {5: 1, 6: 3, 7: 1}
    assert store.concept_positives([5])[5].tolist() == [-100, -99, -98, -97]
    assert SimulatedOracle.from_store(store, [5]).label(5, ids[:6]).tolist() == [True] * 4 + [False] * 2
    info = store.info()
    assert info["counts"][5] == 4 and sum(h["concepts"] for h in info["prevalence_histogram"]) == 3
    # --concepts-sample's eligibility: 4 / 200 = 2% is outside [2.5%, 10%]; the inflated 12 / 200 was inside
    train = np.sort(ids[np.arange(n) % 4 != 0])
    assert eligible_concepts(store, (0.025, 0.10), 1, train) == [6]
    for b in store.iter_batches(embeddings=False, labels=True):
        assert all(len(row) == len(set(row)) for row in b.labels)
    # the writer stores each concept once per row
    written = write_store(tmp_path / "w", ids[:3], x[:3], labels=[[5, 5, 2], [], [2, 2]])
    assert pq.read_table(written.files[0]).column("labels").to_pylist() == [[5, 2], [], [2]]
    strs = write_store(tmp_path / "ws", ids[:2], x[:2], labels=[["a", "b", "a"], ["b", "b"]])
    assert pq.read_table(strs.files[0]).column("labels").to_pylist() == [["a", "b"], ["b"]]


# ------------------------------------------------------------------------------------------------- graphs
@pytest.fixture(scope="module")
def graph_of_spread(pair):
    """A flat index and a k=6 kNN graph over the spread-id store, in 3 parts."""
    idx = build_index(pair["spread"], pair["root"] / "spread-idx", IndexSpec(kind="flat"))
    return build_graph(idx.path, k=6, part_rows=250)


def _corrupt(graph: Path, tmp_path: Path, edit: Callable[..., None]) -> Path:
    """A copy of ``graph`` whose part 1 went through ``edit(ids, nbrs, sims)`` (numpy, in place)."""
    out = Path(shutil.copytree(graph, tmp_path / "corrupt"))
    part = out / "part-00001.parquet"
    t = pq.read_table(part)
    m, k = t.num_rows, len(t.column("neighbors")[0])
    ids = t.column("id").to_numpy().copy()
    nbrs = np.asarray(t.column("neighbors").combine_chunks().values).reshape(m, k).copy()
    sims = np.asarray(t.column("sims").combine_chunks().values).reshape(m, k).copy()
    edit(ids, nbrs, sims)
    off = pa.array(np.arange(0, (m + 1) * k, k, dtype=np.int32))
    cols = {
        "id": pa.array(ids),
        "neighbors": pa.ListArray.from_arrays(off, pa.array(nbrs.ravel())),
        "sims": pa.ListArray.from_arrays(off, pa.array(sims.ravel())),
    }
    pq.write_table(pa.table(cols), part)
    return out


def test_graph_over_full_int64_ids_is_valid(graph_of_spread, pair):
    g = KnnGraph.open(graph_of_spread)
    g.check_store(pair["spread"])
    assert (g.ids < 0).any() and np.isfinite(g.sims).all()
    assert (g.neighbors < 0).any() and np.isin(-1, g.ids)


def test_graph_part_with_foreign_ids_is_refused(graph_of_spread, pair, tmp_path):
    spread = pair["map"]
    absent = int(np.setdiff1d(np.arange(-10, 10), spread)[0])  # an id the store does not hold

    def foreign_neighbor(ids, nbrs, sims):
        nbrs[3, 2] = absent

    g = _corrupt(graph_of_spread, tmp_path / "a", foreign_neighbor)
    with pytest.raises(
        IndexError_, match=rf"part-00001.parquet: item .* has neighbour id {absent}, which is not"
    ):
        KnnGraph.open(g)

    all_ids, is_test = pair["spread"].read_split()
    test_ids = np.sort(all_ids[is_test])

    def foreign_item(ids, nbrs, sims):
        # a test item (never anyone's neighbour) moved into a gap of the ids: still sorted and unique, its
        # neighbours still store ids; only the store can tell
        r = next(r for r in range(ids.size - 1) if ids[r] in test_ids and int(ids[r + 1]) - int(ids[r]) > 1)
        ids[r] += 1
        assert ids[r] not in spread

    g = _corrupt(graph_of_spread, tmp_path / "b", foreign_item)
    opened = KnnGraph.open(g)
    with pytest.raises(
        IndexError_, match=r"part-00001.parquet: item id .* is not in store .*delete that part and rerun"
    ):
        opened.check_store(pair["spread"])

    def test_neighbor(ids, nbrs, sims):
        nbrs[0, 0] = next(t for t in test_ids if t not in nbrs[0] and t != ids[0])

    opened = KnnGraph.open(_corrupt(graph_of_spread, tmp_path / "c", test_neighbor))
    with pytest.raises(IndexError_, match=r"part-00001.parquet: .* in the test split .*delete that part"):
        opened.check_store(pair["spread"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ids, nbrs, sims: sims.__setitem__((2, 1), np.nan), "NaN or \\+inf similarities"),
        (lambda ids, nbrs, sims: sims.__setitem__((2, 1), 2.0), "not in descending order"),
        (lambda ids, nbrs, sims: sims.__setitem__((2, slice(0, 3)), -np.inf), "not in descending order"),
        (lambda ids, nbrs, sims: nbrs.__setitem__((4, 0), ids[4]), "listed as its own neighbour"),
    ],
    ids=["nan", "unsorted", "missing-first", "self"],
)
def test_graph_part_with_bad_rows_is_refused(graph_of_spread, tmp_path, edit, message):
    g = _corrupt(graph_of_spread, tmp_path, edit)
    with pytest.raises(IndexError_, match=rf"part-00001.parquet: .*{message}.*delete it and rerun"):
        KnnGraph.open(g)


def test_graph_missing_neighbours_are_told_by_similarity(graph_of_spread, pair, tmp_path):
    """Missing slots (sim -inf) at the end of a row are fine, whatever id they hold."""

    def fewer(ids, nbrs, sims):
        sims[5, 4:] = -np.inf
        nbrs[5, 4:] = 123  # not a store id, but not a neighbour either

    g = KnnGraph.open(_corrupt(graph_of_spread, tmp_path, fewer))
    g.check_store(pair["spread"])
    D, I = g.lookup(g.ids[250 + 5 : 250 + 6])
    assert np.isfinite(D).sum() == 4


def test_old_graph_format_over_negative_ids_is_refused(graph_of_spread, tmp_path):
    old = Path(shutil.copytree(graph_of_spread, tmp_path / "old"))
    header = json.loads((old / MANIFEST).read_text())
    header["format"] = "seals_gpu.graph/2"
    (old / MANIFEST).write_text(json.dumps(header))
    with pytest.raises(IndexError_, match=r"graph/2 graph over negative ids .*rebuild"):
        KnnGraph.open(old)


def test_cli_run_refuses_a_corrupt_graph_in_one_line(graph_of_spread, pair, tmp_path, capsys):
    def foreign_neighbor(ids, nbrs, sims):
        nbrs[0, 0] = 424242

    g = _corrupt(graph_of_spread, tmp_path, foreign_neighbor)
    args = ["run", pair["spread"].path, "--out", tmp_path / "run", "--graph", g, "--concepts", "0"]
    args += ["--k", 6, "--budget", 60, "--batch", 10, "--seed-positives", 2, "--seed-negatives", 8]
    code = _cli([*args, "--strategies", "maxent", "--modes", "seals", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "part-00001.parquet" in err and "424242" in err and "rerun" in err
    assert not (tmp_path / "run").exists()
