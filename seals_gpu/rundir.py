"""The run folder: one writer at a time (a lock), what starting a run in it does (start, start over after a
kill, resume from its checkpoint, or refuse), and the checks on ``--out`` made before anything is written.
The checkpoint itself is :mod:`seals_gpu.checkpoint`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import check_not_input
from .checkpoint import CHECKPOINT, binding_diff, check_checkpoint, load_npz, one_line, recorded_config
from .config import RunConfig
from .errors import RunDirError, SealsError


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


def _refuse_other_settings(old: RunConfig, cfg: RunConfig, out: Path, *, resume: bool) -> None:
    """Raise unless ``cfg`` is the run ``old`` describes (see :func:`binding_diff`)."""
    diff = binding_diff(old, cfg)
    if not diff:
        return
    if not resume:
        raise RunDirError(
            f"{out} holds the start of a run with other settings ({', '.join(diff)} changed), stopped before "
            "its first checkpoint; rerun with its settings or pick a new --out"
        )
    if "store_fingerprint" in diff:
        raise RunDirError(
            f"--resume: store {cfg.store} has fingerprint {cfg.store_fingerprint}, but the run in {out} "
            f"started on {old.store} with {old.store_fingerprint}; resume with the original store or pick a "
            "new --out"
        )
    raise RunDirError(
        f"--resume with a different configuration ({', '.join(diff)} changed) than the run "
        f"in {out}; rerun with the original settings or pick a new --out"
    )


def _read_config(path: Path, out: Path) -> RunConfig:
    try:
        return RunConfig.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, SealsError) as e:
        raise RunDirError(f"{path} is unreadable ({one_line(e)}); delete {out} and start again") from None


# What a run writes before its first checkpoint commits: a folder holding only these (and no checkpoint) is
# this run's own start, killed early, when its config.json is this run's (or it has none yet).
START_FILES = (".lock", "config.json", "metrics.parquet", "selections.parquet")
OWN_TEMPORARY = re.compile(
    r"^\.(config\.json|metrics\.parquet|selections\.parquet|timings\.json|state\.npz)\..+\.tmp$"
)
# --oracle queue: RUN/queue/ holds the run's queue files (and their temporaries); RUN/labels/ people's answers
QUEUE_FILE = re.compile(r"^round-[0-9]{4,}\.(parquet|labelstudio\.json)$")
QUEUE_TEMPORARY = re.compile(r"^\.round-[0-9]{4,}\.(parquet|labelstudio\.json)\..+\.tmp$")
ANSWER_FILE = re.compile(r"^round-[0-9]{4,}\.(csv|parquet|json)$")


@dataclass(frozen=True)
class RunDirPlan:
    """What starting a run in its folder does (see :func:`inspect_run_dir`)."""

    action: str  # "start" (absent or empty), "restart" (this run's start, killed early), "resume"
    note: str = ""  # one line for the run log ("" when there is nothing to say)
    arrays: dict[str, np.ndarray] | None = None  # "resume": the checkpoint, checked
    write_config: bool = True  # (re)write config.json: always but on a resume that has one


def _own_start_entry(out: Path, name: str) -> bool:
    p = out / name
    if p.is_symlink():
        return False
    if name in START_FILES or OWN_TEMPORARY.match(name):
        return p.is_file()
    if name == "checkpoint" and p.is_dir():
        return all(OWN_TEMPORARY.match(q.name) and q.is_file() and not q.is_symlink() for q in p.iterdir())
    if name in ("queue", "labels") and p.is_dir():  # a queue run killed between its queue and its checkpoint
        own = (QUEUE_FILE, QUEUE_TEMPORARY) if name == "queue" else (ANSWER_FILE,)
        return all(
            any(r.match(q.name) for r in own) and q.is_file() and not q.is_symlink() for q in p.iterdir()
        )
    return False


def inspect_run_dir(out: Path, cfg: RunConfig, *, resume: bool, dim: int | None = None) -> RunDirPlan:
    """Before anything is written (reads only): what starting ``cfg`` in ``out`` does, or a
    :class:`RunDirError` (one line: what is wrong and the fix).

    - absent or empty: a new run ("start"; ``--resume`` on an absent folder is refused: nothing to resume);
    - a checkpoint: "resume" with ``--resume`` (refused without): its settings must be ``cfg``'s (the store
      by fingerprint), the checkpoint whole (:func:`check_checkpoint`); a config.json that is gone is
      rebuilt, the checkpoint recording the settings;
    - no checkpoint and nothing but what a run writes before its first one (.lock, a config.json of these
      settings, round 0's outputs, temporaries): a start killed early, begun again ("restart") with or
      without ``--resume``;
    - anything else is not this run's: refused, and left as it is.
    """
    if not out.exists():
        if resume:
            raise RunDirError(f"--resume: {out} holds no run (no config.json); drop --resume to start one")
        return RunDirPlan("start")
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise RunDirError(f"--out {out} cannot be read ({e.strerror or e}); pick another --out") from None
    if not names:
        return RunDirPlan("start", f"{out} is empty: nothing to resume, starting the run" if resume else "")
    config_path, ckpt = out / "config.json", out / CHECKPOINT
    saved = _read_config(config_path, out) if config_path.is_file() else None
    if ckpt.exists():
        if not resume:
            raise RunDirError(f"{out} is not empty; pass --resume to continue that run or pick a new --out")
        if saved is not None:
            _refuse_other_settings(saved, cfg, out, resume=True)
        arrays = load_npz(ckpt, out)
        recorded = recorded_config(arrays, ckpt, out)
        if saved is None:
            if recorded is None:
                raise RunDirError(
                    f"{config_path} is missing and {ckpt} does not record the run's settings; put config.json "
                    f"back, or delete {out} and start again"
                )
            _refuse_other_settings(recorded, cfg, out, resume=True)
        elif recorded is not None and binding_diff(recorded, saved):
            raise RunDirError(
                f"{ckpt} was written by a different configuration ({', '.join(binding_diff(recorded, saved))} "
                f"changed) than {config_path}; delete {out} and start again"
            )
        check_checkpoint(arrays, ckpt, cfg, dim)
        note = f"{config_path} was missing: rewritten from {ckpt}'s settings" if saved is None else ""
        return RunDirPlan("resume", note, arrays, write_config=saved is None)
    foreign = [n for n in names if not _own_start_entry(out, n)]
    if saved is None:  # outputs without the config.json written before them are not a start of this run
        foreign += [n for n in names if n in ("metrics.parquet", "selections.parquet")]
    if foreign:
        if not resume:
            raise RunDirError(
                f"{out} is not empty ({foreign[0]} is not a file of this run); pass --resume to continue a run "
                "there or pick a new --out"
            )
        if saved is not None:
            _refuse_other_settings(saved, cfg, out, resume=True)
        raise RunDirError(
            f"--resume: {out} holds no checkpoint to resume, and {foreign[0]} in it is not a file of a run; "
            "pick a new --out"
        )
    if saved is not None:
        _refuse_other_settings(saved, cfg, out, resume=resume)
    return RunDirPlan(
        "restart", f"{out} holds this run's start, stopped before its first checkpoint: starting over"
    )


def run_dir_signature(out: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What :func:`inspect_run_dir` read, cheaply (name, size, mtime, inode of every entry but the lock and of
    the checkpoint): when it is the same after the lock is taken, the inspection still holds."""
    sig = []
    for p in (*(out.iterdir() if out.is_dir() else ()), out / CHECKPOINT):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.name != ".lock":
            sig.append((str(p.relative_to(out)), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(sig))


def undo_start(out: Path, lock: RunLock, *, remove_lock: bool, remove_dir: bool) -> None:
    """A run that fails before its first checkpoint leaves nothing: remove what its start wrote (config.json,
    round 0's outputs, temporaries; the lock file and the folder when this start made them), release the
    lock. Only the run's own files: anything else stays."""
    for name in ("config.json", "metrics.parquet", "selections.parquet"):
        (out / name).unlink(missing_ok=True)
    remove_stale_temporaries(out)
    queue = out / "queue"
    if queue.is_dir() and not queue.is_symlink():  # the seed round's queue files (never people's answers)
        for q in queue.iterdir():
            if QUEUE_FILE.match(q.name) and q.is_file() and not q.is_symlink():
                q.unlink(missing_ok=True)
    for folder in ("checkpoint", "queue"):
        with contextlib.suppress(OSError):
            (out / folder).rmdir()
    if remove_lock:
        (out / ".lock").unlink(missing_ok=True)
    lock.release()
    if remove_dir:
        with contextlib.suppress(OSError):
            out.rmdir()


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files left by atomic writes that a crash stopped before their rename (this run's
    own names only)."""
    for folder, pattern in (
        (out, OWN_TEMPORARY),
        (out / "checkpoint", OWN_TEMPORARY),
        (out / "queue", QUEUE_TEMPORARY),
    ):
        if folder.is_dir() and not folder.is_symlink():
            for p in folder.iterdir():
                if pattern.match(p.name) and p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)


def check_out_dir(out: Path, inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
    """Refuse an --out that is a file or that cannot be created, or that is, holds or lies inside one of the
    run's ``inputs`` (``(what, path)``: the store, --index, --graph; through symlinks and ``..`` too), before
    anything is written."""
    check_not_input(out, inputs, label="--out", error=RunDirError)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; pick another --out")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(
            f"cannot create --out {out}: {parent} is not a folder you can write to; pick another --out"
        )
