"""Data safety (issue #13): an output is never one of the command's inputs (nor inside or around one, through
symlinks and ``..`` too); ``--force`` replaces only an output of the same kind; leftovers of a killed build are
cleaned by the next one. Every refusal is exit 2 and ONE line, and leaves the inputs byte for byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu import atomic
from seals_gpu.cli import main
from seals_gpu.demo import MARKER, _prepare_out
from seals_gpu.errors import ConfigError, StoreError
from seals_gpu.graph import build_graph
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.store import check_store_out
from seals_gpu.synth import make_synthetic_store

DIM = 8
RUN = ["--concepts", "0", "--strategies", "maxent", "--modes", "seals", "--budget", "150", "--batch", "50"]
RUN += ["--k", "10", "--device", "cpu", "--quiet"]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (symlinks not followed) and its sha256."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(args: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    return code, err


def refused(args: list, capsys, *words: str) -> str:
    """The command exits 2 with one line on stderr holding every word."""
    code, err = cli(args, capsys)
    assert code == 2, err
    assert err.startswith("seals-gpu: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    r = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(r.stdout)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    b = tmp_path_factory.mktemp("safety")
    f: dict[str, Path] = {"base": b}
    f["store"] = make_synthetic_store(
        b / "store", n=600, dim=DIM, concepts=2, prevalence=(0.05, 0.1), seed=0
    ).path
    f["other"] = make_synthetic_store(
        b / "other", n=300, dim=DIM, concepts=2, prevalence=(0.05, 0.1), seed=1
    ).path
    f["index"] = build_index(f["store"], b / "index", IndexSpec(kind="flat")).path
    f["graph"] = build_graph(f["index"], k=10, out=b / "graph")
    f["notes"] = b / "notes"
    f["notes"].mkdir()
    (f["notes"] / "notes.txt").write_text("someone else's\n")
    f["afile"] = b / "afile.txt"
    f["afile"].write_text("a file\n")
    # an embedded WordNet-like parquet and its concepts table, as `store wordnet --from-parquet` reads them
    src = b / "ref"
    src.mkdir()
    n = 50
    x = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    pq.write_table(
        pa.table(
            {
                "id": pa.array(np.arange(n, dtype=np.int64)),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
                "labels": pa.array([[i % 2] for i in range(n)], type=pa.list_(pa.int64())),
                "text": pa.array([f"t{i}" for i in range(n)]),
            }
        ),
        src / "wordnet_noun_minilm.parquet",
    )
    pq.write_table(
        pa.table({"concept_id": [0, 1], "name": ["a", "b"]}), src / "wordnet_noun_concepts.parquet"
    )
    f["ref"] = src / "wordnet_noun_minilm.parquet"
    f["refdir"] = src
    return f


@pytest.fixture
def frozen(fx):
    """Checks after the test that no fixture folder changed."""
    before = {k: digest(v) for k, v in fx.items() if v.is_dir() and k != "base"}
    yield fx
    assert {k: digest(fx[k]) for k in before} == before


def link(tmp_path: Path, target: Path, name: str = "link") -> Path:
    p = tmp_path / name
    if not p.is_symlink():
        p.symlink_to(target)
    return p


# ---------------------------------------------------------------------------------------------- output == input
@pytest.mark.parametrize(
    "form", ["same", "inside", "dotdot", "parent", "symlink", "symlink-inside", "store-via-symlink"]
)
def test_index_build_output_is_never_the_store(form, frozen, tmp_path, capsys):
    s = frozen["store"]
    store_arg, out = {
        "same": (s, s),
        "inside": (s, s / "sub"),
        "dotdot": (s, s / "sub" / ".."),
        "parent": (s, s / ".."),
        "symlink": (s, link(tmp_path, s)),
        "symlink-inside": (s, link(tmp_path, s) / "idx"),
        "store-via-symlink": (link(tmp_path, s), s / "idx"),
    }[form]
    for force in (["--force"], []):
        refused(["index", "build", store_arg, out, *force], capsys, str(out), "the store", "elsewhere")
    assert not (s / "sub").exists() and not (s / "idx").exists()


@pytest.mark.parametrize("form", ["index", "index-parent", "shard", "manifest", "store", "in-store", "link"])
def test_index_graph_out_is_never_the_index_or_the_store(form, frozen, tmp_path, capsys):
    idx, s = frozen["index"], frozen["store"]
    out = {
        "index": idx,
        "index-parent": idx / "..",
        "shard": idx / "shard-00000",
        "manifest": idx / "manifest.json",
        "store": s,
        "in-store": s / "graph",
        "link": link(tmp_path, s),
    }[form]
    refused(["index", "graph", idx, "--k", "3", "--out", out], capsys, str(out))
    assert not (s / "graph").exists()


def test_index_graph_out_a_file_is_one_line(frozen, capsys):
    refused(["index", "graph", frozen["index"], "--k", "3", "--out", frozen["afile"]], capsys, "is a file")
    assert frozen["afile"].read_text() == "a file\n"


@pytest.mark.parametrize("form", ["store", "in-store", "index", "graph", "store-parent", "link"])
def test_run_out_is_never_an_input(form, frozen, tmp_path, capsys):
    s = frozen["store"]
    out = {
        "store": s,
        "in-store": s / "run",
        "index": frozen["index"],
        "graph": frozen["graph"],
        "store-parent": s / "..",
        "link": link(tmp_path, frozen["index"]),
    }[form]
    args = ["run", s, "--out", out, "--index", frozen["index"], "--graph", frozen["graph"], *RUN]
    refused(args, capsys, str(out), "which this command reads")
    refused([*args, "--resume"], capsys, str(out))
    assert not (s / "run").exists()


@pytest.mark.parametrize("form", ["folder", "file", "symlink"])
def test_store_wordnet_out_never_holds_its_input(form, frozen, tmp_path, capsys):
    ref = frozen["ref"]
    out = {"folder": ref.parent, "file": ref, "symlink": link(tmp_path, ref.parent)}[form]
    refused(["store", "wordnet", "--from-parquet", ref, out, "--force"], capsys, "embedded parquet")
    data = tmp_path / "wn" / "data.noun"
    data.parent.mkdir()
    data.write_text("  1 this is a license header\n")
    refused(["store", "wordnet", "--data-noun", data, data.parent, "--force"], capsys, "WordNet file")
    assert data.read_text() == "  1 this is a license header\n"


def test_demo_out_never_holds_the_data_cache(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    (cache / "wordnet").mkdir(parents=True)
    (cache / "wordnet" / "keep.txt").write_text("cached\n")
    monkeypatch.setenv("SEALS_GPU_CACHE", str(cache))
    for out in (cache, tmp_path, cache / "wordnet" / "demo"):
        refused(["demo", "--out", out, "--synthetic", "--device", "cpu"], capsys, "demo data cache")
    assert sorted(digest(cache)) == ["wordnet/keep.txt"]
    assert (cache / "wordnet" / "keep.txt").read_text() == "cached\n"


# ---------------------------------------------------------------------------------------------- --force
@pytest.mark.parametrize("other", ["notes", "index", "graph", "afile", "link", "ref-folder"])
def test_store_force_replaces_only_a_store(other, frozen, tmp_path, capsys):
    out = {
        "notes": frozen["notes"],
        "index": frozen["index"],
        "graph": frozen["graph"],
        "afile": frozen["afile"],
        "link": link(tmp_path, frozen["other"]),
        "ref-folder": frozen["ref"].parent,
    }[other]
    before = digest(frozen["base"])
    refused(["store", "synth", out, "--n", "100", "--force"], capsys, str(out))
    refused(["store", "wordnet", "--from-parquet", frozen["ref"], out, "--force"], capsys, str(out))
    assert digest(frozen["base"]) == before


@pytest.mark.parametrize("other", ["notes", "store", "graph", "afile", "link", "index-plus-file"])
def test_index_force_replaces_only_an_index(other, frozen, tmp_path, capsys):
    extra = tmp_path / "index-plus"
    shutil.copytree(frozen["index"], extra)
    (extra / "README.txt").write_text("mine\n")
    out = {
        "notes": frozen["notes"],
        "store": frozen["other"],
        "graph": frozen["graph"],
        "afile": frozen["afile"],
        "link": link(tmp_path, frozen["index"]),
        "index-plus-file": extra,
    }[other]
    before = digest(out) if out.is_dir() else out.read_bytes()
    refused(["index", "build", frozen["store"], out, "--force"], capsys, str(out))
    assert (digest(out) if out.is_dir() else out.read_bytes()) == before


def test_force_refuses_the_home_folder(frozen, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    shutil.copytree(frozen["other"], home)  # even a home that looks like a store
    monkeypatch.setenv("HOME", str(home))
    before = digest(home)
    refused(["store", "synth", home, "--n", "100", "--force"], capsys, "home folder")
    assert digest(home) == before
    with pytest.raises(StoreError, match="is not a store"):  # checked, never written: reads only
        check_store_out("/", overwrite=True)


def test_without_force_an_existing_output_is_refused_and_named(frozen, capsys):
    refused(["store", "synth", frozen["other"], "--n", "100"], capsys, "already exists (a store)", "--force")
    refused(["index", "build", frozen["store"], frozen["index"]], capsys, "already exists", "--force")


def test_force_replaces_the_same_kind(frozen, tmp_path, capsys):
    s = tmp_path / "s"
    make_synthetic_store(s, n=200, dim=DIM, concepts=2, prevalence=(0.05, 0.1), seed=3)
    assert (
        cli(["store", "synth", s, "--n", "150", "--dim", "4", "--concepts", "1", "--force"], capsys)[0] == 0
    )
    code, err = cli(["store", "wordnet", "--from-parquet", frozen["ref"], s, "--force"], capsys)
    assert code == 0, err
    idx = tmp_path / "idx"
    shutil.copytree(frozen["index"], idx)
    build_graph(idx, k=3)  # INDEX/graph-k3 is part of the index folder
    code, err = cli(["index", "build", frozen["other"], idx, "--force"], capsys)
    assert code == 0, err
    assert not (idx / "graph-k3").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "s"]  # no temporaries left


def test_demo_replaces_only_an_earlier_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "quality").mkdir(parents=True)
    (out / MARKER).write_text("demo\n")
    (out / "mine.txt").write_text("not the demo's\n")
    with pytest.raises(ConfigError, match="mine.txt"):
        _prepare_out(out)
    assert (out / "mine.txt").exists() and (out / "quality").exists()
    (out / "mine.txt").unlink()
    _prepare_out(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    refused(["demo", "--out", link(tmp_path, out), "--synthetic"], capsys, "symbolic link")
    refused(["demo", "--out", tmp_path / "link" / MARKER, "--synthetic"], capsys, "is a file")


# ---------------------------------------------------------------------------------------------- leftovers
def test_a_killed_index_build_is_cleaned_by_the_next(fx, tmp_path, capsys):
    out = tmp_path / "idx"
    script = (
        "import os, signal, sys\n"
        "from seals_gpu.index import IndexSpec, build_index\n"
        "def fill(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "build_index(sys.argv[1], sys.argv[2], IndexSpec(kind='flat'), fill=fill)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(fx["store"]), str(out)], capture_output=True)
    assert r.returncode == -9, r.stderr
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]
    assert len(left) == 1 and (left[0] / "shard-00000" / "vectors.npy").exists()  # the full-size temporary
    assert not out.exists()
    code, err = cli(["index", "build", fx["store"], out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_only_dead_processes_leftovers_of_this_output_are_removed(fx, tmp_path, capsys):
    dead, host = dead_pid(), atomic._HOST
    out = tmp_path / "s"
    mine = [f".s.{host}.{dead}.abcd_123.tmp", f".s.{host}.{dead}.zzzzzzzz.tmp"]
    keep = [
        f".s.{host}.{os.getppid()}.abcd_123.tmp",  # a live process's write
        f".s.other-host.{dead}.abcd_123.tmp",  # another machine's
        f".s2.{host}.{dead}.abcd_123.tmp",  # another output's
        ".s.abcd_123.tmp",  # not this module's name
        f".s.{host}.{dead}.abcd_123.tmp.bak",
        "notes.txt",
    ]
    for name in mine + keep:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-00000.parquet").write_bytes(b"x" * 1000)
    code, err = cli(["store", "synth", out, "--n", "100", "--dim", "4", "--concepts", "1"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["s"])


def test_a_parked_old_output_is_put_back(fx, tmp_path, capsys):
    """Killed between the two renames of a --force replace: the old output is parked, the new one is a
    temporary. The next command restores the old one (so without --force it is refused, not lost)."""
    dead, host = dead_pid(), atomic._HOST
    shutil.copytree(fx["index"], tmp_path / f".idx.{host}.{dead}.old")
    shutil.copytree(fx["index"], tmp_path / f".idx.{host}.{dead}.abcdefgh.tmp")
    out = tmp_path / "idx"
    refused(["index", "build", fx["store"], out], capsys, "already exists (an index folder)", "--force")
    assert digest(out) == digest(fx["index"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_a_killed_graph_part_is_cleaned_by_the_next(fx, tmp_path, capsys):
    out = tmp_path / "g"
    dead, host = dead_pid(), atomic._HOST
    out.mkdir()
    stale = [f".part-00000.parquet.{host}.{dead}.abcdefgh.tmp", f".graph.json.{host}.{dead}.abcdefgh.tmp"]
    for name in stale:
        (out / name).write_bytes(b"half a part")
    code, err = cli(["index", "graph", fx["index"], "--k", "3", "--out", out, "--part-rows", "400"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["graph.json", "part-00000.parquet", "part-00001.parquet"]
