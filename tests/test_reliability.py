"""Reliability of `seals-gpu run`: SIGKILL at any moment then `--resume` gives exactly the uninterrupted
results; the checkpoint holds everything; resumes refuse another config or store; one writer per RUN_DIR.

Real subprocesses (`python -m seals_gpu run ...`) are killed with SIGKILL: at seeded random moments after
they take the run lock (so during restore, fit, search, scoring or a write), and at two fixed points through
the driver's test hook (SEALS_GPU_TEST_KILL_AT): inside a checkpoint write (state.npz written to its
temporary name, not renamed) and between metrics.parquet and selections.parquet of the final round.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from seals_gpu.checkpoint import CHECKPOINT, KILL_AT_ENV
from seals_gpu.cli import main
from seals_gpu.store import Store
from seals_gpu.synth import make_synthetic_store

BUDGET, BATCH = 420, 40
RUN_ARGS = (
    "--concepts 0,1 --strategies maxent,random --modes seals,all --k 20 "
    f"--batch {BATCH} --budget {BUDGET} --seed 0 --device cpu --quiet"
).split()
N_ROUNDS = 8  # (420 - a seed set of 100) / 40
N_UNITS = 8  # 2 concepts x 2 strategies x 2 modes
KILLED = -signal.SIGKILL


# ---------------------------------------------------------------------------------------------- helpers
def _cmd(store: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "seals_gpu", "run", str(store), "--out", str(out), *RUN_ARGS, *extra]


def _start(store: Path, out: Path, *extra: str, kill_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    return subprocess.Popen(
        _cmd(store, out, *extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(p: subprocess.Popen) -> tuple[int, str]:
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def _wait_for_lock(out: Path, p: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Wait until ``p`` holds RUN_DIR's lock (it is about to restore and run rounds); False if it exited."""
    want = f"pid {p.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        try:
            if (out / ".lock").read_text().strip() == want:
                return True
        except OSError:
            pass
        time.sleep(0.005)
    p.kill()
    raise AssertionError(f"pid {p.pid} did not take the lock of {out} within {timeout} s")


def _wait_for_round(out: Path, p: subprocess.Popen, target: int, timeout: float = 120.0) -> bool:
    """Wait until the checkpoint of round ``target`` is committed; False if ``p`` exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        try:
            if _checkpoint_round(out) >= target:
                return True
        except (OSError, ValueError, KeyError):  # being replaced right now
            pass
        time.sleep(0.01)
    p.kill()
    raise AssertionError(f"round {target} of {out} was not committed within {timeout} s")


def _checkpoint_round(out: Path) -> int:
    path = out / CHECKPOINT
    if not path.exists():
        return -1
    with np.load(path) as z:
        return int(z["round"])


def _max_round(path: Path) -> int:
    return max(pq.read_table(path, columns=["round"]).column(0).to_pylist()) if path.exists() else -1


def _temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*.tmp"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock file aside: it names whoever held the folder last)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def assert_same_results(a: Path, b: Path) -> None:
    sa, sb = pq.read_table(a / "selections.parquet"), pq.read_table(b / "selections.parquet")
    assert sa.equals(sb), "selections differ from the uninterrupted run"
    ma, mb = pq.read_table(a / "metrics.parquet"), pq.read_table(b / "metrics.parquet")
    drop = [c for c in ma.column_names if c.startswith("seconds_")]
    assert ma.drop(drop).equals(mb.drop(drop)), "metrics (seconds aside) differ from the uninterrupted run"


def _cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_synthetic_store(
        tmp_path_factory.mktemp("reliability") / "store",
        n=8000,
        dim=16,
        concepts=2,
        prevalence=(0.01, 0.02),
        seed=3,
    ).path


@pytest.fixture(scope="module")
def story(store, tmp_path_factory) -> dict:
    """An uninterrupted reference run and, alongside it, one run killed 5 times and resumed to the end."""
    base = tmp_path_factory.mktemp("story")
    ref_dir, out = base / "reference", base / "killed"
    ref = _start(store, ref_dir)
    notes: dict = {"random": []}

    # 1. a fresh run killed inside the checkpoint write of round 2
    code, err = _finish(_start(store, out, kill_at="checkpoint:2"))
    assert code == KILLED, err
    notes["inside_checkpoint"] = {
        "checkpoint_round": _checkpoint_round(out),
        "temporaries": _temporaries(out),
        "metrics_round": _max_round(out / "metrics.parquet"),
    }

    # 2. resumed, then killed at a seeded random moment of the round after the next commit (select, label,
    #    search, fit, record or a write): the delay is a random fraction of the time the process took to get
    #    from taking the lock to that commit, so it scales with the machine's speed and load
    rng = np.random.default_rng(20240611)
    for _ in range(3):
        target = _checkpoint_round(out) + 1
        if target > N_ROUNDS - 2:  # leave the final round for the kill below
            break
        p = _start(store, out, "--resume")
        fraction = float(rng.uniform(0.0, 1.0))
        if _wait_for_lock(out, p):
            t0 = time.monotonic()
            if _wait_for_round(out, p, target):
                time.sleep(fraction * (time.monotonic() - t0))
        p.send_signal(signal.SIGKILL)
        code, err = _finish(p)
        notes["random"].append(
            {"fraction": fraction, "code": code, "rounds": (target, _checkpoint_round(out))}
        )
        assert code in (KILLED, 0), err
        if code == 0:  # finished before the kill (a very slow start and fast rounds): nothing left to kill
            break

    # 3. killed between metrics.parquet and selections.parquet of the final round
    if _checkpoint_round(out) < N_ROUNDS:
        # a random kill above may have landed after an uncommitted round's selections.parquet (a round ahead
        # of the checkpoint); the resume below rewrites it at each commit up to round N_ROUNDS - 1
        selections_before = _max_round(out / "selections.parquet")
        code, err = _finish(_start(store, out, "--resume", kill_at=f"outputs:{N_ROUNDS}"))
        assert code == KILLED, err
        notes["between_outputs"] = {
            "checkpoint_round": _checkpoint_round(out),
            "metrics_round": _max_round(out / "metrics.parquet"),
            "selections_round": _max_round(out / "selections.parquet"),
            "selections_before": selections_before,
        }

    # 4. resume to the end
    code, err = _finish(_start(store, out, "--resume"))
    assert code == 0, err
    notes["final_stderr"] = err
    code, err = _finish(ref)
    assert code == 0, err
    return {"reference": ref_dir, "out": out, "notes": notes}


# ---------------------------------------------------------------------------------------------- crash + resume
@pytest.mark.kills
def test_sigkill_at_any_moment_then_resume_gives_identical_results(story):
    notes = story["notes"]
    assert sum(k["code"] == KILLED for k in notes["random"]) >= 2, notes["random"]
    assert "resuming" in notes["final_stderr"] or "already finished" in notes["final_stderr"]
    assert_same_results(story["reference"], story["out"])
    assert _temporaries(story["out"]) == [], "a resume leaves no temporary file behind"


def test_a_kill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(story):
    n = story["notes"]["inside_checkpoint"]
    assert n["checkpoint_round"] == 1, "state.npz of round 2 never replaced round 1's"
    assert any(t.startswith(".state.npz.") for t in n["temporaries"]), n["temporaries"]
    assert n["metrics_round"] == 2, "outputs are written before the checkpoint (the commit point)"


def test_a_kill_between_the_final_outputs_is_repaired_by_resume(story):
    n = story["notes"].get("between_outputs")
    if n is None:
        pytest.skip("the random kills already reached the final round")
    assert n["checkpoint_round"] == N_ROUNDS - 1 and n["metrics_round"] == N_ROUNDS, n
    # the kill came after metrics.parquet and before selections.parquet: the latter holds the last committed
    # round, or the final round if an earlier kill had already written it (a round ahead of the checkpoint)
    assert n["selections_round"] == max(n["selections_before"], N_ROUNDS - 1), n
    # ... and the final resume redid round N_ROUNDS: checked by the identical-results test


def test_the_checkpoint_holds_every_units_state_and_the_config(story, store):
    out = story["out"]
    with np.load(out / CHECKPOINT) as z:
        a = {k: z[k] for k in z.files}
    assert int(a["round"]) == N_ROUNDS
    assert a["W"].shape == (N_UNITS, 16) and a["b"].shape == (N_UNITS,) and np.isfinite(a["W"]).all()
    cfg = json.loads(a["config_json"].tobytes().decode())
    assert cfg["store_fingerprint"] == Store(store).fingerprint
    assert cfg["budget"] == BUDGET and cfg["batch"] == BATCH and cfg["k"] == 20 and cfg["concepts"] == [0, 1]
    assert cfg == json.loads((out / "config.json").read_text()) | {"extra": cfg["extra"]}
    sel = pq.read_table(out / "selections.parquet").to_pydict()
    units = [(c, s, m) for c in (0, 1) for s in ("maxent", "random") for m in ("seals", "all")]
    for i, (c, s, m) in enumerate(units):
        labeled = a[f"u{i}_labeled"]
        assert labeled.size == BUDGET and np.unique(labeled).size == BUDGET
        assert a[f"u{i}_labels"].dtype == bool and a[f"u{i}_labels"].size == BUDGET
        rows = [
            j for j, key in enumerate(zip(sel["concept"], sel["strategy"], sel["mode"])) if key == (c, s, m)
        ]
        assert labeled.tolist() == [sel["id"][j] for j in rows], f"unit {i}: labeled set != its selections"
        assert a[f"u{i}_labels"].tolist() == [sel["label"][j] for j in rows]
        pool = a[f"u{i}_pool"]
        if m == "seals":
            assert pool.size > 0 and not np.isin(pool, labeled).any()
        else:
            assert pool.size == 0  # All scores the whole train split: no pool to keep


def test_resume_of_a_finished_run_says_so_and_changes_nothing(story, store, capsys):
    out = story["out"]
    before = snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    code, _, err = _cli(["run", store, "--out", out, *RUN_ARGS, "--resume"], capsys)
    assert code == 0, err
    assert "already finished" in err
    assert snapshot(out) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


@pytest.mark.parametrize(
    "change, message",
    [
        (["--budget", "460"], "budget changed"),
        (["--k", "30"], "k changed"),
        (["--strategies", "maxent,mlp"], "strategies changed"),
    ],
)
def test_resume_with_another_config_is_refused_and_changes_nothing(story, store, capsys, change, message):
    out = story["out"]
    before = snapshot(out)
    args = list(RUN_ARGS)
    i = args.index(change[0])
    args[i + 1] = change[1]
    code, _, err = _cli(["run", store, "--out", out, *args, "--resume"], capsys)
    assert code == 2 and message in err and "rerun with the original settings" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(out) == before


def test_resume_on_another_store_is_refused(story, tmp_path, capsys):
    other = make_synthetic_store(
        tmp_path / "other", n=3000, dim=16, concepts=2, prevalence=(0.01, 0.02), seed=4
    )
    out = story["out"]
    before = snapshot(out)
    code, _, err = _cli(["run", other.path, "--out", out, *RUN_ARGS, "--resume"], capsys)
    assert code == 2, err
    assert f"has fingerprint {other.fingerprint}" in err and "resume with the original store" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------- one writer
@pytest.mark.kills
def test_one_writer_per_run_dir_and_a_dead_holder_does_not_block(story, store, tmp_path, capsys):
    out = tmp_path / "run"
    holder = _start(store, out)
    try:
        assert _wait_for_lock(out, holder), "the run ended before it took the lock"
        deadline = time.monotonic() + 120
        while _checkpoint_round(out) < 0 and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        holder.send_signal(signal.SIGSTOP)  # frozen while holding the lock
        before = snapshot(out)
        for extra in ([], ["--resume"]):
            code, _, err = _cli(["run", store, "--out", out, *RUN_ARGS, *extra], capsys)
            assert code == 2, err
            assert f"is in use by pid {holder.pid}" in err and "pick another --out" in err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert snapshot(out) == before, "a refused writer touched the run folder"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert (out / ".lock").read_text().strip() == f"pid {holder.pid}", "the dead holder's name is still there"
    code, err = _finish(_start(store, out, "--resume"))
    assert code == 0, err  # ... but the kernel released its lock with it
    assert_same_results(story["reference"], out)


def test_a_run_killed_before_it_wrote_anything_resumes_from_the_start(store, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 999999999")  # all a run leaves if killed right after taking the lock
    code, _, err = _cli(["run", store, "--out", out, *RUN_ARGS, "--resume"], capsys)
    assert code == 0, err
    assert pq.read_table(out / "selections.parquet").num_rows == N_UNITS * BUDGET
    assert _checkpoint_round(out) == N_ROUNDS


@pytest.mark.parametrize("seed", range(8))
def test_pool_gap_coding_round_trips_any_int64_ids(seed: int) -> None:
    """Checkpointed pools are gap-coded in the smallest dtype; every sorted int64 id set comes back exact."""
    from seals_gpu.checkpoint import decode_sorted_ids, encode_sorted_ids

    rng = np.random.default_rng(seed)
    cases = [
        np.empty(0, np.int64),
        np.array([-(2**63)], np.int64),
        np.array([-(2**63), 2**63 - 1], np.int64),  # the widest gap there is
        np.unique(rng.integers(-(2**63), 2**63 - 1, size=500, dtype=np.int64)),
        np.unique(rng.integers(0, 3000, size=1000)).astype(np.int64) - 1500,  # dense: one-byte gaps
        np.unique(rng.integers(0, 10**6, size=1000)).astype(np.int64) * 1000,
    ]
    for ids in cases:
        first, gaps = encode_sorted_ids(ids)
        assert first.size == (2 if ids.size else 0) and (not ids.size or first[1] == ids.size)
        back = decode_sorted_ids(first, gaps)
        assert back.dtype == np.int64 and np.array_equal(back, ids)
    assert encode_sorted_ids(cases[4])[1].dtype == np.uint8
    assert encode_sorted_ids(cases[2])[1].dtype == np.uint64
