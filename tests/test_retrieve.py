"""``seals-gpu retrieve``: the streamed top-N per unit equals a float64 full sort, whatever the blocking,
the ids (any int64) and the ties; a real run's models retrieve end to end; bad input is one line, exit 2,
and nothing is written."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from seals_gpu import driver
from seals_gpu.checkpoint import CHECKPOINT
from seals_gpu.cli import main
from seals_gpu.retrieve import RETRIEVED_FILE, load_final_models, top_n_stream
from seals_gpu.store import write_store

from .conftest import clustered


def _reference(ids, X, W, b, n, exclude=None):
    """Per unit: ids and scores of the n best rows by (float64 logit desc, id asc), by a full sort."""
    Z = X.astype(np.float64) @ W.astype(np.float64).T + b.astype(np.float64)
    out = []
    for u in range(W.shape[0]):
        keep = np.ones(ids.size, bool) if exclude is None else ~np.isin(ids, exclude[u])
        order = np.lexsort((ids[keep], -Z[keep, u]))[:n]
        out.append((ids[keep][order], Z[keep, u][order]))
    return out


def _blocks(ids, X, sizes):
    """The rows in blocks of the given sizes, each block's rows shuffled (blocks need not be id-sorted)."""
    rng = np.random.default_rng(7)
    s = 0
    for k in sizes:
        p = s + rng.permutation(min(k, ids.size - s))
        yield ids[p], X[p]
        s += p.size
        if s >= ids.size:
            return


def _random_ids(rng, n):
    """Unique int64 ids over the whole range: negative, huge, and the extremes."""
    ids = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64))
    ids[:2] = [np.iinfo(np.int64).min, np.iinfo(np.int64).max]
    ids[2:5] = [-1, 0, 1]
    ids = np.unique(ids)
    return rng.permutation(ids)


@pytest.mark.parametrize("seed", range(6))
def test_exact_ties_match_a_full_sort(seed):
    """Dyadic vectors and weights: float32 logits are exact, so many rows tie exactly and the lower id must
    win, across block boundaries and within the max_elems steps of a block."""
    rng = np.random.default_rng(seed)
    n, d, U = 900, 8, 5
    ids = _random_ids(rng, n)
    X = (rng.integers(-4, 5, size=(ids.size, d)) / 4).astype(np.float32)  # multiples of 1/4 in [-1, 1]
    W = (rng.integers(-8, 9, size=(U, d)) / 8).astype(np.float32)
    b = (rng.integers(-8, 9, size=U) / 8).astype(np.float32)
    W[1] = 0  # every row ties for unit 1: the n lowest ids
    exclude = [np.sort(rng.choice(ids, size=int(rng.integers(0, 60)), replace=False)) for _ in range(U)]
    # small top-n within big blocks (a block's tie group straddles its n-th place) and the reverse
    top = int(rng.integers(1, 25)) if seed % 2 else int(rng.integers(25, 150))
    sizes = rng.integers(1, 400, size=200).tolist()
    max_elems = 97 if seed % 3 == 0 else 1 << 20  # 19 rows per step, or whole blocks
    res = top_n_stream(
        _blocks(ids, X, sizes),
        torch.from_numpy(W),
        torch.from_numpy(b),
        top,
        exclude=exclude,
        max_elems=max_elems,
    )
    ref = _reference(ids, X, W, b, top, exclude)
    for u in range(U):
        got_ids, got_sc = res.unit(u)
        np.testing.assert_array_equal(got_ids, ref[u][0])
        np.testing.assert_array_equal(got_sc.astype(np.float64), ref[u][1])
        assert not np.isin(got_ids, exclude[u]).any()
    np.testing.assert_array_equal(res.unit(1)[0], np.sort(ids[~np.isin(ids, exclude[1])])[:top])


@pytest.mark.parametrize("seed", range(4))
def test_continuous_scores_match_float64(seed):
    rng = np.random.default_rng(100 + seed)
    ids = _random_ids(rng, 2000)
    X = rng.normal(size=(ids.size, 24)).astype(np.float32)
    W = rng.normal(size=(3, 24)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    top = 50
    res = top_n_stream(_blocks(ids, X, [333] * 10), torch.from_numpy(W), torch.from_numpy(b), top)
    for u, (ref_ids, ref_sc) in enumerate(_reference(ids, X, W, b, top)):
        got_ids, got_sc = res.unit(u)
        np.testing.assert_allclose(got_sc, ref_sc, rtol=0, atol=1e-4)
        gaps = np.diff(ref_sc)
        assert (np.abs(gaps) > 1e-4).all(), "near-tie in the reference: pick another seed"
        np.testing.assert_array_equal(got_ids, ref_ids)


def test_fewer_candidates_than_top_and_everything_excluded():
    ids = np.array([5, -3, 9], dtype=np.int64)
    X = np.eye(3, dtype=np.float32)
    W = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    res = top_n_stream([(ids, X)], W, torch.zeros(2), 3, exclude=[np.array([], np.int64), np.sort(ids)])
    np.testing.assert_array_equal(res.unit(0)[0], [9, -3, 5])
    assert int(res.counts[1]) == 0


# ----------------------------------------------------------------------------------------- end to end
def _store_with_wild_ids(tmp_path):
    """3,000 x 16 clustered rows whose ids are negative, huge and scattered (int64 everywhere)."""
    rng = np.random.default_rng(3)
    _, x, labels = clustered(3000, 16, seed=1)
    ids = _random_ids(rng, 3000)[:3000]
    return write_store(tmp_path / "store", ids, x, labels=labels, rows_per_file=1100)


def _finished_run(tmp_path, store, **kw):
    settings = dict(strategies=("maxent", "random"), modes=("seals", "all"), batch=20, budget=140, k=10)
    settings.update(kw)
    return driver.run(store, tmp_path / "run", concepts=[0, 2], device="cpu", **settings)


def _cli(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_retrieve_end_to_end_equals_brute_force(tmp_path, capsys):
    store = _store_with_wild_ids(tmp_path)
    r = _finished_run(tmp_path, store)
    code, out, err = _cli(["retrieve", r.out, "--top", 40, "--block-rows", 257, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "score = logit" in out
    t = pq.read_table(r.out / RETRIEVED_FILE).to_pylist()
    assert list(t[0]) == ["concept", "strategy", "mode", "rank", "id", "score", "probability", "labeled"]
    _, s, units = load_final_models(r.out)
    assert len(units) == 8
    all_ids = np.concatenate([bt.ids for bt in s.iter_batches()])
    X = np.concatenate([bt.embeddings for bt in s.iter_batches()])
    W = np.stack([u.w for u in units])
    b = np.array([u.b for u in units])
    ref = _reference(all_ids, X, W.astype(np.float32), b.astype(np.float32), 40, [u.labeled for u in units])
    for u, (ref_ids, ref_sc) in zip(units, ref):
        rows = [
            row
            for row in t
            if (row["concept"], row["strategy"], row["mode"]) == (u.concept, u.strategy, u.mode)
        ]
        assert [row["rank"] for row in rows] == list(range(1, 41))
        got = np.array([row["id"] for row in rows])
        sc = np.array([row["score"] for row in rows])
        np.testing.assert_allclose(sc, ref_sc, atol=1e-4)
        close = np.abs(np.diff(ref_sc)) < 1e-4  # float32 vs float64 may swap only near-ties
        for i in np.flatnonzero(got != ref_ids):
            assert close[max(i - 1, 0) : i + 1].any(), (u, i)
        assert not any(row["labeled"] for row in rows)
        assert not np.isin(got, u.labeled).any()
        p = np.array([row["probability"] for row in rows])
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-sc.astype(np.float64))))

    # keeping labeled ids: they compete and are flagged; --split test keeps only the run's test rows
    code, _, err = _cli(
        [
            "retrieve",
            r.out,
            "--top",
            40,
            "--no-exclude-labeled",
            "--split",
            "test",
            "--strategy",
            "maxent",
            "--mode",
            "all",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2 and "already exists" in err and "--force" in err  # never replaced silently
    code, _, err = _cli(
        [
            "retrieve",
            r.out,
            "--top",
            40,
            "--no-exclude-labeled",
            "--split",
            "train",
            "--strategy",
            "maxent",
            "--mode",
            "all",
            "--device",
            "cpu",
            "--force",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    t2 = pq.read_table(r.out / RETRIEVED_FILE).to_pylist()
    assert {(row["strategy"], row["mode"]) for row in t2} == {("maxent", "all")}
    ids, is_test = r.store.read_split()
    train = set(ids[~is_test].tolist())
    assert all(row["id"] in train for row in t2)
    flagged = [row for row in t2 if row["labeled"]]
    assert flagged, "a maxent-all model ranks some of its labeled positives in its top 40"
    for row in t2:
        u = next(u for u in units if (u.concept, u.strategy, u.mode) == (row["concept"], "maxent", "all"))
        assert row["labeled"] == bool(np.isin(row["id"], u.labeled))


def test_retrieve_refusals_write_nothing(tmp_path, capsys, monkeypatch):
    store = _store_with_wild_ids(tmp_path)
    # a folder without a run, and one that does not exist
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(["retrieve", tmp_path / "empty", "--top", 5], capsys)
    assert code == 2 and "config.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(["retrieve", tmp_path / "nope", "--top", 5], capsys)
    assert code == 2 and "does not exist" in err
    # a run stopped after round 1 of 2 (its checkpoint is not the last round's)
    real_select = driver.Run._select

    def stop_after_round_1(self, b):
        if self.round >= 1:
            raise KeyboardInterrupt
        return real_select(self, b)

    monkeypatch.setattr(driver.Run, "_select", stop_after_round_1)
    with pytest.raises(KeyboardInterrupt):
        _finished_run(tmp_path, store, budget=140)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert (run / CHECKPOINT).is_file()
    code, _, err = _cli(["retrieve", run, "--top", 5], capsys)
    assert code == 2 and "has not finished" in err and "round 1 of 2" in err
    assert not (run / RETRIEVED_FILE).exists()
    # finish it; then the argument errors
    _finished_run(tmp_path, store, resume=True)
    for args, msg in [
        (["--top", 0], "must be at least 1"),
        (["--top", -3], "must be at least 1"),
        (["--top", 5, "--strategy", "id"], "not one of the run's"),
        (["--top", 5, "--mode", "both"], "not one of the run's"),
        (["--top", 5, "--split", "val"], "invalid choice"),
        (["--top", 5, "--device", "tpu"], "unknown device"),
        (["--top", 5, "--store", tmp_path / "nope"], "does not exist"),
    ]:
        code, _, err = _cli(["retrieve", run, *args], capsys)
        assert code == 2 and msg in err, (args, err)
        assert len(err.strip().splitlines()) == 1
        assert not (run / RETRIEVED_FILE).exists()
    # another store (same rows, other fingerprint) is refused by fingerprint
    other = write_store(tmp_path / "other", np.arange(5), np.eye(5, 16))
    code, _, err = _cli(["retrieve", run, "--top", 5, "--store", other.path], capsys)
    assert code == 2 and "fingerprint" in err
    # an existing output is kept without --force; a folder in its place is never replaced
    (run / RETRIEVED_FILE).write_text("mine")
    code, _, err = _cli(["retrieve", run, "--top", 5, "--device", "cpu"], capsys)
    assert code == 2 and "--force" in err and (run / RETRIEVED_FILE).read_text() == "mine"
    (run / RETRIEVED_FILE).unlink()
    (run / RETRIEVED_FILE).mkdir()
    code, _, err = _cli(["retrieve", run, "--top", 5, "--force", "--device", "cpu"], capsys)
    assert code == 2 and "not a plain file" in err
