"""Tests written from the survivors of the second sampled mutation run (session 9, ``make mutate-sample
SAMPLE=20 SAMPLE_SEED=1``: a fresh draw, measuring the modules again after session 8's tests).

Each test states the property a user relies on; the docstring names the mutants it kills. Survivors that no
test can observe are listed, with the reason, in ``benchmarks/mutation_equivalent.json``.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from seals_gpu.config import RunConfig
from seals_gpu.driver import Run, run
from seals_gpu.errors import ConfigError, IndexError_, SealsError
from seals_gpu.index.shard import IndexShard, train_ivfpq
from seals_gpu.oracle import SimulatedOracle
from seals_gpu.retrieve import top_n_stream
from seals_gpu.scoring import TopB, score_candidates, score_select
from seals_gpu.split import ABSENT, TEST, TRAIN, ShardSplit, Split
from seals_gpu.strategies import select_topk, select_topk_segmented
from seals_gpu.synth import make_synthetic_store

from .conftest import unit_rows as _unit


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_store(
        tmp_path_factory.mktemp("seed1") / "store",
        n=4000,
        dim=16,
        concepts=4,
        prevalence=(0.01, 0.02),
        seed=3,
    )


# ------------------------------------------------------------------------------------------------ driver
def _config(store, concepts: tuple[int, ...]) -> RunConfig:
    """A small SEALS MaxEnt run over ``store``: 3 rounds of 10 after a seed set of 2 + 8."""
    return RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=concepts,
        strategies=("maxent",),
        modes=("seals",),
        budget=30,
        batch=10,
        k=5,
        seed_positives=2,
        seed_negatives=8,
    )


def test_each_units_seconds_add_up_to_the_runs_timings(synth, tmp_path) -> None:
    """metrics.parquet splits each round's fit, pool-growth and selection time between the units that spent
    it: summed over units and rounds they give the run's own totals, whatever the number of SEALS units
    (kills ``Run._record`` mutant 11: growth time divided by the count of non-SEALS units)."""
    r = run(
        synth,
        tmp_path / "r",
        concepts=[0, 1, 2],
        strategies=("maxent", "mlp"),
        modes=("seals",),
        budget=90,
        batch=20,
        k=8,
        seed_positives=2,
        seed_negatives=8,
    )
    m = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pydict()
    assert len(set(m["round"])) == 5 and len(m["round"]) == 6 * 5
    for column, key in (("seconds_search", "search"), ("seconds_fit", "fit"), ("seconds_select", "select")):
        assert math.isclose(sum(m[column]), r.timings[key], rel_tol=1e-9, abs_tol=1e-12), column
    assert r.timings["search"] > 0


def test_an_oracle_answering_the_wrong_number_of_labels_is_named(synth, tmp_path) -> None:
    """An oracle (the Python API takes any object with ``label``) that answers a batch with the wrong number
    of labels stops the run with both shapes in the message (kills ``Run._add_labels`` mutant 7)."""

    class Short(SimulatedOracle):
        def label(self, concept, ids):
            return super().label(concept, ids)[:-1]

    truth = synth.concept_positives([0])
    cfg = _config(synth, (0,))
    r = Run(cfg, tmp_path / "r", store=synth, oracle=Short(truth), progress=False, log=lambda *_: None)
    with pytest.raises(SealsError, match=r"the oracle returned \(9,\) labels for \(10,\) ids"):
        r.start()


def test_a_concept_with_no_positive_in_the_store_is_named_with_the_fix(synth, tmp_path) -> None:
    """A concept id the store's labels never mention stops the run before anything is written, naming the
    concept and the store (kills ``Run.__init__`` mutant 213: an error with no message)."""
    cfg = _config(synth, (0, 987654))
    with pytest.raises(
        ConfigError, match=rf"concept 987654 has no positives in {synth.path}; check the concept"
    ):
        Run(cfg, tmp_path / "r", store=synth, progress=False, log=lambda *_: None)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------- index.shard
def test_an_ivfpq_shard_without_its_faiss_file_names_it(tmp_path) -> None:
    """Loading an IVF-PQ shard whose ``index.faiss`` is gone names that file and says to rebuild (kills
    ``IndexShard.load`` mutant 60: an error with no message)."""
    x = _unit(300, 8)
    IndexShard.build(
        np.arange(300, dtype=np.int64), x, kind="ivfpq", trained=train_ivfpq(x, nlist=4, pq_m=2)
    ).save(tmp_path / "s")
    (tmp_path / "s" / "index.faiss").unlink()
    with pytest.raises(IndexError_, match=r"index\.faiss is missing; rebuild the index"):
        IndexShard.load(tmp_path / "s", kind="ivfpq")


def test_a_flat_shard_with_fewer_vectors_than_ids_is_refused() -> None:
    """Ids and vectors must pair up row for row: a flat shard given one vector fewer than ids is refused
    with both shapes (kills ``IndexShard.__init__`` mutant 3: ``or`` turned ``and`` let it through, and the
    last id then had no vector)."""
    x = _unit(10, 8)
    with pytest.raises(IndexError_, match=r"shard ids \(10,\) and vectors \(9, 8\) disagree"):
        IndexShard.build(np.arange(10, dtype=np.int64), x[:9], kind="flat")
    with pytest.raises(IndexError_, match=r"disagree"):
        IndexShard.build(np.arange(10, dtype=np.int64), x[:, 0], kind="flat")


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_no_queries_or_an_empty_shard_give_float32_minus_inf_and_minus_1(kind: str) -> None:
    """No query, or a shard holding no item, still answers with the documented arrays: float32 ``-inf``
    similarities and int64 ``-1`` ids of shape (nq, k) (kills ``IndexShard.search`` mutant 28: a fill value
    dropped, which made an object array of the dtype itself)."""
    x = _unit(300, 8)
    ids = np.arange(300, dtype=np.int64) + 2**40
    shard = IndexShard.build(
        ids, x, kind=kind, trained=train_ivfpq(x, nlist=4, pq_m=2) if kind == "ivfpq" else None
    )
    D, I = shard.search(x[:0], 4)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (0, 4)
    empty = IndexShard.build(np.empty(0, np.int64), np.empty((0, 8), np.float32), kind="flat")
    D, I = empty.search(x[:3], 4)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (3, 4)
    assert np.isneginf(D).all() and (I == -1).all()


# ----------------------------------------------------------------------------------------------- scoring
def test_a_top_n_over_no_rows_is_all_padding() -> None:
    """A top-n that saw no row (an empty stream: nothing left to retrieve) holds no entry: counts 0 and the
    documented padding, ids -1 and scores -inf (kills ``TopB.empty`` mutant 15: padding id +1, a real id)."""
    for top in (
        TopB.empty(3, 5, torch.device("cpu")),
        top_n_stream(iter([]), torch.ones(3, 4), torch.zeros(3), 5),
        top_n_stream(
            iter([(np.empty(0, np.int64), np.empty((0, 4), np.float32))]), torch.ones(3, 4), torch.zeros(3), 5
        ),
    ):
        assert top.counts.tolist() == [0, 0, 0]
        assert top.ids.dtype == torch.int64 and top.scores.dtype == torch.float32
        assert (top.ids == -1).all() and torch.isneginf(top.scores).all()


@pytest.mark.parametrize(("rows", "ids", "named"), [("float", "int", "rows"), ("int", "bool", "ids")])
def test_candidate_rows_and_ids_that_are_not_integers_are_named(rows: str, ids: str, named: str) -> None:
    """Float row positions or bool ids are refused (not truncated or read as 0/1), the message naming the
    argument and its dtype (kills ``_check_batch`` mutant 20: an error with no message)."""
    emb = torch.from_numpy(_unit(10, 4))
    dtypes = {"int": torch.int64, "float": torch.float32, "bool": torch.bool}
    r = torch.tensor([0, 1, 2]).to(dtypes[rows])
    i = torch.tensor([5, 6, 7]).to(dtypes[ids])
    unit = (torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.int64), None, 1.0)
    offsets = torch.tensor([0, 3])
    bad = str(dtypes[ids if named == "ids" else rows])
    with pytest.raises(ValueError, match=rf"^{named} must be int64, got {bad}$"):
        score_select(emb, r, i, offsets, *unit, 2, backend="torch")
    if named == "rows":
        with pytest.raises(ValueError, match=rf"^rows must be int64, got {bad}$"):
            score_candidates(emb, r, offsets, *unit, backend="torch")


# ---------------------------------------------------------------------------------------------- strategies
def test_integer_scores_rank_and_float32_scores_come_back_float32() -> None:
    """Scores of any real dtype rank the same way: integer scores (counts, votes) are accepted by both
    selections and ranked like their float values; float32 scores come back float32 from the segmented
    selection, unwidened (kills ``_rank_scores`` mutant 1: integers refused, float32 widened)."""
    ids = torch.tensor([40, 10, 30, 20, 50], dtype=torch.int64)
    ints = torch.tensor([3, 7, 7, -2, 0], dtype=torch.int32)
    assert select_topk(ints, ids, 3).tolist() == [10, 30, 40]
    sel_ids, sel_scores, counts = select_topk_segmented(ints, ids, torch.tensor([0, 2, 5]), 2)
    assert sel_ids.tolist() == [[10, 40], [30, 50]] and counts.tolist() == [2, 2]
    assert sel_scores.tolist() == [[7.0, 3.0], [7.0, 0.0]]
    f32 = ints.to(torch.float32)
    _, sel_scores, _ = select_topk_segmented(f32, ids, torch.tensor([0, 2, 5]), 2)
    assert sel_scores.dtype == torch.float32 and sel_scores.tolist() == [[7.0, 3.0], [7.0, 0.0]]


# ------------------------------------------------------------------------------------------------- split
def test_a_shard_holding_a_single_id_owns_it() -> None:
    """A shard of one id (its range is a single point) answers for that id like any other shard: the id's
    train/test code comes back, not ABSENT (kills ``Split._owner`` mutant 3: one-id shards taken as
    empty)."""
    parts = [
        ShardSplit(np.array([-(2**62)]), np.array([True])),
        ShardSplit(np.array([3, 4, 9]), np.array([False, True, False])),
        ShardSplit(np.empty(0, np.int64), np.empty(0, bool)),
        ShardSplit(np.array([2**62]), np.array([False])),
    ]
    split = Split.of_parts(parts)
    asked = np.array([2**62, -(2**62), 4, 5, 3, -(2**62) + 1], dtype=np.int64)
    assert split.codes(asked).tolist() == [TRAIN, TEST, TEST, ABSENT, TRAIN, ABSENT]
