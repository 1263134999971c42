"""Atomic outputs: write to a temporary name in the same folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SealsError


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`SealsError` unless ``path`` could be created: its nearest existing ancestor must be a
    folder this process may write to. Cheap; call it before long work whose output goes to ``path``."""
    path = Path(path)
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise SealsError(
            f"cannot write {path} ({anc} is not a folder); pick an output path in a folder you can write to"
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise SealsError(
            f"cannot write {path} ({anc} is not writable); pick an output path in a folder you can write to"
        )


# ---------------------------------------------------------------------------------------------- temporaries
# Every temporary this module makes is named ".NAME.HOST.PID.XXXXXXXX.tmp" (the output NAME, this machine, this
# process, mkstemp's random part) and sits beside NAME; a folder being replaced is parked as
# ".NAME.HOST.PID.old" for an instant. A process killed mid-write (SIGKILL, power cut) leaves them behind:
# the next write of the same NAME removes them, but only those of this machine whose process is gone.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_LEFTOVER = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.(?P<what>[a-z0-9_]{8}\.tmp|old)$"
)


def _tmp_prefix(name: str) -> str:
    return f".{name}.{_HOST}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def leftovers(folder: str | os.PathLike[str], names: Collection[str] | None = None) -> list[Path]:
    """Temporaries in ``folder`` of outputs named ``names`` (any name when None) that a process of this
    machine, now dead, was writing. Nothing else: not a live write's, not another machine's, not a file
    whose name merely looks alike."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for e in entries:
        m = _LEFTOVER.match(e.name)
        if m is None or m["host"] != _HOST or (names is not None and m["name"] not in names):
            continue
        if not _alive(int(m["pid"])):
            out.append(folder / e.name)
    return out


def clean_leftovers(folder: str | os.PathLike[str], names: Collection[str] | None = None) -> list[Path]:
    """Remove :func:`leftovers`; a parked ``.old`` folder whose output is missing (the writer died between
    the two renames of a replace) is put back instead. Best effort; returns what was removed or restored."""
    done = []
    for p in leftovers(folder, names):
        m = _LEFTOVER.match(p.name)
        assert m is not None
        target = p.parent / m["name"]
        try:
            if m["what"] == "old" and not os.path.lexists(target):
                os.replace(p, target)
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        done.append(p)
    return done


# ---------------------------------------------------------------------------------------------- output checks
def real(path: str | os.PathLike[str]) -> Path:
    """``path`` with every symlink and ``..`` resolved (whether or not it exists)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def overlap(out: str | os.PathLike[str], other: str | os.PathLike[str]) -> str | None:
    """How ``out`` and ``other`` share files once symlinks and ``..`` are resolved: "is", "is inside",
    "contains", or None when they are apart."""
    o, i = real(out), real(other)
    if o == i:
        return "is"
    if i in o.parents:
        return "is inside"
    if o in i.parents:
        return "contains"
    return None


def check_not_input(
    out: str | os.PathLike[str],
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    *,
    label: str,
    error: type[SealsError] = SealsError,
) -> None:
    """Refuse an output that is, is inside, or contains one of the command's inputs (``(what, path)``
    pairs; None paths, and inputs that do not exist, which the command refuses itself, are skipped),
    through symlinks and ``..`` too. Reads only."""
    for what, path in inputs:
        if path is None or not os.path.exists(path):
            continue
        how = overlap(out, path)
        if how is not None:
            same = f" ({real(path)})" if str(real(path)) != str(path) else ""
            raise error(
                f"{label} {out} {how} the {what} {path}{same}, which this command reads; "
                "pick an output path elsewhere"
            )


def check_output_dir(
    path: str | os.PathLike[str],
    *,
    kind: str,
    problem: Callable[[Path], str | None],
    overwrite: bool,
    label: str = "output",
    error: type[SealsError] = SealsError,
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
    force_flag: str = "--force",
) -> None:
    """Before anything is written: may a folder of ``kind`` be written at ``path``?

    Refused (one line, nothing changed): ``path`` is or overlaps an input, is a symlink, is a file, or
    exists non-empty and either ``overwrite`` is off or it is not recognisably a ``kind`` (``problem(path)``
    says why not, None when it is one). Only an existing ``kind`` is ever replaced. Leftover temporaries of
    an earlier write of ``path`` that was killed are removed first (they are this module's own).
    """
    path = Path(path)
    check_not_input(path, inputs, label=label, error=error)
    ab = Path(os.path.abspath(path))
    if ab.parent.is_dir():
        clean_leftovers(ab.parent, [ab.name])
    if path.is_symlink():
        raise error(
            f"{label} {path} is a symbolic link (to {os.readlink(path)}); pass the real folder, or another path"
        )
    if path.exists() and not path.is_dir():
        raise error(f"{label} {path} is a file, not a folder; pick another path for the {kind}")
    if not path.is_dir():
        return
    try:
        empty = not any(path.iterdir())
        why = None if empty else problem(path)
    except OSError as e:
        raise error(f"{label} {path} cannot be read ({e.strerror or e}); pick another path") from None
    if empty:
        return
    if why is None and real(path) in (Path("/"), real(Path.home())):
        why = "it is / or your home folder"
    a = "an" if kind[:1] in "aeiou" else "a"
    if why is not None:
        raise error(
            f"{label} {path} already exists and is not {a} {kind} ({why}), so {force_flag} will not replace "
            "it either; pick another path, or remove it yourself"
        )
    if not overwrite:
        raise error(
            f"{label} {path} already exists ({a} {kind}); pass {force_flag} to replace it or pick a new path"
        )


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[None]:
    """An output whose folder cannot be created or written is a user error (one line), not a traceback."""
    try:
        yield
    except OSError as e:
        check_writable(path)  # names the ancestor that is not a writable folder, when that is the cause
        raise SealsError(
            f"cannot write {path} ({e.strerror or e}); pick an output path in a folder you can write to"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files owner-only; give the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(os.path.abspath(path))  # "OUT/.." or "." name their real folder, not "" or ".."
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(path.parent, [path.name])  # what a killed earlier write of this output left
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f"{_tmp_prefix(path.name)}old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike[str], table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
