"""The checkpoint that commits each round of a run: ``checkpoint/state.npz`` (every unit's labeled set, pool,
model and the config with the store's fingerprint), the Parquet outputs derived from it, and reading it back:
refused in one line when it is unreadable, another configuration's, or not whole."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from .atomic import atomic_path, write_parquet
from .config import RunConfig
from .errors import RunDirError, SealsError
from .learner import LogisticModel
from .pool import CandidatePool
from .probe import PROBE_COLUMNS
from .queue import Pending
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
    pending: Pending | None  # --oracle queue: a round selected and queued, awaiting its answers


METRIC_COLUMNS = list(REQUIRED_COLUMNS)  # the metrics.parquet schema; report.py, which reads it, owns it
SELECTION_COLUMNS = ["concept", "strategy", "mode", "round", "id", "label"]
CHECKPOINT = "checkpoint/state.npz"
# 2: adds pending_round / pending_unit / pending_id / pending_seconds_json (a queue round awaiting answers) and
# allows round -1 (the seed round queued, nothing labeled yet). Version 1 checkpoints (no such keys) are read as
# having nothing pending.
CHECKPOINT_VERSION = 3  # 3: pools gap-coded (encode_sorted_ids); 2: a pending round; 1: neither
# Crash tests only: SEALS_GPU_TEST_KILL_AT=POINT:ROUND makes the run SIGKILL itself at that point of that
# round's checkpoint. POINT is "outputs" (after metrics.parquet, before selections.parquet) or "checkpoint"
# (state.npz fully written to its temporary name, not yet renamed into place); and, for a run's first second,
# "lock:0" (the folder and .lock just made, nothing else) and "config:0" (config.json written, round 0 not
# begun). "queue" (--oracle queue: the round's queue files written, the checkpoint not). See
# tests/test_reliability.py, tests/test_run_safety.py and tests/test_queue.py.
KILL_AT_ENV = "SEALS_GPU_TEST_KILL_AT"


def kill_point(point: str, round_no: int) -> None:
    if os.environ.get(KILL_AT_ENV) == f"{point}:{round_no}":
        os.kill(os.getpid(), signal.SIGKILL)


def tables(run: Run) -> tuple[pa.Table, pa.Table]:
    """``metrics.parquet`` and ``selections.parquet`` of the run so far."""
    concept_type = (
        pa.int64() if all(isinstance(c, (int, np.integer)) for c in run.config.concepts) else pa.string()
    )
    # --probe B > 0 only: the probe estimate's columns, and the selections' probe flag (a run without it
    # writes today's schema, byte for byte)
    probe_cols = list(PROBE_COLUMNS) if run.config.probe else []
    mcols = {c: [r[c] for r in run.metrics] for c in METRIC_COLUMNS + probe_cols}
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
                *[pa.field(c, pa.float64()) for c in METRIC_COLUMNS[7:] + probe_cols],
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
    if run.config.probe:
        parts = [s["probe"] for s in run.selections]
        flag = np.concatenate(parts) if parts else np.empty(0, bool)
        selections = selections.append_column("probe", pa.array(flag, type=pa.bool_()))
    return metrics, selections


def write_checkpoint(run: Run) -> None:
    """One atomic file holds everything needed to continue; the Parquet outputs are derived from it.

    The Parquet outputs are written first and state.npz last: state.npz is the commit point. A crash in
    between leaves outputs one round ahead of the checkpoint, and the resume redoes that round exactly.
    """
    assert run.model is not None or (run.round == -1 and run.pending is not None)
    metrics, selections = tables(run)
    write_parquet(run.out / "metrics.parquet", metrics)
    kill_point("outputs", run.round)
    write_parquet(run.out / "selections.parquet", selections)
    arrays: dict[str, np.ndarray] = {
        "config_json": np.frombuffer(json.dumps(run.config.to_json(), sort_keys=True).encode(), np.uint8),
        "version": np.array(CHECKPOINT_VERSION),
        "round": np.array(run.round),
        # round -1 (the seed round queued): no model yet, zeros stand in (restore leaves the model unset)
        "W": run.model.W.double().cpu().numpy() if run.model else np.zeros((len(run.units), run.backend.dim)),
        "b": run.model.b.double().cpu().numpy() if run.model else np.zeros(len(run.units)),
        "metrics_json": np.frombuffer(json.dumps(run.metrics, default=jsonable).encode(), dtype=np.uint8),
    }
    for u in run.units:
        arrays[f"u{u.index}_labeled"] = u.labeled_ids
        arrays[f"u{u.index}_labels"] = u.label_vec
        arrays[f"u{u.index}_rounds"] = (
            np.concatenate([np.full(a.size, r, small(run.config.n_rounds)) for r, a in enumerate(u.labeled)])
            if u.labeled
            else np.empty(0, np.uint8)
        )
        arrays[f"u{u.index}_pool"], arrays[f"u{u.index}_pool_gaps"] = encode_sorted_ids(u.pool.ids)
        if u.ref_sum is not None:
            arrays[f"u{u.index}_ref"] = u.ref_sum
    n_units, n_rounds = len(run.units), run.config.n_rounds
    for k, dtype in (("unit", small(n_units)), ("round", small(n_rounds)), ("id", np.int64), ("label", bool)):
        parts = [s[k] for s in run.selections]
        arrays[f"sel_{k}"] = np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)
    if run.config.probe:
        parts = [s["probe"] for s in run.selections]
        arrays["sel_probe"] = np.concatenate(parts) if parts else np.empty(0, bool)
    p = run.pending
    arrays["pending_round"] = np.array(-1 if p is None else p.round)
    units = sorted(p.chosen) if p is not None else []
    arrays["pending_unit"] = np.concatenate(
        [np.full(p.chosen[u].size, u, np.int64) for u in units]
        if p is not None and units
        else [np.empty(0, np.int64)]
    )
    arrays["pending_id"] = np.concatenate(
        [p.chosen[u].astype(np.int64) for u in units] if p is not None and units else [np.empty(0, np.int64)]
    )
    if run.config.probe:  # which pending picks are probes, aligned with pending_id
        arrays["pending_probe"] = np.concatenate(
            [p.probe[u] if p.probe is not None else np.zeros(p.chosen[u].size, bool) for u in units]
            if p is not None and units
            else [np.empty(0, bool)]
        )
    seconds = [[s, m, t] for (s, m), t in p.seconds.items()] if p is not None else []
    arrays["pending_seconds_json"] = np.frombuffer(json.dumps(seconds).encode(), np.uint8)
    with atomic_path(run.out / CHECKPOINT) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        kill_point("checkpoint", run.round)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def binding_diff(old: RunConfig, new: RunConfig) -> list[str]:
    """The settings in which ``new`` differs from ``old`` in a way that changes the run. The store counts by
    its fingerprint, not by how its path is spelled (relative or absolute, through ``..`` or a symlink, or a
    copy elsewhere); an index or a graph by its real path."""
    diff = []
    for k in old.same_selections_as(new):
        if k == "store" and old.store_fingerprint == new.store_fingerprint:
            continue
        if k in ("index", "graph"):
            a, b = getattr(old, k), getattr(new, k)
            if a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b):
                continue
        diff.append(k)
    return diff


def load_npz(path: Path, out: Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # whatever stops the read (truncation, bad zip, bad header), the answer is one
        raise RunDirError(f"{path} is unreadable ({one_line(e)}); delete {out} and start again") from None


def recorded_config(arrays: dict[str, np.ndarray], path: Path, out: Path) -> RunConfig | None:
    """The config a checkpoint records (None for one written before checkpoints recorded it)."""
    if "config_json" not in arrays:
        return None
    try:
        return RunConfig.from_json(json.loads(arrays["config_json"].tobytes().decode()))
    except (ValueError, TypeError, AttributeError, SealsError) as e:
        raise RunDirError(
            f"{path} is corrupt (its config_json is unreadable: {one_line(e)}); delete {out} and start again"
        ) from None


def small(top: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype holding ``0..top`` (rounds and unit numbers: a byte or two, not eight)."""
    return next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max)


def encode_sorted_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique int64 ids as ``[first id, count]`` (empty for no ids) and the gaps between neighbours,
    in the smallest unsigned dtype that holds the largest gap (a pool's ids are dense in the train split:
    mostly 1-2 bytes a gap instead of 8). Gaps are taken modulo 2**64, so any int64 ids, the whole range
    included, round-trip; the count makes a lost or added gap detectable."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return ids, np.empty(0, np.uint8)
    gaps = np.diff(ids.view(np.uint64))
    top = int(gaps.max()) if gaps.size else 0
    return np.array([ids[0], ids.size], np.int64), gaps.astype(small(top))


def decode_sorted_ids(head: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_sorted_ids` (``head`` and ``gaps`` already checked to agree)."""
    head = np.asarray(head).astype(np.int64)
    if head.size == 0:
        return head
    out = np.empty(gaps.size + 1, np.uint64)
    out[0] = head.view(np.uint64)[0]
    np.cumsum(gaps.astype(np.uint64), out=out[1:])
    out[1:] += out[0]
    return out.view(np.int64)


def check_checkpoint(arrays: dict[str, np.ndarray], path: Path, cfg: RunConfig, dim: int | None) -> None:
    """Refuse a checkpoint that is not a whole one of ``cfg``'s units: a missing key, an array of the wrong
    dtype or shape, a round outside ``0..n_rounds``, rounds or selections that disagree with it. One line
    naming the file and the fix; reads only."""
    out = path.parent.parent

    def corrupt(why: str) -> RunDirError:
        return RunDirError(f"{path} is corrupt ({why}); delete {out} and start again, or pick a new --out")

    def want(key: str, kinds: str, shape: tuple[int | None, ...]) -> np.ndarray:
        a = arrays[key]
        if a.ndim != len(shape) or any(w is not None and g != w for g, w in zip(a.shape, shape)):
            expected = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ")"
            raise corrupt(f"{key} has shape {a.shape}, expected {expected}")
        if a.size and a.dtype.kind not in kinds:
            raise corrupt(f"{key} has dtype {a.dtype}")
        return a

    units = [s for _c in cfg.concepts for s in cfg.strategies for _m in cfg.modes]
    n_units = len(units)
    version = int(want("version", "iu", ())) if "version" in arrays else 1
    keys = ["round", "W", "b", "metrics_json", "sel_unit", "sel_round", "sel_id", "sel_label"]
    keys += ["sel_probe"] if cfg.probe else []
    for i, s in enumerate(units):
        keys += [f"u{i}_labeled", f"u{i}_labels", f"u{i}_rounds", f"u{i}_pool"]
        keys += [f"u{i}_pool_gaps"] if version >= 3 else []
        keys += [f"u{i}_ref"] if s == "id" else []
    missing = [k for k in keys if k not in arrays]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise corrupt(f"it lacks {', '.join(missing[:3])}{more}")
    rnd = int(want("round", "iu", ()))
    pending = int(want("pending_round", "iu", ())) if "pending_round" in arrays else -1
    if not (0 <= rnd <= cfg.n_rounds or (rnd == -1 and pending == 0)):
        raise corrupt(f"it is at round {rnd}, outside the 0..{cfg.n_rounds} rounds of its configuration")
    if pending != -1 and not (pending == rnd + 1 and pending <= cfg.n_rounds):
        raise corrupt(f"it awaits answers for round {pending}, but its last round is {rnd}")
    W, b = want("W", "f", (n_units, dim)), want("b", "f", (n_units,))
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise corrupt("its model weights W or b hold NaN or inf")
    try:
        metrics = json.loads(want("metrics_json", "u", (None,)).tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise corrupt(f"its metrics_json is unreadable: {one_line(e)}") from None
    rows = n_units * (rnd + 1)
    if not isinstance(metrics, list) or len(metrics) != rows:
        n = len(metrics) if isinstance(metrics, list) else "no"
        raise corrupt(f"metrics_json holds {n} rows, expected {rows} ({n_units} units x {rnd + 1} rounds)")
    if not all(isinstance(m, dict) and set(METRIC_COLUMNS) <= m.keys() for m in metrics):
        raise corrupt("a metrics_json row lacks a metrics column")
    total = 0
    for i, s in enumerate(units):
        ids = want(f"u{i}_labeled", "iu", (None,))
        n = ids.size
        want(f"u{i}_labels", "b", (n,))
        r = want(f"u{i}_rounds", "iu", (n,))
        if n > cfg.budget or np.unique(ids).size != n:
            raise corrupt(f"u{i}_labeled holds {n} ids, repeats or more than the budget of {cfg.budget}")
        if n and not (r.min() >= 0 and r.max() <= rnd):
            raise corrupt(f"u{i}_rounds holds rounds outside 0..{rnd}")
        pool = want(f"u{i}_pool", "iu", (None,))
        if version >= 3:  # [first id, count] and the gaps (encode_sorted_ids)
            gaps = want(f"u{i}_pool_gaps", "u", (None,))
            if pool.size not in (0, 2) or (pool.size == 0 and gaps.size):
                raise corrupt(f"u{i}_pool has shape {pool.shape}, expected (2,): a first id and a count")
            if pool.size and int(pool[1]) != gaps.size + 1:
                raise corrupt(
                    f"u{i}_pool counts {int(pool[1])} ids but u{i}_pool_gaps holds {gaps.size} gaps"
                )
            if (gaps == 0).any():
                raise corrupt(f"u{i}_pool is not sorted and unique")
            pool = decode_sorted_ids(pool, gaps)
        if pool.size and not (np.diff(pool) > 0).all():
            raise corrupt(f"u{i}_pool is not sorted and unique")
        if pool.size and n and np.isin(ids, pool).any():
            raise corrupt(f"u{i}_pool holds ids the unit has labeled")
        if s == "id":
            want(f"u{i}_ref", "f", (dim,))
        total += n
    sel = {k: want(f"sel_{k}", kinds, (total,)) for k, kinds in (("unit", "iu"), ("round", "iu"))}
    want("sel_id", "iu", (total,))
    want("sel_label", "b", (total,))
    if cfg.probe:
        want("sel_probe", "b", (total,))
    if total and not (0 <= sel["unit"].min() and sel["unit"].max() < n_units):
        raise corrupt(f"sel_unit holds units outside 0..{n_units - 1}")
    if total and not (0 <= sel["round"].min() and sel["round"].max() <= rnd):
        raise corrupt(f"sel_round holds rounds outside 0..{rnd}")
    if "pending_round" in arrays:
        for key in (
            "pending_unit",
            "pending_id",
            "pending_seconds_json",
            *(("pending_probe",) if cfg.probe else ()),
        ):
            if key not in arrays:
                raise corrupt(f"it lacks {key}")
        pu = want("pending_unit", "iu", (None,))
        pid = want("pending_id", "iu", (pu.size,))
        if cfg.probe:
            want("pending_probe", "b", (pu.size,))
        if pending == -1 and pu.size:
            raise corrupt("it holds pending ids but no pending round")
        if pu.size and not (0 <= pu.min() and pu.max() < n_units):
            raise corrupt(f"pending_unit holds units outside 0..{n_units - 1}")
        for i in np.unique(pu).tolist():
            mine = pid[pu == i]
            if np.unique(mine).size != mine.size or np.isin(mine, arrays[f"u{i}_labeled"]).any():
                raise corrupt(f"pending_id repeats an id of unit {i} or holds one it has labeled")
        try:
            json.loads(want("pending_seconds_json", "u", (None,)).tobytes().decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise corrupt(f"its pending_seconds_json is unreadable: {one_line(e)}") from None


def read_checkpoint(path: Path, cfg: RunConfig, dim: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint at ``path``, refused in one line (:class:`RunDirError`) when unreadable,
    written by another configuration, or not whole (:func:`check_checkpoint`)."""
    out = path.parent.parent
    arrays = load_npz(path, out)
    recorded = recorded_config(arrays, path, out)
    if recorded is not None:
        diff = binding_diff(recorded, cfg)
        if diff:
            raise RunDirError(
                f"{path} was written by a different configuration ({', '.join(diff)} "
                f"changed) than {out}/config.json; delete {out} and start again"
            )
    check_checkpoint(arrays, path, cfg, dim)
    return arrays


def restore(run: Run, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Put the run back in the state of its last checkpoint: ``arrays`` as :func:`inspect_run_dir` checked
    them, or read (and checked) here."""
    if arrays is None:
        arrays = read_checkpoint(run.out / CHECKPOINT, run.config, int(run.backend.dim))
    run.round = int(arrays["round"])
    run.metrics = json.loads(arrays["metrics_json"].tobytes().decode())
    dev = run.device.torch_device
    run.model = (
        LogisticModel(
            W=torch.from_numpy(arrays["W"]).float().to(dev), b=torch.from_numpy(arrays["b"]).float().to(dev)
        )
        if run.round >= 0
        else None
    )
    run.pending = None
    if int(arrays.get("pending_round", -1)) >= 0:
        pu, pid = arrays["pending_unit"].astype(np.int64), arrays["pending_id"].astype(np.int64)
        seconds = json.loads(arrays["pending_seconds_json"].tobytes().decode())
        pprobe = arrays["pending_probe"].astype(bool) if "pending_probe" in arrays else None
        run.pending = Pending(
            int(arrays["pending_round"]),
            {u.index: pid[pu == u.index] for u in run.units},
            {(s, m): float(t) for s, m, t in seconds},
            None if pprobe is None else {u.index: pprobe[pu == u.index] for u in run.units},
        )
    for u in run.units:
        ids = arrays[f"u{u.index}_labeled"].astype(np.int64)
        labels = arrays[f"u{u.index}_labels"].astype(bool)
        rounds = arrays[f"u{u.index}_rounds"].astype(np.int64)
        u.labeled = [ids[rounds == r] for r in range(run.round + 1) if (rounds == r).any()]
        u.labels = [labels[rounds == r] for r in range(run.round + 1) if (rounds == r).any()]
        u.X = run.backend.vectors(ids) if ids.size else None
        pool = arrays[f"u{u.index}_pool"].astype(np.int64)
        if int(arrays.get("version", 1)) >= 3:  # [first id, count] and gaps (checked by check_checkpoint)
            pool = decode_sorted_ids(pool, arrays[f"u{u.index}_pool_gaps"])
        u.pool = CandidatePool(pool)
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
    if run.config.probe:
        run.selections[0]["probe"] = arrays["sel_probe"].astype(bool)
    # the metrics rows stored concepts as JSON: map them back to the configured keys
    keymap = {json.dumps(jsonable(c)): c for c in run.config.concepts}
    for r in run.metrics:
        r["concept"] = keymap.get(json.dumps(r["concept"]), r["concept"])


def jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o
