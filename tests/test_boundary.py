"""The one boundary of the CLI (issue #13): whatever goes wrong ends as ONE line on stderr and no traceback.

- bad input, a path the OS refuses, a size beyond the machine: exit 2 with the problem and the fix, and
  nothing created;
- anything else is a bug: exit 1, a pointer to report it, the traceback only with ``--debug``;
- a progress bar cut short by an error is cleared, so the error line stands alone;
- finite but huge (or tiny) vectors normalise exactly like the same vectors at a sane scale.

The table below declares each hostile input as a named case, checked like the cases of
``tests/test_bad_input.py`` (exit 2, one line, problem and fix named, no partial output).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu import cli
from seals_gpu.driver import run
from seals_gpu.errors import StoreError
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.store import Store, l2_normalize, write_store
from seals_gpu.synth import make_synthetic_store
from tests.conftest import clustered
from tests.test_bad_input import Case, R, _check, _cli, _resolve, _snapshot, shown

LONG = "a" * 300  # a file name longer than any file system allows (255 bytes)


def _manifest_variant(base: Path, good_idx: Path, name: str, change) -> Path:
    idx = Path(shutil.copytree(good_idx, base / name))
    mf = idx / "manifest.json"
    m = json.loads(mf.read_text())
    out = change(m, idx)
    if out is not None:
        mf.write_text(out)
    return idx


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    b = tmp_path_factory.mktemp("boundary")
    f: dict[str, Path] = {}
    good = make_synthetic_store(b / "good", n=2000, dim=8, concepts=3, prevalence=(0.02, 0.05), seed=1)
    f["good"] = good.path
    f["good_idx"] = build_index(good, b / "good_idx", IndexSpec(kind="flat")).path

    def without(key):
        def change(m, idx):
            del m[key]
            return json.dumps(m)

        return change

    def as_text(text):
        return lambda m, idx: text

    def manifest_dir(m, idx):
        (idx / "manifest.json").unlink()
        (idx / "manifest.json").mkdir()

    def setting(path, value):
        def change(m, idx):
            target = m
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
            return json.dumps(m)

        return change

    for name, change in {
        "idx_noshards": without("shards"),
        "idx_nostore": without("store"),
        "idx_list": as_text("[1, 2, 3]"),
        "idx_empty": as_text(""),
        "idx_binary": lambda m, idx: (idx / "manifest.json").write_bytes(b"\xff\xfe\x00garbage") and None,
        "idx_dir": manifest_dir,
        "idx_dim_text": setting(["dim"], "8"),
        "idx_escape": setting(["shards", 0, "dir"], "../../etc"),
        "idx_shards_dict": setting(["shards"], {"dir": "shard-00000"}),
    }.items():
        f[name] = _manifest_variant(b, f["good_idx"], name, change)
    f["idx_unsorted"] = Path(shutil.copytree(f["good_idx"], b / "idx_unsorted"))
    ids_file = f["idx_unsorted"] / "shard-00000" / "ids.npy"
    ids = np.load(ids_file)
    ids[[0, 1]] = ids[[1, 0]]
    np.save(ids_file, ids)

    # stores whose _concepts.parquet side file is broken
    side = {
        "side_garbage": lambda p: p.write_bytes(np.random.default_rng(0).bytes(2048)),
        "side_empty": lambda p: p.write_bytes(b""),
        "side_dir": lambda p: p.mkdir(),
        "side_columns": lambda p: pq.write_table(pa.table({"x": [1]}), p),
        "side_strkeys": lambda p: pq.write_table(pa.table({"concept_id": ["0"], "name": ["zero"]}), p),
    }
    for name, make in side.items():
        f[name] = Path(shutil.copytree(good.path, b / name))
        (f[name] / "_concepts.parquet").unlink()
        make(f[name] / "_concepts.parquet")

    # runs whose plot outputs are folders
    run(
        good,
        b / "finished",
        concepts=[0],
        strategies=("maxent",),
        modes=("seals",),
        budget=150,
        batch=50,
        k=10,
    )
    for name, target in {"plots_ap_dir": "ap.png", "plots_summary_dir": "summary.json"}.items():
        f[name] = Path(shutil.copytree(b / "finished", b / name))
        (f[name] / "plots" / target).mkdir(parents=True)
    return f


CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ numbers no machine can hold
    "run-concepts-beyond-int64": Case(
        R(concepts="99999999999999999999"), "unknown concept '99999999999999999999'", "seals-gpu store info"
    ),
    "run-k-2-to-the-40": Case(R(k="1099511627776"), "--k 1099511627776", "lower --k"),
    "run-k-10-million": Case(R(k="10000000"), "--k 10000000", "lower --k"),
    "run-k-2-to-the-70": Case(R(k=str(2**70)), f"--k {2**70} is too large", "at most 2**63 - 1"),
    "run-budget-2-to-the-70": Case(R(budget=str(2**70)), f"--budget {2**70} is too large", "at most"),
    "run-seed-negative": Case(R(seed="-1"), "--seed -1", "must be 0 or more"),
    "run-seed-2-to-the-64": Case(R(seed=str(2**64)), f"--seed {2**64} is too large", "at most 2**63 - 1"),
    "run-concepts-sample-2-to-the-64": Case(
        R(concepts=None, concepts_sample=str(2**64)), f"{2**64} is too large", "--help"
    ),
    "run-C-inf": Case(R(C="inf"), "--C inf must be positive and finite", "the default is 1.0"),
    "run-C-nan": Case(R(C="nan"), "--C nan must be positive and finite", "the default is 1.0"),
    "run-beta-inf": Case(R(beta="inf"), "--beta inf must be 0 or more and finite", "the default is 1.0"),
    "run-beta-nan": Case(R(beta="nan"), "--beta nan must be 0 or more and finite", "the default is 1.0"),
    "store-synth-dim-2-to-the-40": Case(
        ["store", "synth", "{new}", "--dim", str(2**40)], f"--dim: {2**40} is too large", "at most 65,536"
    ),
    "store-synth-n-2-to-the-62": Case(
        ["store", "synth", "{new}", "--n", str(2**62)], "its embeddings take", "lower --n or --dim"
    ),
    "store-synth-seed-negative": Case(
        ["store", "synth", "{new}", "--seed", "-1"], "-1 must be 0 or more", "--help"
    ),
    "index-graph-k-beyond-items": Case(
        ["index", "graph", "{good_idx}", "--k", "10000000"],
        "--k 10000000 is more than the 2,000 items",
        "lower --k",
        unchanged="good_idx",
    ),
    "index-train-size-below-nlist": Case(
        [
            "index",
            "build",
            "{good}",
            "{new}",
            "--kind",
            "ivfpq",
            "--nlist",
            "16",
            "--pq-m",
            "4",
            "--train-size",
            "10",
        ],
        "--train-size 10 is fewer training vectors than --nlist 16 lists",
        "raise --train-size to at least 16",
    ),
    # ------------------------------------------------------------------ paths the OS cannot name
    "store-info-name-too-long": Case(
        ["store", "info", "{new}/" + LONG], "is 300 bytes", "use a shorter name"
    ),
    "store-synth-name-too-long": Case(
        ["store", "synth", "{new}/" + LONG], "is 300 bytes", "use a shorter name"
    ),
    "index-build-name-too-long": Case(
        ["index", "build", "{good}", "{new}/" + LONG], "is 300 bytes", "use a shorter name"
    ),
    "run-out-name-too-long": Case(R(out="{new}/" + LONG), "is 300 bytes", "use a shorter name"),
    "report-name-too-long": Case(["report", "{new}/" + LONG], "is 300 bytes", "use a shorter name"),
    # ------------------------------------------------------------------ an index's manifest.json
    "index-manifest-without-shards": Case(
        ["index", "info", "{idx_noshards}"], "lacks 'shards'", "rebuild it with `seals-gpu index build"
    ),
    "index-manifest-without-store": Case(
        ["index", "info", "{idx_nostore}"], "lacks 'store'", "rebuild it with `seals-gpu index build"
    ),
    "index-manifest-a-json-list": Case(
        ["index", "info", "{idx_list}"], "holds a JSON list, not an object", "--force"
    ),
    "index-manifest-empty": Case(["index", "info", "{idx_empty}"], "is not valid JSON", "--force"),
    "index-manifest-binary": Case(["index", "info", "{idx_binary}"], "is not valid JSON", "--force"),
    "index-manifest-a-directory": Case(
        ["index", "info", "{idx_dir}"], "manifest.json cannot be read", "rebuild it with"
    ),
    "index-manifest-dim-a-string": Case(["index", "info", "{idx_dim_text}"], "must be integers", "--force"),
    "index-manifest-shard-dir-escapes": Case(
        ["index", "info", "{idx_escape}"], "has dir '../../etc'", "rebuild it with"
    ),
    "index-manifest-shards-a-dict": Case(
        ["index", "info", "{idx_shards_dict}"], "'shards' holds a dict", "rebuild it with"
    ),
    "index-shard-ids-unsorted": Case(
        ["index", "info", "{idx_unsorted}"],
        "ids.npy: its ids are not unique and sorted ascending",
        "rebuild the index with `seals-gpu index build",
    ),
    "run-index-manifest-without-store": Case(
        R(index="{idx_nostore}"), "lacks 'store'", "rebuild it with `seals-gpu index build"
    ),
    "graph-index-manifest-a-json-list": Case(
        ["index", "graph", "{idx_list}"], "holds a JSON list", "rebuild it with"
    ),
    # ------------------------------------------------------------------ a store's _concepts.parquet
    "store-info-concepts-file-garbage": Case(
        ["store", "info", "{side_garbage}"], "_concepts.parquet: not a readable Parquet file", "remove it"
    ),
    "store-info-concepts-file-empty": Case(
        ["store", "info", "{side_empty}"], "_concepts.parquet: not a readable Parquet file", "remove it"
    ),
    "store-info-concepts-file-a-directory": Case(
        ["store", "info", "{side_dir}"], "_concepts.parquet is not a file", "remove it"
    ),
    "store-info-concepts-file-wrong-columns": Case(
        ["store", "info", "{side_columns}"], "expected columns 'concept_id'", "remove it"
    ),
    "store-info-concepts-file-string-ids": Case(
        ["store", "info", "{side_strkeys}"], "column 'concept_id' holds string", "remove it"
    ),
    "run-concepts-file-garbage": Case(
        R("{side_garbage}"), "_concepts.parquet: not a readable Parquet file", "remove it"
    ),
    # ------------------------------------------------------------------ a report's outputs
    "report-ap-png-a-directory": Case(
        ["report", "{plots_ap_dir}"], "plots/ap.png is a folder", "pass --no-plots", unchanged="plots_ap_dir"
    ),
    "report-summary-json-a-directory": Case(
        ["report", "{plots_summary_dir}"],
        "plots/summary.json is a folder",
        "pass --no-plots",
        unchanged="plots_summary_dir",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_exits_2_with_one_line_and_nothing_created(name, fx, tmp_path, capsys):
    case = CASES[name]
    before = _snapshot(fx[case.unchanged]) if case.unchanged else None
    code, _, err = _cli(_resolve(case, fx, tmp_path), capsys)
    _check(case, code, err, fx, tmp_path, before)


def test_the_table_covers_every_command_group():
    for group in ("store", "index", "run", "report"):
        assert sum(c.args[0] == group for c in CASES.values()) >= 3, group


# ---------------------------------------------------------------------------------------------- the boundary
def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def _raising(exc: BaseException):
    def command(args):
        raise exc

    return command


def test_a_bug_is_one_line_exit_1_with_where_to_report_it(fx, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "report", _raising(ZeroDivisionError("division by zero")))
    code, _, err = _cli(["report", str(fx["plots_ap_dir"])], capsys)
    line = _one_line(err)
    assert code == 1
    assert line.startswith("seals-gpu: internal error: ZeroDivisionError: division by zero")
    assert "please report it" in line and "--debug" in line


def test_debug_anywhere_prints_the_traceback_then_the_same_line(fx, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "report", _raising(ZeroDivisionError("division by zero")))
    for argv in (["--debug", "report", "X"], ["report", "X", "--debug"]):
        code, _, err = _cli(argv, capsys)
        assert code == 1
        assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
        assert err.strip().splitlines()[-1].startswith("seals-gpu: internal error: ZeroDivisionError")


def test_a_bad_setting_with_debug_shows_its_traceback_too(capsys, tmp_path):
    code, _, err = _cli(["store", "info", str(tmp_path / "missing"), "--debug"], capsys)
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("seals-gpu: error: store ")


@pytest.mark.parametrize(
    "cmd, fix",
    [
        (["report", "X"], "try a smaller input"),
        (["store", "synth", "X"], "lower --n or --dim"),
        (["index", "graph", "X"], "lower --k or --part-rows"),
    ],
)
def test_out_of_memory_is_one_line_naming_what_to_lower(cmd, fix, monkeypatch, capsys):
    boom = MemoryError(
        "Unable to allocate 76.3 GiB for an array with shape (1024, 10000000) and data type int64"
    )
    monkeypatch.setitem(cli.COMMANDS, cmd[0], _raising(boom))
    code, _, err = _cli(cmd, capsys)
    line = _one_line(err)
    assert code == 2
    assert "ran out of memory (Unable to allocate 76.3 GiB" in line and fix in line


def test_torch_out_of_memory_counts_as_memory_too(monkeypatch, capsys):
    boom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setitem(cli.COMMANDS, "report", _raising(boom))
    code, _, err = _cli(["report", "X"], capsys)
    assert code == 2 and "ran out of memory" in _one_line(err)


@pytest.mark.parametrize(
    "code_, strerror, fix",
    [
        (errno.ENOSPC, "No space left on device", "free some disk space"),
        (errno.EACCES, "Permission denied", "pick a path you may read and write"),
        (errno.EROFS, "Read-only file system", "write somewhere else"),
        (errno.EISDIR, "Is a directory", "remove or rename it"),
        (errno.ENAMETOOLONG, "File name too long", "use a shorter path"),
    ],
)
def test_an_os_error_is_one_line_naming_the_path_and_the_errno(code_, strerror, fix, monkeypatch, capsys):
    monkeypatch.setitem(
        cli.COMMANDS, "report", _raising(OSError(code_, strerror, "/data/runs/r1/metrics.parquet"))
    )
    code, _, err = _cli(["report", "X"], capsys)
    line = _one_line(err)
    assert code == 2
    assert f"/data/runs/r1/metrics.parquet: {strerror} ({errno.errorcode[code_]}); " in line and fix in line


def test_keyboard_interrupt_still_exits_130(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "report", _raising(KeyboardInterrupt()))
    code, _, err = _cli(["report", "X"], capsys)
    assert code == 130 and _one_line(err) == "seals-gpu: interrupted"


def test_an_error_during_a_progress_bar_is_a_line_of_its_own(tmp_path):
    """`index build` of a store whose NaN sits in the second batch: the bar is drawn, then the error. The
    screen must show the error alone, not after the bar's text."""
    n = 70_000
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    x[n - 10, 1] = np.nan
    store = tmp_path / "store"
    store.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": pa.array(np.arange(n, dtype=np.int64)),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4),
            }
        ),
        store / "part-00000.parquet",
    )
    p = subprocess.run(
        [sys.executable, "-m", "seals_gpu", "index", "build", str(store), str(tmp_path / "idx")],
        capture_output=True,
        timeout=300,
    )
    err = p.stderr.decode()
    assert p.returncode == 2
    assert "reading store" in err  # the bar was drawn ...
    screen = shown(err)
    assert len(screen) == 1 and screen[0].startswith("seals-gpu: error: "), screen  # ... and cleared
    assert "contains NaN or inf" in screen[0] and not (tmp_path / "idx").exists()


# ---------------------------------------------------------------------------------------------- numerics
def test_l2_normalize_of_finite_huge_and_tiny_rows():
    x = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
    unit = l2_normalize(x)
    for scale in (2.0**100, 2.0**-90):  # powers of two: exactly the same vectors
        assert np.array_equal(l2_normalize((x * scale).astype(np.float32)), unit)
    scaled = (x.astype(np.float64) * 1e30).astype(np.float32)  # rounded on the way: the same to float32
    assert np.isfinite(scaled).all()
    np.testing.assert_allclose(l2_normalize(scaled), unit, atol=2e-7)
    huge = x.copy()
    huge[3] = 3e38
    out = l2_normalize(huge)
    np.testing.assert_allclose(out[3], np.full(16, 0.25), rtol=1e-6)
    assert np.array_equal(out[np.arange(500) != 3], unit[np.arange(500) != 3])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_zero_and_denormal_rows_stay_refused():
    x = np.ones((4, 8), dtype=np.float32)
    x[2] = 0
    with pytest.raises(StoreError, match="row 2 is an all-zero vector"):
        l2_normalize(x)
    x[2] = 1e-40  # denormal float32
    with pytest.raises(StoreError, match="row 2 is a denormal vector"):
        l2_normalize(x)


def test_store_validate_reports_rows_it_rescales(tmp_path, capsys):
    ids, x, labels = clustered(300, 8, seed=2)
    x[5] = 3e38
    write_store(tmp_path / "s", ids, x, labels=labels, normalize=False)
    assert Store(tmp_path / "s").validate() == 1
    code, out, err = _cli(["store", "validate", str(tmp_path / "s")], capsys)
    assert code == 0 and err == ""
    assert "all finite; 1 row(s) hold values so large or small" in out and "rescales them exactly" in out


def test_a_huge_row_and_a_store_scaled_by_1e30_run_exactly_like_the_plain_store(tmp_path):
    """Before: the norm of a row of ~3e38 overflowed to inf, the row became a zero vector, and a store
    scaled by 1e30 became all zeros; the runs reported meaningless numbers. Now all three runs agree."""
    ids, x, labels = clustered(1500, 8, seed=3)
    x = x.astype(np.float64)
    plain = x.copy()
    plain[10] = 1.5 * x[10] / np.abs(x[10]).max()
    huge_row = plain.copy()
    huge_row[10] *= 2.0**127  # ~2.6e38: finite in float32, its sum of squares is not
    variants = {"plain": plain, "huge-row": huge_row, "times-1e30": plain * 1e30}
    results = {}
    for name, emb in variants.items():
        emb32 = emb.astype(np.float32)
        assert np.isfinite(emb32).all()
        s = write_store(tmp_path / name, ids, emb32, labels=labels, normalize=False)
        out = tmp_path / f"run-{name}"
        run(
            s,
            out,
            concepts=[0, 1],
            strategies=("maxent", "id"),
            modes=("seals", "all"),
            budget=160,
            batch=20,
            k=10,
        )
        metrics = pq.read_table(out / "metrics.parquet").drop_columns(
            [c for c in pq.read_schema(out / "metrics.parquet").names if c.startswith("seconds")]
        )
        results[name] = (metrics, pq.read_table(out / "selections.parquet"))
        vec = next(s.iter_batches()).embeddings
        assert np.isfinite(vec).all() and np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    for name in ("huge-row", "times-1e30"):
        assert results[name][1].equals(results["plain"][1]), name
        assert results[name][0].equals(results["plain"][0]), name
