"""Bad input across `store`, `index`, `run` and `report`: exit code 2, ONE line on stderr that names the problem
and the fix, no traceback, and no partial output (a new output path does not exist afterwards; an existing
run folder is unchanged byte for byte).

Every case goes through the real CLI (`seals_gpu.cli.main`); a few also in a real subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu.checkpoint import CHECKPOINT
from seals_gpu.cli import main
from seals_gpu.driver import run
from seals_gpu.graph import build_graph
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.store import write_store
from seals_gpu.synth import make_synthetic_store

from .conftest import embedding_column as _emb

DIM = 8


# ---------------------------------------------------------------------------------------------- raw stores
def _table(n: int, *, d: int = DIM, first_id: int = 0, seed: int = 0, **cols) -> pa.Table:
    """A valid store file's columns (id, embedding, labels), with any of them replaced or dropped (None)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    base = {
        "id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d),
        "labels": pa.array([[i % 3] for i in range(n)], type=pa.list_(pa.int64())),
    }
    base.update(cols)
    return pa.table({k: v for k, v in base.items() if v is not None})


def _store_of(folder: Path, *tables: pa.Table) -> Path:
    folder.mkdir(parents=True)
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"part-{i:05d}.parquet")
    return folder


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    """Every bad (and good) input, built once."""
    b = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {}
    good = make_synthetic_store(b / "good", n=2000, dim=DIM, concepts=3, prevalence=(0.02, 0.05), seed=1)
    other = make_synthetic_store(b / "other", n=1500, dim=DIM, concepts=3, prevalence=(0.02, 0.05), seed=2)
    f["good"], f["other"] = good.path, other.path
    f["good_idx"] = build_index(good, b / "good_idx", IndexSpec(kind="flat")).path
    f["other_idx"] = build_index(other, b / "other_idx", IndexSpec(kind="flat")).path
    f["other_graph"] = build_graph(f["other_idx"], k=5)
    f["good_graph5"] = build_graph(f["good_idx"], k=5)
    f["trunc_idx"] = Path(shutil.copytree(f["good_idx"], b / "trunc_idx"))
    vec = f["trunc_idx"] / "shard-00000" / "vectors.npy"
    vec.write_bytes(vec.read_bytes()[: vec.stat().st_size // 2])
    f["badjson_idx"] = Path(shutil.copytree(f["good_idx"], b / "badjson_idx"))
    (f["badjson_idx"] / "manifest.json").write_text("{not json")

    n = 60
    x_nan = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    x_nan[3, 2] = np.nan
    x_zero = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    x_zero[5] = 0.0
    ragged = pa.array([[0.1] * (DIM if i != 7 else DIM - 1) for i in range(n)], type=pa.list_(pa.float32()))
    null_emb = pa.array([None if i == 4 else [0.5] * DIM for i in range(n)], type=pa.list_(pa.float32(), DIM))
    f["wrongdim"] = _store_of(b / "wrongdim", _table(n), _table(n, d=DIM + 1, first_id=n))
    f["nan"] = _store_of(b / "nan", _table(n, embedding=_emb(x_nan)))
    f["dup"] = _store_of(b / "dup", _table(n), _table(n, first_id=n - 5))
    f["noemb"] = _store_of(b / "noemb", _table(n, embedding=None))
    f["noid"] = _store_of(b / "noid", _table(n, id=None))
    f["strid"] = _store_of(b / "strid", _table(n, id=pa.array([f"k{i}" for i in range(n)])))
    f["labels_double"] = _store_of(b / "labels_double", _table(n, labels=pa.array(np.ones(n))))
    f["labels_listdouble"] = _store_of(
        b / "labels_listdouble", _table(n, labels=pa.array([[0.5]] * n, type=pa.list_(pa.float64())))
    )
    f["badsplit"] = _store_of(b / "badsplit", _table(n, split=pa.array(["train"] * (n - 1) + ["val"])))
    f["zero"] = _store_of(b / "zero", _table(n, embedding=_emb(x_zero)))
    f["ragged"] = _store_of(b / "ragged", _table(n, embedding=ragged))
    f["nullemb"] = _store_of(b / "nullemb", _table(n, embedding=null_emb))
    f["corrupt"] = b / "corrupt"
    f["corrupt"].mkdir()
    (f["corrupt"] / "part-00000.parquet").write_bytes(np.random.default_rng(0).bytes(4096))
    f["truncated"] = Path(shutil.copytree(good.path, b / "truncated"))
    part = sorted(f["truncated"].glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    ids, x = np.arange(500, dtype=np.int64) * 3 + 1, np.random.default_rng(3).normal(size=(500, DIM))
    f["nolabels"] = write_store(b / "nolabels", ids, x).path
    # concept 7's positives are all in the test split: none to draw a seed set from
    split = np.where(np.arange(500) < 400, "train", "test")
    labels = [[7] if i >= 480 else ([1] if i % 10 == 0 else []) for i in range(500)]
    f["alltest"] = write_store(b / "alltest", ids, x, labels=labels, split=split).path

    f["afile"] = b / "afile.txt"
    f["afile"].write_text("not a store\n")
    f["empty"] = b / "empty"
    f["empty"].mkdir()
    f["nonempty"] = b / "nonempty"
    f["nonempty"].mkdir()
    (f["nonempty"] / "notes.txt").write_text("someone else's\n")

    run(
        good,
        b / "finished",
        concepts=[0],
        strategies=("maxent",),
        modes=("seals",),
        budget=150,
        batch=50,
        k=10,
        device="cpu",
    )
    f["finished"] = b / "finished"
    f["badckpt"] = Path(shutil.copytree(f["finished"], b / "badckpt"))
    ck = f["badckpt"] / CHECKPOINT
    ck.write_bytes(ck.read_bytes()[:100])
    f["plotsfile"] = Path(shutil.copytree(f["finished"], b / "plotsfile"))
    (f["plotsfile"] / "plots").write_text("a file where the plots folder goes\n")
    for name, content in {
        "corrupt_metrics": b"PAR1 this is not parquet",
        "lacking_metrics": None,
        "empty_metrics": None,
    }.items():
        d = b / name
        d.mkdir()
        if content is not None:
            (d / "metrics.parquet").write_bytes(content)
    pq.write_table(
        pa.table({"concept": [0], "strategy": ["maxent"]}), b / "lacking_metrics" / "metrics.parquet"
    )
    full = pq.read_table(f["finished"] / "metrics.parquet")
    pq.write_table(full.slice(0, 0), b / "empty_metrics" / "metrics.parquet")
    for name in ("corrupt_metrics", "lacking_metrics", "empty_metrics"):
        f[name] = b / name
    return f


# ---------------------------------------------------------------------------------------------- the table
RUN_OK = {
    "--concepts": "0",
    "--strategies": "maxent",
    "--modes": "seals",
    "--budget": "150",
    "--batch": "50",
    "--k": "10",
    "--device": "cpu",
}


def R(store: str = "{good}", out: str = "{new}", *flags: str, **changes: str | None) -> list[str]:
    """`run STORE --out OUT` with the settings of the `finished` run, ``changes`` (``k="0"``; None drops
    the flag; leading underscores and dashes as in ``concepts_sample``) and extra ``flags``."""
    opts = dict(RUN_OK)
    for k, v in changes.items():
        key = "--" + k.replace("_", "-")
        if v is None:
            opts.pop(key, None)
        else:
            opts[key] = v
    args = ["run", store, "--out", out, "--quiet"]
    for k, v in opts.items():
        args += [k, v]
    return args + list(flags)


@dataclass(frozen=True)
class Case:
    args: list[str]
    problem: str  # a substring of stderr naming the problem
    fix: str  # a substring of stderr naming the fix
    unchanged: str | None = None  # a fixture folder that must be byte-identical afterwards
    root_ok: bool = True  # False: permissions do not bind root, skip as root


CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ store
    "store-missing": Case(["store", "info", "{new}"], "does not exist", "seals-gpu store synth"),
    "store-is-a-file": Case(["store", "info", "{afile}"], "is a file", "folder of Parquet files"),
    "store-empty-folder": Case(["store", "info", "{empty}"], "holds no .parquet files", "it is empty"),
    "store-wrong-dimension-across-files": Case(
        ["store", "info", "{wrongdim}"], "dimension 9", "same dimension"
    ),
    "store-nan": Case(["store", "validate", "{nan}"], "contains NaN or inf", "fix or drop that row"),
    "store-duplicate-ids": Case(["store", "validate", "{dup}"], "appears more than once", "must be unique"),
    "store-missing-embedding-column": Case(
        ["store", "info", "{noemb}"],
        "missing column 'embedding'",
        "a store needs 'id' (int64) and 'embedding'",
    ),
    "store-missing-id-column": Case(["store", "info", "{noid}"], "missing column 'id'", "a store needs 'id'"),
    "store-corrupt-parquet": Case(
        ["store", "info", "{corrupt}"], "not a readable Parquet file", "rewrite or remove it"
    ),
    "store-truncated-parquet": Case(
        ["store", "validate", "{truncated}"], "not a readable Parquet file", "rewrite or remove it"
    ),
    "store-string-ids": Case(["store", "info", "{strid}"], "column 'id' has type string", "int64"),
    "store-labels-not-a-list": Case(
        ["store", "info", "{labels_double}"],
        "column 'labels' has type double",
        "expected list<int64> or list<string>",
    ),
    "store-labels-of-floats": Case(
        ["store", "info", "{labels_listdouble}"],
        "'labels' holds double",
        "expected int64 or string concept ids",
    ),
    "store-bad-split-value": Case(
        ["store", "validate", "{badsplit}"], "has split 'val'", "expected 'train' or 'test'"
    ),
    "store-zero-vector": Case(
        ["store", "validate", "{zero}"], "all-zero vector", "drop it or give it a real"
    ),
    "store-ragged-embeddings": Case(
        ["store", "validate", "{ragged}"],
        "part-00000.parquet: row 7 has an embedding of length 7",
        "all embeddings need one dimension",
    ),
    "store-null-embedding": Case(
        ["store", "validate", "{nullemb}"],
        "part-00000.parquet: column 'embedding' has a null at row 4",
        "every row needs an embedding",
    ),
    "store-synth-unwritable": Case(
        ["store", "synth", "/dev/null/x", "--n", "100"], "cannot write", "folder you can write to"
    ),
    "store-synth-over-existing": Case(
        ["store", "synth", "{nonempty}", "--n", "100"], "already exists", "--force", unchanged="nonempty"
    ),
    "store-synth-bad-prevalence": Case(
        ["store", "synth", "{new}", "--n", "100", "--prevalence", "0.5:0.1"],
        "prevalence '0.5:0.1'",
        "need 0 < MIN <= MAX < 1",
    ),
    "store-synth-zero-rows": Case(["store", "synth", "{new}", "--n", "0"], "0 must be at least 1", "--help"),
    # ------------------------------------------------------------------ index
    "index-store-missing": Case(
        ["index", "build", "{new}/nostore", "{new}"], "does not exist", "store synth"
    ),
    "index-pq-m-not-dividing-dim": Case(
        ["index", "build", "{good}", "{new}", "--kind", "ivfpq", "--nlist", "16", "--pq-m", "3"],
        "--pq-m 3 must divide the dimension 8",
        "try one of",
    ),
    "index-too-many-shards": Case(
        ["index", "build", "{good}", "{new}", "--shards", "5000"],
        "--shards 5000 is more than the store's 2000 rows",
        "use fewer shards",
    ),
    "index-nlist-too-large": Case(
        ["index", "build", "{good}", "{new}", "--kind", "ivfpq", "--nlist", "4096", "--pq-m", "4"],
        "--nlist 4096 needs at least 4096 training vectors",
        "lower --nlist",
    ),
    "index-over-existing": Case(
        ["index", "build", "{good}", "{nonempty}"], "already exists", "--force", unchanged="nonempty"
    ),
    "index-duplicate-ids": Case(
        ["index", "build", "{dup}", "{new}"], "appears more than once", "must be unique"
    ),
    "index-nan": Case(["index", "build", "{nan}", "{new}"], "contains NaN or inf", "fix or drop"),
    "index-unwritable": Case(
        ["index", "build", "{good}", "/dev/null/x"], "cannot write", "folder you can write to"
    ),
    "index-truncated-vectors": Case(
        ["index", "info", "{trunc_idx}"], "corrupt or truncated", "rebuild the index"
    ),
    "index-manifest-not-json": Case(
        ["index", "info", "{badjson_idx}"], "is not valid JSON", "rebuild it with `seals-gpu index build"
    ),
    "index-missing": Case(["index", "info", "{new}"], "does not exist", "seals-gpu index build"),
    "index-graph-k0": Case(["index", "graph", "{good_idx}", "--k", "0"], "0 must be at least 1", "--help"),
    # ------------------------------------------------------------------ run
    "run-unknown-strategy": Case(R(strategies="maxent,bald"), "unknown strategy 'bald'", "choose from"),
    "run-unknown-mode": Case(R(modes="seals,half"), "unknown mode 'half'", "choose from"),
    "run-empty-strategies": Case(R(strategies=","), "--strategies is empty", "comma-separated list"),
    "run-impossible-budget": Case(
        R(budget="50"), "--budget 50 is below the seed set's 100 labels", "raise --budget"
    ),
    "run-k-below-1": Case(R(k="0"), "--k 0", "at least 1"),
    "run-batch-below-1": Case(R(batch="0"), "--batch 0", "at least one label per round"),
    "run-C-not-positive": Case(R(C="0"), "--C 0.0 must be positive", "positive"),
    "run-unknown-concept": Case(R(concepts="0,99"), "unknown concept 99", "seals-gpu store info"),
    "run-concept-without-train-positives": Case(
        R("{alltest}", concepts="7"),
        "concept 7 has 0 train positives",
        "lower --seed-positives or choose another concept",
    ),
    "run-too-few-positives-for-seed": Case(
        R(seed_positives="500", budget="1000"), "fewer than --seed-positives 500", "lower --seed-positives"
    ),
    "run-concepts-sample-too-many": Case(
        R(concepts=None, concepts_sample="50", prevalence="0.01:0.1"),
        "only 3 concepts have prevalence",
        "sample fewer",
    ),
    "run-bad-prevalence": Case(
        R(concepts=None, concepts_sample="2", prevalence="abc"), "prevalence 'abc'", "MIN:MAX"
    ),
    "run-store-without-labels": Case(R("{nolabels}"), "has no 'labels' column", "pass --oracle queue"),
    "run-store-is-a-file": Case(R("{afile}"), "is a file", "folder of Parquet files"),
    "run-index-from-another-store": Case(
        R(index="{other_idx}"),
        "was built from a store with fingerprint",
        "rebuild it with `seals-gpu index build",
    ),
    "run-truncated-index": Case(R(index="{trunc_idx}"), "corrupt or truncated", "rebuild the index"),
    "run-graph-from-another-store": Case(
        R(graph="{other_graph}"), "over a store with fingerprint", "rebuild the index and the graph"
    ),
    "run-graph-k-below-run-k": Case(
        R(graph="{good_graph5}", k="10"), "holds 5 neighbours per item but --k is 10", "lower --k"
    ),
    "run-id-knn-all-without-graph": Case(
        R(strategies="id-knn", modes="all"), "id-knn in All mode needs", "build a graph"
    ),
    "run-ray-without-index": Case(
        R("{good}", "{new}", "--ray"), "--ray needs --index", "built, possibly sharded, index folder"
    ),
    "run-out-is-a-file": Case(R(out="{afile}"), "is a file, not a folder", "pick another --out"),
    "run-out-unwritable": Case(R(out="/dev/null/x"), "cannot create --out /dev/null/x", "pick another --out"),
    "run-out-unwritable-permissions": Case(
        R(out="{readonly}/run"), "cannot create --out", "pick another --out", root_ok=False
    ),
    "run-out-not-empty": Case(R(out="{nonempty}"), "is not empty", "pass --resume", unchanged="nonempty"),
    "run-resume-nothing": Case(R("{good}", "{new}", "--resume"), "holds no run", "drop --resume"),
    "run-resume-changed-config": Case(
        R("{good}", "{finished}", "--resume", budget="200"),
        "budget changed",
        "rerun with the original settings",
        unchanged="finished",
    ),
    "run-resume-other-store": Case(
        R("{other}", "{finished}", "--resume"),
        "has fingerprint",
        "resume with the original store",
        unchanged="finished",
    ),
    "run-resume-corrupt-checkpoint": Case(
        R("{good}", "{badckpt}", "--resume"), "state.npz is unreadable", "delete", unchanged="badckpt"
    ),
    # ------------------------------------------------------------------ report
    "report-missing-run-dir": Case(["report", "{new}"], "does not exist", "pass the folder a run wrote"),
    "report-run-dir-is-a-file": Case(["report", "{afile}"], "is not a directory", "pass the run folder"),
    "report-no-metrics": Case(["report", "{empty}"], "metrics.parquet is missing", "run it first"),
    "report-corrupt-metrics": Case(
        ["report", "{corrupt_metrics}"],
        "is not a readable Parquet file",
        "re-run the experiment",
        unchanged="corrupt_metrics",
    ),
    "report-metrics-lacking-columns": Case(
        ["report", "{lacking_metrics}"],
        "lacks column(s)",
        "re-run the experiment",
        unchanged="lacking_metrics",
    ),
    "report-empty-metrics": Case(
        ["report", "{empty_metrics}"], "has no rows", "wait for it or re-run it", unchanged="empty_metrics"
    ),
    "report-plots-unwritable": Case(
        ["report", "{plotsfile}"], "cannot write the plots", "pass --no-plots", unchanged="plotsfile"
    ),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _resolve(case: Case, fx: dict[str, Path], tmp_path: Path) -> list[str]:
    names = {k: str(v) for k, v in fx.items()} | {
        "new": str(tmp_path / "new"),
        "readonly": str(tmp_path / "ro"),
    }
    return [a.format(**names) for a in case.args]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def shown(stream: str) -> list[str]:
    """The non-blank lines a terminal shows for ``stream``: a carriage return (a progress bar redrawing or
    clearing itself) goes back to the start of the line, and what follows overwrites it."""
    lines = []
    for raw in stream.split("\n"):
        line: list[str] = []
        for seg in raw.split("\r"):
            line[: len(seg)] = seg
        text = "".join(line).rstrip()
        if text:
            lines.append(text)
    return lines


def _check(case: Case, code: int, err: str, fx: dict[str, Path], tmp_path: Path, before) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = shown(err)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("seals-gpu"), f"something printed before the error: {lines[0]!r}"
    assert case.problem in err, err
    assert case.fix in err, err
    assert not (tmp_path / "new").exists(), "a refused command left partial output"
    assert not list(tmp_path.glob(".new.*")), "a refused command left a temporary folder"
    if case.unchanged:
        assert _snapshot(fx[case.unchanged]) == before, f"{case.unchanged} changed"


def test_there_are_at_least_25_distinct_bad_inputs():
    assert len(CASES) >= 25
    assert len({(tuple(c.args), c.problem) for c in CASES.values()}) == len(CASES)
    for group in ("store", "index", "run", "report"):
        assert sum(c.args[0] == group for c in CASES.values()) >= 5, group


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_no_partial_output(name, fx, tmp_path, capsys):
    case = CASES[name]
    if not case.root_ok:
        if os.geteuid() == 0:
            pytest.skip(
                "root ignores file permissions (the /dev/null/x cases cover unwritable output for root)"
            )
        (tmp_path / "ro").mkdir(mode=0o500)
    before = _snapshot(fx[case.unchanged]) if case.unchanged else None
    args = _resolve(case, fx, tmp_path)
    code, _, err = _cli(args, capsys)
    _check(case, code, err, fx, tmp_path, before)


@pytest.mark.parametrize(
    "name",
    [
        "store-wrong-dimension-across-files",
        "run-resume-changed-config",
        "index-truncated-vectors",
        "report-metrics-lacking-columns",
    ],
)
def test_bad_input_in_a_real_subprocess(name, fx, tmp_path):
    case = CASES[name]
    before = _snapshot(fx[case.unchanged]) if case.unchanged else None
    p = subprocess.run(
        [sys.executable, "-m", "seals_gpu", *_resolve(case, fx, tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(case, p.returncode, p.stderr, fx, tmp_path, before)
