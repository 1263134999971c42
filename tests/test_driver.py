"""The engine end to end: properties of selections and pools, determinism, SEALS vs All, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from seals_gpu.config import RunConfig
from seals_gpu.driver import Run, run
from seals_gpu.errors import ConfigError, IndexError_
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.rundir import RunDirError
from seals_gpu.store import Store
from seals_gpu.synth import make_synthetic_store


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_store(
        tmp_path_factory.mktemp("d") / "store",
        n=12_000,
        dim=24,
        concepts=4,
        prevalence=(0.006, 0.012),
        seed=7,
    )


def _small(**kw):
    base = dict(
        strategies=("maxent", "mlp", "id", "random"),
        modes=("seals", "all"),
        budget=300,
        k=20,
        batch=50,
        seed_positives=3,
        seed_negatives=27,
    )
    base.update(kw)
    return base


def test_properties_of_selections_and_pools(synth, tmp_path):
    store = synth
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(0, 1),
        **_small(budget=230, batch=40),
    )
    pools_seen: dict[int, list[np.ndarray]] = {}

    class Watch(Run):
        def _record(self, round_no, t):
            super()._record(round_no, t)
            for u in self.units:
                lab = u.labeled_ids
                assert np.unique(lab).size == lab.size, "an id was labeled twice"
                assert not np.isin(u.pool.ids, lab).any(), "the pool holds a labeled id"
                ids, is_test = self.store.read_split()  # the split as the store has it
                assert np.isin(lab, ids[~is_test]).all(), "a test id was labeled"
                assert np.isin(u.pool.ids, ids[~is_test]).all(), "a test id entered the pool"
                if u.mode == "seals":
                    pools_seen.setdefault(u.index, []).append(np.union1d(u.pool.ids, lab))

    r = Watch(cfg, tmp_path / "run", store=store, progress=False, log=lambda *a: None)
    r.start()
    for seen in pools_seen.values():
        for a, b in zip(seen, seen[1:]):
            assert np.isin(a, b).all(), "pool ∪ labeled shrank"
    sel = pq.read_table(tmp_path / "run" / "selections.parquet").to_pydict()
    n_units = len(r.units)
    assert len(sel["id"]) == n_units * 230
    for u in r.units:
        rounds = [
            rr
            for c, s, m, rr in zip(sel["concept"], sel["strategy"], sel["mode"], sel["round"])
            if (c, s, m) == (u.concept, u.strategy, u.mode)
        ]
        counts = np.bincount(rounds)
        assert counts[0] == 30 and (counts[1:-1] == 40).all() and counts[-1] == 40
    m = pq.read_table(tmp_path / "run" / "metrics.parquet")
    assert m.column_names == [
        "concept",
        "strategy",
        "mode",
        "round",
        "n_labeled",
        "n_positives",
        "pool_size",
        "pool_fraction",
        "test_ap",
        "recall",
        "seconds_fit",
        "seconds_search",
        "seconds_select",
        "seconds_round",
    ]
    assert m.num_rows == n_units * (cfg.n_rounds + 1)


def test_seed_set_is_shared_and_has_the_right_mix(synth, tmp_path):
    r = run(synth, tmp_path / "r", concepts=[2], **_small(budget=30))
    sel = pq.read_table(tmp_path / "r" / "selections.parquet").to_pydict()
    by_unit: dict = {}
    for s, m, i, lab in zip(sel["strategy"], sel["mode"], sel["id"], sel["label"]):
        by_unit.setdefault((s, m), []).append((i, lab))
    firsts = list(by_unit.values())
    assert all(f == firsts[0] for f in firsts), "every strategy and mode starts from the same seed set"
    assert sum(lab for _, lab in firsts[0]) == 3 and len(firsts[0]) == 30
    assert r.config.n_rounds == 0


def test_same_seed_same_selections(synth, tmp_path):
    run(synth, tmp_path / "a", concepts=[0, 3], **_small())
    run(synth, tmp_path / "b", concepts=[0, 3], **_small())
    run(synth, tmp_path / "c", concepts=[0, 3], **_small(seed=1))
    a = pq.read_table(tmp_path / "a" / "selections.parquet")
    b = pq.read_table(tmp_path / "b" / "selections.parquet")
    c = pq.read_table(tmp_path / "c" / "selections.parquet")
    assert a.equals(b)
    assert not a.equals(c)


def test_recall_and_ap_columns_are_consistent(synth, tmp_path):
    r = run(synth, tmp_path / "r", concepts=[1], **_small(strategies=("maxent",), modes=("seals",)))
    m = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pydict()
    sel = pq.read_table(tmp_path / "r" / "selections.parquet").to_pydict()
    n_pos_train = r.units[0].n_pos_train
    for rnd, n_pos, rec, n_lab in zip(m["round"], m["n_positives"], m["recall"], m["n_labeled"]):
        labs = [lab for rr, lab in zip(sel["round"], sel["label"]) if rr <= rnd]
        assert n_pos == sum(labs) and n_lab == len(labs)
        assert rec == pytest.approx(n_pos / n_pos_train)
    # test_ap equals scikit-learn's on the final model
    from sklearn.metrics import average_precision_score

    ids, is_test = r.store.read_split()
    test_ids = np.sort(ids[is_test])
    x = r.backend.vectors(test_ids)
    logits = x @ r.model.W[0].cpu().numpy() + float(r.model.b[0])
    y = np.isin(test_ids, r.positives[1])
    assert m["test_ap"][-1] == pytest.approx(average_precision_score(y, logits), abs=1e-9)


def test_seals_matches_all_and_beats_random(synth, tmp_path):
    cfg = dict(
        strategies=("maxent", "random"),
        modes=("seals", "all"),
        budget=600,
        k=30,
        batch=50,
        seed_positives=5,
        seed_negatives=95,
    )
    run(synth, tmp_path / "r", concepts=[0, 1, 2, 3], **cfg)
    m = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pydict()
    last = max(m["round"])
    final = {}
    for _c, s, mo, rr, ap, rec in zip(
        m["concept"], m["strategy"], m["mode"], m["round"], m["test_ap"], m["recall"]
    ):
        if rr == last:
            final.setdefault((s, mo), []).append((ap, rec))
    mean = {k: np.mean(v, axis=0) for k, v in final.items()}
    assert abs(mean[("maxent", "seals")][0] - mean[("maxent", "all")][0]) <= 0.05, mean
    assert mean[("maxent", "seals")][1] > mean[("random", "all")][1], mean
    assert mean[("maxent", "all")][1] > mean[("random", "all")][1], mean
    assert m["pool_fraction"][m["strategy"].index("maxent")] < 1.0


def test_with_a_built_sharded_index(synth, tmp_path):
    idx = tmp_path / "idx"
    build_index(synth, idx, IndexSpec(kind="flat", shards=3))
    run(synth, tmp_path / "a", concepts=[0], index=idx, **_small(strategies=("maxent", "id")))
    run(synth, tmp_path / "b", concepts=[0], **_small(strategies=("maxent", "id")))
    a = pq.read_table(tmp_path / "a" / "selections.parquet")
    b = pq.read_table(tmp_path / "b" / "selections.parquet")
    assert a.equals(b), "a 3-shard exact index must select exactly what the in-memory exact index selects"


def test_id_variants_run(synth, tmp_path):
    run(
        synth,
        tmp_path / "r",
        concepts=[0],
        **_small(strategies=("id", "id-pairwise", "id-knn"), modes=("seals",), budget=130),
    )
    m = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pydict()
    assert set(m["strategy"]) == {"id", "id-pairwise", "id-knn"}
    with pytest.raises(ConfigError, match="id-knn in All mode needs"):
        run(synth, tmp_path / "r2", concepts=[0], **_small(strategies=("id-knn",), modes=("all",)))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(budget=50), "--budget 50 is below the seed set's 100 labels"),
        (dict(k=0), "--k 0"),
        (dict(batch=0), "--batch 0"),
        (dict(strategies=("maxent", "bald")), "unknown strategy 'bald'"),
        (dict(modes=("seals", "half")), "unknown mode 'half'"),
        (dict(seed_positives=0), "--seed-positives 0"),
        (dict(C=-1.0), "--C -1.0 must be positive"),
    ],
)
def test_impossible_settings(synth, tmp_path, settings, message):
    base = dict(strategies=("maxent",), modes=("seals",), budget=300, seed_positives=5, seed_negatives=95)
    base.update(settings)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(synth, tmp_path / "r", concepts=[0], **base)
    assert not (tmp_path / "r").exists(), "nothing may be written for bad settings"


def test_concept_with_too_few_positives(synth, tmp_path):
    with pytest.raises(ConfigError, match="fewer than --seed-positives 500"):
        run(synth, tmp_path / "r", concepts=[0], seed_positives=500, budget=1000)
    assert not (tmp_path / "r").exists()


def test_non_empty_run_dir_and_resume_config_change(synth, tmp_path):
    run(synth, tmp_path / "r", concepts=[0], **_small(strategies=("maxent",), budget=130))
    with pytest.raises(RunDirError, match="is not empty; pass --resume"):
        run(synth, tmp_path / "r", concepts=[0], **_small(strategies=("maxent",), budget=130))
    with pytest.raises(RunDirError, match="budget changed"):
        run(synth, tmp_path / "r", concepts=[0], resume=True, **_small(strategies=("maxent",), budget=180))


def test_resume_continues_to_identical_results(synth, tmp_path):
    full = tmp_path / "full"
    run(synth, full, concepts=[0, 1], **_small())

    class Stop(Exception):
        pass

    class Crash(Run):
        def _checkpoint(self):
            super()._checkpoint()
            if self.round == 2:
                raise Stop

    store = Store(synth.path)
    cfg = RunConfig(store=str(store.path), store_fingerprint=store.fingerprint, concepts=(0, 1), **_small())
    with pytest.raises(Stop):
        Crash(cfg, tmp_path / "part", store=store, progress=False, log=lambda *a: None).start()
    Run(cfg, tmp_path / "part", store=store, progress=False, log=lambda *a: None).start(resume=True)
    a = pq.read_table(full / "selections.parquet")
    b = pq.read_table(tmp_path / "part" / "selections.parquet")
    assert a.equals(b)
    ma = pq.read_table(full / "metrics.parquet").drop([c for c in a.column_names if c.startswith("seconds")])
    mb = pq.read_table(tmp_path / "part" / "metrics.parquet")
    drop = [c for c in mb.column_names if c.startswith("seconds")]
    assert ma.drop(drop).equals(mb.drop(drop))


def test_index_from_another_store_is_refused(synth, tmp_path):
    other = make_synthetic_store(
        tmp_path / "other", n=2000, dim=24, concepts=1, prevalence=(0.01, 0.02), seed=1
    )
    build_index(other, tmp_path / "idx", IndexSpec(kind="flat"))
    with pytest.raises(IndexError_, match="was built from a store with fingerprint"):
        run(synth, tmp_path / "r", concepts=[0], index=tmp_path / "idx", **_small())
    assert not (tmp_path / "r").exists()


def test_a_concept_selects_the_same_alone_first_or_last(synth, tmp_path):
    """Per-concept determinism: concept 1's selections (every strategy, Random included, both modes) do not
    depend on which other concepts run beside it or on its position in the list."""
    settings = _small(budget=200)

    def picks(name, concepts):
        run(synth, tmp_path / name, concepts=concepts, **settings)
        t = pq.read_table(tmp_path / name / "selections.parquet").to_pydict()
        keep = [i for i, c in enumerate(t["concept"]) if c == 1]
        return [(t["strategy"][i], t["mode"][i], t["round"][i], t["id"][i]) for i in keep]

    alone = picks("alone", [1])
    assert picks("first", [1, 0, 3]) == alone
    assert picks("last", [0, 3, 1]) == alone


def test_concepts_without_a_test_positive_are_named_and_can_be_excluded(tmp_path):
    """A concept whose positives are all in the train split has no test AP: the run says so in one line, and
    eligible_concepts / sample_concepts can require a test positive (what bench_paper does)."""
    from seals_gpu.config import RunConfig
    from seals_gpu.seeds import eligible_concepts, sample_concepts
    from seals_gpu.store import write_store

    from .conftest import clustered

    ids, x, labels = clustered(3000, 8, seed=3)
    split = np.where(np.arange(ids.size) % 5 == 0, "test", "train")
    # concept 7: 12 items, all in the train split
    train_rows = np.flatnonzero(split == "train")[:12]
    labels = [list(lab) + ([7] if r in set(train_rows.tolist()) else []) for r, lab in enumerate(labels)]
    store = write_store(tmp_path / "s", ids, x, labels=labels, split=split)
    all_ids, is_test = store.read_split()
    train_ids = np.sort(all_ids[~is_test])
    lo_hi = (0.0, 1.0)
    assert 7 in eligible_concepts(store, lo_hi, 10, train_ids)
    assert 7 not in eligible_concepts(store, lo_hi, 10, train_ids, min_test_positives=1)
    n = len(eligible_concepts(store, lo_hi, 10, train_ids, min_test_positives=1))
    picked = sample_concepts(store, n, lo_hi, 0, 10, train_ids, min_test_positives=1)
    assert 7 not in picked
    logs: list[str] = []
    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(7,),
        strategies=("maxent",),
        modes=("seals",),
        budget=30,
        seed_positives=2,
        seed_negatives=8,
        batch=10,
        k=5,
    )
    Run(cfg, tmp_path / "r", store=store, progress=False, log=lambda *m: logs.append(" ".join(map(str, m))))
    assert any("concept 7 has no positive in the test split" in m for m in logs), logs


def test_an_all_mode_run_spends_no_time_growing_pools(synth, tmp_path):
    """All mode keeps no candidate pool: its run's `search` time (pool growth) is exactly 0, a SEALS run's is
    not (kills `Run._expand` mutant 7: 1 s reported per round for a run with no SEALS unit)."""
    t_all = run(synth, tmp_path / "a", concepts=[0], **_small(strategies=("maxent",), modes=("all",))).timings
    t_seals = run(
        synth, tmp_path / "s", concepts=[0], **_small(strategies=("maxent",), modes=("seals",))
    ).timings
    assert t_all["search"] == 0.0
    assert 0.0 < t_seals["search"] < 60.0
    m = pq.read_table(tmp_path / "a" / "metrics.parquet").to_pydict()
    assert set(m["seconds_search"]) == {0.0}
    m = pq.read_table(tmp_path / "s" / "metrics.parquet").to_pydict()
    assert all(v > 0 for v, r in zip(m["seconds_search"], m["round"], strict=True) if r > 0)


def test_the_rounds_bar_counts_every_round_once(synth, tmp_path, capsys):
    """The progress bar of a run ends at rounds / rounds (seed round included) and never passes it (kills
    `Run._loop` mutant 15: a bar that starts one ahead and ends past its total)."""
    import re

    kw = _small(strategies=("maxent",), modes=("seals",), budget=130)
    run(synth, tmp_path / "r", concepts=[0], progress=True, **kw)
    err = capsys.readouterr().err
    frames = [f for f in re.split(r"[\r\n]", err) if f.startswith("rounds:")]
    assert frames, err
    n = 1 + (130 - 30) // 50
    # the bar's last frame shows every round done out of all of them (past its total, tqdm drops the "/N")
    assert re.search(rf"\b{n}/{n}\b", frames[-1]), frames[-1]
    counts = [tuple(map(int, m)) for f in frames for m in re.findall(r"(\d+)/(\d+)", f)]
    assert counts and all(a <= b == n for a, b in counts)
    # each round's mean test AP is shown once it is recorded, the seed round's included, the last one's last
    m = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pydict()
    shown = [re.search(r"mean_ap=(\d\.\d{3}|nan)", f) for f in frames]
    shown = [s.group(1) for s in shown if s]
    aps = [
        f"{np.mean([a for a, r in zip(m['test_ap'], m['round'], strict=True) if r == k]):.3f}"
        for k in range(n)
    ]
    assert shown and shown[0] == aps[0] and shown[-1] == aps[-1] and set(aps) <= set(shown), (aps, shown)
