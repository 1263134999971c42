"""The CLI end to end: store -> index -> info, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from seals_gpu.cli import main


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _small_store(store, capsys) -> None:
    """3,000 x 8 synthetic rows, 2 concepts at 1-2% (enough positives for 5-positive seed sets)."""
    synth = ["store", "synth", store, "--n", 3000, "--dim", 8, "--concepts", 2, "--prevalence", "0.01:0.02"]
    assert _run(synth, capsys)[0] == 0


def test_store_index_end_to_end(tmp_path, capsys):
    store, idx = tmp_path / "store", tmp_path / "idx"
    code, out, _ = _run(
        [
            "store",
            "synth",
            store,
            "--n",
            3000,
            "--dim",
            16,
            "--concepts",
            4,
            "--prevalence",
            "0.005:0.02",
            "--seed",
            3,
        ],
        capsys,
    )
    assert code == 0 and "3000 rows" in out
    code, out, _ = _run(["store", "info", store], capsys)
    assert code == 0 and "rows         3,000" in out and "dimension    16" in out and "concepts     4" in out
    code, out, _ = _run(["store", "info", store, "--json"], capsys)
    info = json.loads(out)
    assert info["rows"] == 3000 and info["split"]["source"] == "column"
    code, out, _ = _run(["store", "validate", store], capsys)
    assert code == 0 and "ok" in out
    code, out, _ = _run(
        ["index", "build", store, idx, "--kind", "ivfpq", "--nlist", 16, "--pq-m", 4, "--shards", 2]
        + ["--train-size", 1000],
        capsys,
    )
    assert code == 0 and "ivfpq" in out and "2 shard(s)" in out
    code, out, _ = _run(["index", "info", idx], capsys)
    d = json.loads(out)
    assert d["kind"] == "ivfpq" and d["shards"] == 2 and d["ntotal"] == 3000
    assert d["params"]["train_size"] == 1000, d


@pytest.mark.parametrize(
    "args, message",
    [
        (["store", "info", "{tmp}/missing"], "does not exist"),
        (["store", "synth", "{tmp}/s", "--n", "100", "--prevalence", "0.5:0.1"], "prevalence"),
        (["index", "build", "{tmp}/missing", "{tmp}/i"], "does not exist"),
        (["index", "info", "{tmp}"], "manifest.json is missing"),
        (["report", "{tmp}/none"], "{tmp}/none"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, message):
    code, out, err = _run([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    assert message.format(tmp=tmp_path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_errors_exit_2_in_a_subprocess(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "seals_gpu", "store", "synth", str(tmp_path / "s"), "--n", "-5"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert "must be at least 1" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([sys.executable, "-m", "seals_gpu", "frobnicate"], capture_output=True, text=True)
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_help_documents_every_subcommand():
    p = subprocess.run([sys.executable, "-m", "seals_gpu", "--help"], capture_output=True, text=True)
    for cmd in ("store", "index", "run", "report", "demo"):
        assert cmd in p.stdout
    for group, subs in (
        ("store", ("synth", "wordnet", "info", "validate")),
        ("index", ("build", "info", "graph")),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "seals_gpu", group, "--help"], capture_output=True, text=True
        )
        assert p.returncode == 0
        for s in subs:
            assert s in p.stdout


def test_run_plans_its_search_and_writes_timings(tmp_path, capsys):
    """`--search ivf` end to end: the plan and the built index are logged, timings.json names every phase,
    and IVF at --search-recall 1 selects exactly what exact search selects."""
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    assert (
        _run(["store", "synth", store, "--n", 4000, "--dim", 16, "--concepts", 3, "--seed", 1], capsys)[0]
        == 0
    )
    common = ["--concepts", "0,1", "--strategies", "maxent", "--modes", "seals", "--budget", 300, "--k", 10]
    common += ["--quiet"]
    code, _, err = _run(
        ["run", store, "--out", tmp_path / "ivf", "--search", "ivf", "--search-recall", 1.0] + common, capsys
    )
    assert code == 0, err
    assert "plan: search ivf (--search ivf)" in err and "search index: IVF over" in err
    t = json.loads((tmp_path / "ivf" / "timings.json").read_text())
    for phase in (
        "startup",
        "load",
        "index",
        "seed",
        "fit",
        "search",
        "select",
        "record",
        "checkpoint",
        "other",
    ):
        assert phase in t["phases"], phase
    assert t["plan"]["search"] == "ivf" and t["total"] > 0 and t["rounds"] == 2
    code, _, err = _run(["run", store, "--out", tmp_path / "flat", "--search", "flat"] + common, capsys)
    assert code == 0 and "plan: search flat" in err
    a = pq.read_table(tmp_path / "ivf" / "selections.parquet").to_pydict()
    b = pq.read_table(tmp_path / "flat" / "selections.parquet").to_pydict()
    assert a == b
    # a bad recall target is refused before anything is written
    code, _, err = _run(["run", store, "--out", tmp_path / "bad", "--search-recall", 1.5] + common, capsys)
    assert code == 2 and "--search-recall 1.5" in err and not (tmp_path / "bad").exists()


def test_a_second_run_reuses_the_cached_search_index(tmp_path, capsys, monkeypatch):
    """The IVF built by one run is reused by the next run on the same store, and so are every train row's
    neighbours when the plan computes them up front; selections do not change. A damaged cache entry is
    rebuilt, and --no-cache neither reads nor writes."""
    import pyarrow.parquet as pq

    cache = tmp_path / "cache"
    monkeypatch.setenv("SEALS_GPU_CACHE", str(cache))
    store = tmp_path / "store"
    _small_store(store, capsys)

    def run(name, budget, *extra):
        args = ["run", store, "--out", tmp_path / name, "--concepts", "0,1", "--strategies", "maxent"]
        args += ["--modes", "seals", "--budget", budget, "--k", 10, "--search", "ivf", "--quiet", *extra]
        code, _, err = _run(args, capsys)
        assert code == 0, err
        return err, pq.read_table(tmp_path / name / "selections.parquet").to_pydict()

    err, sel = run("a", 400)  # few queries: per-round search; the IVF is cached
    assert "reused" not in err and [p.name[:4] for p in cache.iterdir()] == ["ivf-"]
    err, again = run("b", 400)
    assert "reused the IVF" in err and again == sel
    err, big = run("c", 1300)  # more queries than train rows: every row's neighbours up front, cached
    assert "every train row" in err and "reused the IVF" in err
    assert sorted(p.name[:4] for p in cache.iterdir()) == ["ivf-", "neig"]
    err, big2 = run("d", 1300)
    assert "reused every train row" in err and "search index: IVF over" not in err and big2 == big
    for f in cache.iterdir():  # damage every entry: they are rebuilt, not trusted
        f.write_bytes(b"not an npz")
    err, big3 = run("e", 1300)
    assert "reused" not in err and big3 == big
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    err, big4 = run("f", 1300, "--no-cache")
    assert "reused" not in err and big4 == big
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before


def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = _run(["demo", "--out", out], capsys)
    assert code == 2 and "is not an earlier demo's output" in err
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == [
        "notes.txt"
    ]


def test_missing_faiss_says_which_extra_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a)
    )
    code, _, err = _run(["run", tmp_path / "store", "--out", tmp_path / "r", "--concepts", "1"], capsys)
    assert code == 2 and "pip install 'seals_gpu[cpu]'" in err and not (tmp_path / "r").exists()


def test_class_weight_flag_end_to_end(tmp_path, capsys):
    """--class-weight balanced changes the model (and so the selections), is kept in the config, and a resume
    with another class weight is refused before anything changes."""
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    _small_store(store, capsys)
    common = [
        "--concepts",
        "0",
        "--strategies",
        "maxent",
        "--modes",
        "seals",
        "--budget",
        300,
        "--k",
        10,
        "--quiet",
    ]
    assert _run(["run", store, "--out", tmp_path / "none"] + common, capsys)[0] == 0
    code, _, err = _run(
        ["run", store, "--out", tmp_path / "bal", "--class-weight", "balanced"] + common, capsys
    )
    assert code == 0, err
    assert json.loads((tmp_path / "bal" / "config.json").read_text())["class_weight"] == "balanced"
    a = pq.read_table(tmp_path / "none" / "selections.parquet").to_pydict()
    b = pq.read_table(tmp_path / "bal" / "selections.parquet").to_pydict()
    assert a["id"][:100] == b["id"][:100] and a["id"] != b["id"]  # same seed set, different picks after
    before = (tmp_path / "bal" / "metrics.parquet").stat().st_mtime_ns
    code, _, err = _run(["run", store, "--out", tmp_path / "bal", "--resume"] + common, capsys)
    assert code == 2 and "class_weight" in err
    assert (tmp_path / "bal" / "metrics.parquet").stat().st_mtime_ns == before


def test_full_supervision_reference_rows(tmp_path, capsys):
    """--full-supervision appends one 'full' row per concept (AP of a model fit on every train label, equal
    to scikit-learn's fit and AP), the report shows it, and resuming the finished run adds nothing."""
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    from seals_gpu.store import Store

    store = tmp_path / "store"
    _small_store(store, capsys)
    args = [
        "run",
        store,
        "--out",
        tmp_path / "r",
        "--concepts",
        "0",
        "--strategies",
        "maxent",
        "--modes",
        "seals",
    ]
    args += ["--budget", 200, "--k", 10, "--quiet", "--full-supervision"]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    t = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pydict()
    full = [i for i, s in enumerate(t["strategy"]) if s == "full"]
    assert len(full) == 1 and t["mode"][full[0]] == "supervised"
    s = Store(store)
    ids, is_test = s.read_split()
    o = np.argsort(ids)
    ids, is_test = ids[o], is_test[o]
    x = s.take(ids).astype(np.float64)
    y = np.isin(ids, s.concept_positives([0])[0])
    clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x[~is_test], y[~is_test])
    ref = average_precision_score(y[is_test], clf.decision_function(x[is_test]))
    assert abs(t["test_ap"][full[0]] - ref) < 1e-3
    code, _, _ = _run(args + ["--resume"], capsys)
    assert code == 0
    t2 = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pydict()
    assert t2["strategy"].count("full") == 1


def test_expand_each_flag_end_to_end(tmp_path, capsys):
    import pyarrow.parquet as pq

    store = tmp_path / "store"
    _small_store(store, capsys)
    common = ["--concepts", "0", "--strategies", "maxent,random", "--modes", "seals", "--budget", 300]
    common += ["--k", 10, "--quiet"]
    assert _run(["run", store, "--out", tmp_path / "b"] + common, capsys)[0] == 0
    code, _, err = _run(["run", store, "--out", tmp_path / "e", "--expand", "each"] + common, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "config.json").read_text())["expand"] == "each"
    a = pq.read_table(tmp_path / "b" / "selections.parquet").to_pydict()
    e = pq.read_table(tmp_path / "e" / "selections.parquet").to_pydict()
    assert len(a["id"]) == len(e["id"]) == 2 * 300 and a["id"] != e["id"]
    bad = [
        "run",
        store,
        "--out",
        tmp_path / "x",
        "--expand",
        "each",
        "--concepts",
        "0",
        "--strategies",
        "id-knn",
    ]
    code, _, err = _run(bad + ["--modes", "seals", "--budget", 300, "--k", 10, "--quiet"], capsys)
    assert code == 2 and "--expand each" in err and not (tmp_path / "x").exists()
