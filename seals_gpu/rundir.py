"""The run folder: one writer at a time (a lock), the checkpoint that commits each round, the Parquet outputs
derived from it, the checks a resume makes, and the checks on ``--out`` made before anything is written."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import zipfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from .atomic import atomic_path, write_parquet
from .config import RunConfig
from .errors import SealsError
from .learner import LogisticModel
from .pool import CandidatePool
from .report import REQUIRED_COLUMNS


class Run(Protocol):
    """What the checkpoint reads and restores of a run (``seals_gpu.driver.Run`` has it): the run folder
    depends on this shape, not on the driver."""

    config: RunConfig
    out: Path
    round: int
    model: LogisticModel | None
    metrics: list[dict[str, Any]]
    selections: list[dict[str, np.ndarray]]
    units: list[Any]
    backend: Any
    device: Any


METRIC_COLUMNS = list(REQUIRED_COLUMNS)  # the metrics.parquet schema; report.py, which reads it, owns it
SELECTION_COLUMNS = ["concept", "strategy", "mode", "round", "id", "label"]
CHECKPOINT = "checkpoint/state.npz"
# Crash tests only: SEALS_GPU_TEST_KILL_AT=POINT:ROUND makes the run SIGKILL itself at that point of that
# round's checkpoint. POINT is "outputs" (after metrics.parquet, before selections.parquet) or "checkpoint"
# (state.npz fully written to its temporary name, not yet renamed into place). See tests/test_reliability.py.
KILL_AT_ENV = "SEALS_GPU_TEST_KILL_AT"


def _test_kill(point: str, round_no: int) -> None:
    if os.environ.get(KILL_AT_ENV) == f"{point}:{round_no}":
        os.kill(os.getpid(), signal.SIGKILL)


class RunDirError(SealsError):
    """The run folder is in use, not empty, or its checkpoint does not match."""


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on RUN_DIR/.lock, released by the kernel when the
    holder dies, so a crashed run never blocks its resume."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(
                f"cannot write the run folder {self.path.parent} ({e.strerror}); "
                "pick an --out you can write to"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise RunDirError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self.fd = fd

    def check_free(self) -> None:
        """Raise naming the holder if another live process holds the lock (nothing is created)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            holder = self.path.read_text().strip() or "another process"
            raise RunDirError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or pick another --out"
            ) from None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def tables(run: Run) -> tuple[pa.Table, pa.Table]:
    """``metrics.parquet`` and ``selections.parquet`` of the run so far."""
    concept_type = (
        pa.int64() if all(isinstance(c, (int, np.integer)) for c in run.config.concepts) else pa.string()
    )
    mcols = {c: [r[c] for r in run.metrics] for c in METRIC_COLUMNS}
    if concept_type == pa.string():
        mcols["concept"] = [str(c) for c in mcols["concept"]]
    metrics = pa.table(mcols)
    metrics = metrics.cast(
        pa.schema(
            [
                pa.field("concept", concept_type),
                pa.field("strategy", pa.string()),
                pa.field("mode", pa.string()),
                *[pa.field(c, pa.int64()) for c in ("round", "n_labeled", "n_positives", "pool_size")],
                *[pa.field(c, pa.float64()) for c in METRIC_COLUMNS[7:]],
            ]
        )
    )
    if run.selections:
        unit = np.concatenate([s["unit"] for s in run.selections])
        rnd = np.concatenate([s["round"] for s in run.selections])
        ids = np.concatenate([s["id"] for s in run.selections])
        lab = np.concatenate([s["label"] for s in run.selections])
    else:
        unit = rnd = ids = np.empty(0, np.int64)
        lab = np.empty(0, bool)
    # per-unit columns, then one vectorised take per column (no Python loop over every selection)
    take = pa.array(unit, type=pa.int64())
    unit_concepts = [u.concept for u in run.units]
    if concept_type == pa.string():
        unit_concepts = [str(c) for c in unit_concepts]
    selections = pa.table(
        {
            "concept": pa.array(unit_concepts, type=concept_type).take(take),
            "strategy": pa.array([u.strategy for u in run.units], type=pa.string()).take(take),
            "mode": pa.array([u.mode for u in run.units], type=pa.string()).take(take),
            "round": pa.array(rnd, type=pa.int64()),
            "id": pa.array(ids, type=pa.int64()),
            "label": pa.array(lab, type=pa.bool_()),
        }
    )
    return metrics, selections


def write_checkpoint(run: Run) -> None:
    """One atomic file holds everything needed to continue; the Parquet outputs are derived from it.

    The Parquet outputs are written first and state.npz last: state.npz is the commit point. A crash in
    between leaves outputs one round ahead of the checkpoint, and the resume redoes that round exactly.
    """
    assert run.model is not None
    metrics, selections = tables(run)
    write_parquet(run.out / "metrics.parquet", metrics)
    _test_kill("outputs", run.round)
    write_parquet(run.out / "selections.parquet", selections)
    arrays: dict[str, np.ndarray] = {
        "config_json": np.frombuffer(json.dumps(run.config.to_json(), sort_keys=True).encode(), np.uint8),
        "round": np.array(run.round),
        "W": run.model.W.double().cpu().numpy(),
        "b": run.model.b.double().cpu().numpy(),
        "metrics_json": np.frombuffer(json.dumps(run.metrics, default=jsonable).encode(), dtype=np.uint8),
    }
    for u in run.units:
        arrays[f"u{u.index}_labeled"] = u.labeled_ids
        arrays[f"u{u.index}_labels"] = u.label_vec
        arrays[f"u{u.index}_rounds"] = (
            np.concatenate([np.full(a.size, r, np.int64) for r, a in enumerate(u.labeled)])
            if u.labeled
            else np.empty(0)
        )
        arrays[f"u{u.index}_pool"] = u.pool.ids
        if u.ref_sum is not None:
            arrays[f"u{u.index}_ref"] = u.ref_sum
    arrays["sel_unit"] = np.concatenate([s["unit"] for s in run.selections])
    arrays["sel_round"] = np.concatenate([s["round"] for s in run.selections])
    arrays["sel_id"] = np.concatenate([s["id"] for s in run.selections])
    arrays["sel_label"] = np.concatenate([s["label"] for s in run.selections])
    with atomic_path(run.out / CHECKPOINT) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        _test_kill("checkpoint", run.round)


def restore(run: Run) -> None:
    """Put the run back in the state of its last checkpoint (refusing one of another config)."""
    path = run.out / CHECKPOINT
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise RunDirError(f"{path} is unreadable ({e}); delete {run.out} and start again") from None
    if "config_json" in arrays:  # the checkpoint carries its own config (store fingerprint included)
        saved = RunConfig.from_json(json.loads(arrays["config_json"].tobytes().decode()))
        diff = saved.same_selections_as(run.config)
        if diff:
            raise RunDirError(
                f"{path} was written by a different configuration ({', '.join(diff)} "
                f"changed) than {run.out}/config.json; delete {run.out} and start again"
            )
    run.round = int(arrays["round"])
    run.metrics = json.loads(arrays["metrics_json"].tobytes().decode())
    dev = run.device.torch_device
    run.model = LogisticModel(
        W=torch.from_numpy(arrays["W"]).float().to(dev), b=torch.from_numpy(arrays["b"]).float().to(dev)
    )
    for u in run.units:
        ids = arrays[f"u{u.index}_labeled"].astype(np.int64)
        labels = arrays[f"u{u.index}_labels"].astype(bool)
        rounds = arrays[f"u{u.index}_rounds"].astype(np.int64)
        u.labeled = [ids[rounds == r] for r in range(run.round + 1) if (rounds == r).any()]
        u.labels = [labels[rounds == r] for r in range(run.round + 1) if (rounds == r).any()]
        u.X = run.backend.vectors(ids) if ids.size else None
        u.pool = CandidatePool(arrays[f"u{u.index}_pool"].astype(np.int64))
        if f"u{u.index}_ref" in arrays:
            u.ref_sum = arrays[f"u{u.index}_ref"]
    run.selections = [
        {
            "unit": arrays["sel_unit"].astype(np.int64),
            "round": arrays["sel_round"].astype(np.int64),
            "id": arrays["sel_id"].astype(np.int64),
            "label": arrays["sel_label"].astype(bool),
        }
    ]
    # the metrics rows stored concepts as JSON: map them back to the configured keys
    keymap = {json.dumps(jsonable(c)): c for c in run.config.concepts}
    for r in run.metrics:
        r["concept"] = keymap.get(json.dumps(r["concept"]), r["concept"])


def check_resume(out: Path, cfg: RunConfig) -> None:
    """--resume must use the settings (and the store) the run started with, and find a readable checkpoint.
    Reads only: a refused resume changes nothing."""
    path = out / "config.json"
    try:
        old = RunConfig.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, SealsError) as e:
        raise RunDirError(f"{path} is unreadable ({e}); delete {out} and start again") from None
    diff = old.same_selections_as(cfg)
    if "store_fingerprint" in diff:
        raise RunDirError(
            f"--resume: store {cfg.store} has fingerprint {cfg.store_fingerprint}, but the run in {out} "
            f"started on {old.store} with {old.store_fingerprint}; resume with the original store or pick a "
            "new --out"
        )
    if diff:
        raise RunDirError(
            f"--resume with a different configuration ({', '.join(diff)} changed) than the run "
            f"in {out}; rerun with the original settings or pick a new --out"
        )
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        try:
            with np.load(ckpt, allow_pickle=False) as z:
                z["round"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise RunDirError(f"{ckpt} is unreadable ({e}); delete {out} and start again") from None


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files left by atomic writes that a crash stopped before their rename."""
    for folder in (out, out / "checkpoint"):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                if p.is_file():
                    p.unlink(missing_ok=True)


def jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o


def check_out_dir(out: Path) -> None:
    """Refuse an --out that is a file or that cannot be created, before anything is written."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; pick another --out")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(
            f"cannot create --out {out}: {parent} is not a folder you can write to; pick another --out"
        )
