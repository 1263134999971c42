"""The run folder is safe: `seals-gpu run` refuses before it creates anything; a start killed at any moment
(its first second included) begins again, with or without --resume; the store is known by its fingerprint,
not by how its path is spelled; a corrupt checkpoint is refused in one line and never taken for a finished
run. Every case goes through `seals_gpu.cli.main` on a tiny store and checks the exit code, stderr, and the
output folder byte for byte (its lock file included) before and after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from seals_gpu import checkpoint, driver, rundir
from seals_gpu.checkpoint import CHECKPOINT, KILL_AT_ENV
from seals_gpu.cli import main
from seals_gpu.driver import Run
from seals_gpu.errors import ConfigError
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.store import Store
from seals_gpu.synth import make_synthetic_store

RUN = (
    "--concepts 0 --strategies maxent,id --modes seals,all --k 10 --batch 25 --budget 150 --seed 0 "
    "--device cpu --quiet"
).split()
N_ROUNDS = 2  # (150 - a seed set of 100) / 25
N_UNITS = 4  # 1 concept x 2 strategies x 2 modes
DIM = 8


# ---------------------------------------------------------------------------------------------- helpers
def cli(args: list, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = int(e.code)
    return code, capsys.readouterr().err


def run_args(store: Path | str, out: Path | str, *extra: str, **changes: str) -> list[str]:
    args = list(RUN)
    for k, v in changes.items():
        flag = "--" + k.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = v
        else:
            args += [flag, v]
    return ["run", str(store), "--out", str(out), *args, *extra]


def state(path: Path) -> dict[str, bytes | None] | None:
    """Everything under ``path`` (None: it does not exist): files by their bytes, the lock file too; folders
    as None."""
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))
    }


def refused(args: list, capsys, out: Path, *needles: str, one_line: bool = True) -> str:
    """``args`` exits 2 with one line naming ``needles`` (only the last line when not ``one_line``: the run
    log came first), and ``out`` is exactly as it was."""
    before = state(out)
    code, err = cli(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("seals-gpu: error: "), err
    if one_line:
        assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    assert state(out) == before, f"a refused run changed {out}"
    return err


def assert_same_results(a: Path, b: Path) -> None:
    sa, sb = pq.read_table(a / "selections.parquet"), pq.read_table(b / "selections.parquet")
    assert sa.equals(sb), "selections differ from the uninterrupted run"
    ma, mb = pq.read_table(a / "metrics.parquet"), pq.read_table(b / "metrics.parquet")
    drop = [c for c in ma.column_names if c.startswith("seconds_")]
    assert ma.drop(drop).equals(mb.drop(drop)), "metrics (seconds aside) differ from the uninterrupted run"


def start_killed(store: Path, out: Path, kill_at: str) -> subprocess.Popen:
    """A real `seals-gpu run` that SIGKILLs itself at ``kill_at`` (the run folder's test hook)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV} | {KILL_AT_ENV: kill_at}
    return subprocess.Popen(
        [sys.executable, "-m", "seals_gpu", *run_args(store, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def ckpt_round(out: Path) -> int:
    with np.load(out / CHECKPOINT) as z:
        return int(z["round"])


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run_safety")


@pytest.fixture(scope="module")
def store(base) -> Path:
    return make_synthetic_store(
        base / "store", n=1500, dim=DIM, concepts=2, prevalence=(0.01, 0.03), seed=5
    ).path


@pytest.fixture(scope="module")
def reference(store, base) -> Path:
    """The uninterrupted run every resumed one must equal."""
    out = base / "reference"
    assert main([str(a) for a in run_args(store, out)]) == 0
    return out


@pytest.fixture(scope="module")
def kills(store, base) -> dict[str, Path]:
    """A fresh run SIGKILLed at each point of its first second: the folders as the kill left them (copy
    before use)."""
    points = ("lock:0", "config:0", "outputs:0", "checkpoint:0")
    made = {p: base / f"killed-{p.replace(':', '-')}" for p in points}
    procs = {p: start_killed(store, made[p], p) for p in points}  # side by side: mostly start-up time
    for p, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{p}: {err}"
    return made


class Stop(BaseException):
    """Stands in for a kill where the folder's state, not the way the process died, is under test."""


@pytest.fixture(scope="module")
def partial(store, base) -> Path:
    """A run stopped inside round 1's checkpoint write: round 0 committed (copy before use)."""
    out = base / "partial"

    def stop(point: str, round_no: int) -> None:
        if (point, round_no) == ("checkpoint", 1):
            raise Stop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "kill_point", stop)
        with pytest.raises(Stop):
            main([str(a) for a in run_args(store, out)])
    assert ckpt_round(out) == 0
    return out


@pytest.fixture
def copy_of(tmp_path):
    def copy(src: Path, name: str = "run") -> Path:
        return Path(shutil.copytree(src, tmp_path / name, symlinks=True))

    return copy


@pytest.fixture(scope="module")
def n_train(store) -> int:
    ids, is_test = Store(store).read_split()
    return int((~is_test).sum())


# ---------------------------------------------------------------------------------------------- 1. refuse first
def _bad_index(base: Path, store: Path, name: str) -> Path:
    idx = base / name
    if not idx.exists():
        build_index(Store(store), idx, IndexSpec(kind="flat", shards=2))
        manifest = json.loads((idx / "manifest.json").read_text())
        if name == "index-no-shards":
            manifest["shards"] = []
        elif name == "index-short":  # a shard left out of the manifest: its rows would never be searched
            manifest["shards"] = manifest["shards"][:1]
        else:
            vec = idx / "shard-00000" / "vectors.npy"
            v = np.load(vec)
            v[7, 2] = np.nan
            np.save(vec, v)
        (idx / "manifest.json").write_text(json.dumps(manifest))
    return idx


LATE = {
    # name: (changes, needles); changes may use {n_train}, {negatives+1}, {index}
    "seed-negatives-beyond-the-train-split": (
        {"seed_negatives": "{negatives+1}", "budget": "{n_train}"},
        ["--seed-negatives", "negatives in the train split", "lower --seed-negatives to at most"],
    ),
    "budget-beyond-the-train-split": (
        {"budget": "100000"},
        ["--budget 100000 is more than the", "train rows", "lower --budget to at most {n_train}"],
    ),
    "k-beyond-the-train-split": ({"k": "10000000"}, ["--k 10000000", "lower --k to at most"]),
    "k-of-2-to-the-40": ({"k": "1099511627776"}, ["--k 1099511627776", "lower --k to at most"]),
    "index-with-no-shards": ({"index": "{index-no-shards}"}, ["lists no shards", "rebuild it with"]),
    "index-with-nan-vectors": ({"index": "{index-nan}"}, ["has NaN or inf at row 7", "rebuild it with"]),
    "index-missing-rows": ({"index": "{index-short}"}, ["its shards hold", "rebuild it with"]),
}


@pytest.mark.parametrize("where", ["absent", "empty folder"])
@pytest.mark.parametrize("name", list(LATE))
def test_every_check_runs_before_the_run_folder_exists(name, where, store, base, n_train, tmp_path, capsys):
    changes, needles = LATE[name]
    positives = Store(store).concept_positives([0])[0]
    ids, is_test = Store(store).read_split()
    negatives = n_train - int(np.isin(positives, ids[~is_test]).sum())
    names = {"n_train": n_train, "negatives+1": negatives + 1}
    for bad in ("index-no-shards", "index-nan", "index-short"):
        names[bad] = _bad_index(base, store, bad)
    out = tmp_path / "run"
    if where == "empty folder":
        out.mkdir()
    args = run_args(store, out, **{k: v.format(**names) for k, v in changes.items()})
    refused(args, capsys, out, *(n.format(**names) for n in needles))


def test_a_k_whose_neighbour_table_does_not_fit_is_refused(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(driver, "available_memory", lambda: 1 << 20)  # 1 MiB free
    out = tmp_path / "run"
    refused(
        run_args(store, out, k="500"),
        capsys,
        out,
        "--k 500 needs about",
        "GiB of memory available",
        "lower --k",
    )


def test_seed_negatives_the_split_can_supply_still_run(store, n_train, tmp_path, capsys):
    """The boundary of the check above: exactly every negative of the train split is allowed."""
    positives = Store(store).concept_positives([0])[0]
    ids, is_test = Store(store).read_split()
    negatives = n_train - int(np.isin(positives, ids[~is_test]).sum())
    args = run_args(
        store,
        tmp_path / "run",
        seed_negatives=str(negatives),
        seed_positives="5",
        budget=str(negatives + 5),
        strategies="maxent",
        modes="seals",
    )
    code, err = cli(args, capsys)
    assert code == 0, err


@pytest.mark.parametrize("where", ["absent", "empty folder"])
def test_a_failure_before_the_first_checkpoint_leaves_nothing(where, store, tmp_path, capsys, monkeypatch):
    """A check that could only fail inside round 0 (here a fit refusing its input) leaves the output path
    as it was: no folder, no .lock, no config.json, so the corrected command just runs."""

    def refuse(self):
        raise ConfigError("the fit refused (test)")

    out = tmp_path / "run"
    if where == "empty folder":
        out.mkdir()
    monkeypatch.setattr(Run, "_fit", refuse)
    refused(run_args(store, out), capsys, out, "the fit refused (test)", one_line=False)
    monkeypatch.undo()
    code, err = cli(run_args(store, out), capsys)
    assert code == 0, err


# ---------------------------------------------------------------------------------------------- 2. any kill
@pytest.mark.kills
def test_the_kills_left_what_they_should(kills):
    def names(p: Path) -> list[str]:
        return sorted(str(q.relative_to(p)) for q in p.rglob("*") if not q.name.startswith(".state.npz."))

    assert names(kills["lock:0"]) == [".lock"]
    assert names(kills["config:0"]) == [".lock", "config.json"]
    assert names(kills["outputs:0"]) == [".lock", "config.json", "metrics.parquet"]
    assert names(kills["checkpoint:0"]) == [
        ".lock",
        "checkpoint",
        "config.json",
        "metrics.parquet",
        "selections.parquet",
    ]
    assert list((kills["checkpoint:0"] / "checkpoint").glob(".state.npz.*.tmp")), "the kill was mid-write"


@pytest.mark.parametrize("resume", [True, False], ids=["--resume", "plain rerun"])
@pytest.mark.parametrize("point", ["lock:0", "config:0", "outputs:0", "checkpoint:0"])
@pytest.mark.kills
def test_a_run_killed_before_its_first_checkpoint_starts_over(
    point, resume, kills, store, reference, copy_of, capsys
):
    out = copy_of(kills[point])
    code, err = cli(run_args(store, out, *(["--resume"] if resume else [])), capsys)
    assert code == 0, err
    assert "starting over" in err, err
    assert_same_results(reference, out)
    assert ckpt_round(out) == N_ROUNDS
    assert not list(out.rglob(".*.tmp")), "the restart removed the killed write's temporaries"


@pytest.mark.kills
def test_a_killed_start_of_other_settings_is_not_taken_over(kills, store, copy_of, capsys):
    out = copy_of(kills["config:0"])
    for extra in ([], ["--resume"]):
        refused(run_args(store, out, *extra, budget="175"), capsys, out, "budget changed", "pick a new --out")


def test_a_folder_with_files_of_its_own_is_not_taken_for_a_killed_start(kills, store, copy_of, capsys):
    out = copy_of(kills["config:0"])
    (out / "notes.txt").write_text("mine\n")
    refused(run_args(store, out), capsys, out, "is not empty", "notes.txt")
    refused(run_args(store, out, "--resume"), capsys, out, "holds no checkpoint", "pick a new --out")
    lone = copy_of(kills["outputs:0"], "lone")
    (lone / "config.json").unlink()  # round 0's outputs without the config.json written before them
    refused(run_args(store, lone), capsys, lone, "is not empty", "metrics.parquet")


def test_resume_on_an_empty_folder_starts_the_run(store, reference, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()  # what a kill between the folder's mkdir and the lock's creation leaves
    code, err = cli(run_args(store, out, "--resume"), capsys)
    assert code == 0, err
    assert_same_results(reference, out)


def test_resume_with_config_json_and_lock_deleted(partial, store, reference, copy_of, capsys):
    """The checkpoint records the settings: --resume checks them against the command and rebuilds
    config.json; a plain rerun is refused (the folder holds a run), and so are other settings."""
    out = copy_of(partial)
    (out / "config.json").unlink()
    (out / ".lock").unlink()
    refused(run_args(store, out), capsys, out, "is not empty", "pass --resume")
    refused(
        run_args(store, out, "--resume", budget="175"), capsys, out, "budget changed", "original settings"
    )
    code, err = cli(run_args(store, out, "--resume"), capsys)
    assert code == 0, err
    assert "config.json was missing" in err and "resuming" in err, err
    assert_same_results(reference, out)
    saved = json.loads((out / "config.json").read_text())
    assert saved == json.loads((reference / "config.json").read_text()) | {"extra": saved["extra"]}


# ---------------------------------------------------------------------------------------------- 3. the store
@pytest.mark.parametrize("spelling", ["absolute", "relative", "dot-dot", "symlink", "copy"])
def test_the_store_is_known_by_its_fingerprint_not_its_path(
    spelling, partial, store, reference, copy_of, tmp_path, capsys, monkeypatch
):
    out = copy_of(partial)
    monkeypatch.chdir(store.parent)
    given = {
        "absolute": str(store.resolve()),
        "relative": store.name,
        "dot-dot": f"./{store.name}/../{store.name}",
        "symlink": str(tmp_path / "link"),
        "copy": str(tmp_path / "copy"),
    }[spelling]
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(store.resolve())
    if spelling == "copy":
        shutil.copytree(store, tmp_path / "copy")
    code, err = cli(run_args(given, out, "--resume"), capsys)
    assert code == 0, err
    assert "resuming" in err
    assert_same_results(reference, out)


def test_another_store_is_still_refused(partial, copy_of, tmp_path, capsys):
    other = make_synthetic_store(
        tmp_path / "other", n=1500, dim=DIM, concepts=2, prevalence=(0.01, 0.03), seed=6
    )
    out = copy_of(partial)
    refused(run_args(other.path, out, "--resume"), capsys, out, f"has fingerprint {other.fingerprint}")


# ---------------------------------------------------------------------------------------------- 4. corruption
def _rewrite(path: Path, change) -> None:
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    change(a)
    with open(path, "wb") as f:
        np.savez(f, **a)


CORRUPT = {
    "missing-key": (lambda a: a.pop("u1_pool"), "lacks u1_pool"),
    "missing-ref-of-an-id-unit": (lambda a: a.pop("u2_ref"), "lacks u2_ref"),
    "W-wrong-shape": (
        lambda a: a.update(W=np.zeros((N_UNITS, DIM + 1))),
        "W has shape (4, 9), expected (4, 8)",
    ),
    "b-wrong-shape": (lambda a: a.update(b=np.zeros((2, 2))), "b has shape (2, 2)"),
    "W-nan": (lambda a: a["W"].__setitem__((0, 0), np.nan), "hold NaN or inf"),
    "labels-wrong-dtype": (
        lambda a: a.update(u0_labels=a["u0_labels"].astype(np.float64)),
        "u0_labels has dtype",
    ),
    "labeled-wrong-length": (lambda a: a.update(u0_labeled=a["u0_labeled"][:-1]), "u0_labels has shape"),
    "round-beyond-the-config": (
        lambda a: a.update(round=np.array(N_ROUNDS + 1)),
        "round 3, outside the 0..2",
    ),
    "round-negative": (lambda a: a.update(round=np.array(-4)), "round -4"),
    "round-not-a-scalar": (lambda a: a.update(round=np.array([1, 2])), "round has shape (2,)"),
    "metrics-count": (
        lambda a: a.update(metrics_json=np.frombuffer(b"[]", np.uint8)),
        "metrics_json holds 0 rows, expected 12",
    ),
    "metrics-not-json": (
        lambda a: a.update(metrics_json=np.frombuffer(b"\xff{", np.uint8)),
        "metrics_json is unreadable",
    ),
    "config-not-json": (
        lambda a: a.update(config_json=np.frombuffer(b"{oops", np.uint8)),
        "config_json is unreadable",
    ),
    "selection-of-no-unit": (lambda a: a["sel_unit"].__setitem__(0, 99), "sel_unit holds units outside 0..3"),
    "selections-short": (lambda a: a.update(sel_id=a["sel_id"][:-3]), "sel_id has shape"),
}


@pytest.mark.parametrize("name", [*CORRUPT, "truncated", "not-an-npz", "a-folder"])
def test_a_corrupt_checkpoint_is_refused_in_one_line(name, reference, store, copy_of, capsys):
    out = copy_of(reference)  # a finished run: none of these may be reported as "already finished"
    ck = out / CHECKPOINT
    if name == "truncated":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
        needle = "is unreadable"
    elif name == "not-an-npz":
        with open(ck, "wb") as f:
            np.save(f, np.arange(5))
        needle = "is unreadable"
    elif name == "a-folder":
        ck.unlink()
        ck.mkdir()
        needle = "is unreadable"
    else:
        change, needle = CORRUPT[name]
        _rewrite(ck, change)
    err = refused(run_args(store, out, "--resume"), capsys, out, str(ck), needle, f"delete {out}")
    assert "already finished" not in err


def test_a_checkpoint_beyond_its_config_is_not_a_finished_run_from_python(reference, store, copy_of):
    """The same check guards Run.start (the Python entry point), not only the CLI."""
    from seals_gpu.driver import run
    from seals_gpu.rundir import RunDirError

    out = copy_of(reference)
    _rewrite(out / CHECKPOINT, lambda a: a.update(round=np.array(7)))
    before = state(out)
    settings = dict(strategies=("maxent", "id"), modes=("seals", "all"), k=10, batch=25, budget=150, seed=0)
    with pytest.raises(RunDirError, match="outside the 0..2 rounds"):
        run(store, out, concepts=[0], device="cpu", resume=True, **settings)
    assert state(out) == before


def test_a_second_writer_that_passed_the_first_look_prints_only_its_error(
    store, tmp_path, capsys, monkeypatch
):
    """Two runs started at once on one --out: the one that loses the lock (after both passed the early
    look) prints one line, none of the run's announcements, and leaves the holder's folder as it was."""
    out = tmp_path / "run"
    holder = rundir.RunLock(out)
    holder.acquire()
    try:
        monkeypatch.setattr(rundir.RunLock, "check_free", lambda self: None)  # the race: both looked first
        refused(run_args(store, out), capsys, out, "in use by")
    finally:
        holder.release()
