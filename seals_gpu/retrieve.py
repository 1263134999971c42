"""``seals-gpu retrieve``: each unit's final model scores the whole store; the top N per unit are kept.

A finished run's checkpoint holds one logistic model ``(w_u, b_u)`` per unit (concept x strategy x mode).
Retrieval streams the store once in blocks, like All-mode scoring (:func:`seals_gpu.scoring.score_all`):
every block is scored for all units at once (one ``X @ W.T`` per block), each unit keeps a running top-N
that is merged with the block's top-N, so memory is bounded by the block and ``units x N``, never by
``rows x units``. Ranking is by the model's logit ``w_u . x + b_u`` (float32, the same product the run
evaluates), descending, ties broken by the lower id (the project's convention, :mod:`seals_gpu.scoring`).
The logit does not saturate the way a float32 probability does (every logit above ~17 would round to
p = 1.0 and tie), so the order it gives is the model's real order; the output has both the ``score``
(logit) and ``probability = sigmoid(score)``.

Output ``RUN/retrieved.parquet``, one row per (unit, rank), units in the run's order:
``concept, strategy, mode, rank (1..N), id, score (float32 logit), probability (float64), labeled (bool)``.
By default ids the unit labeled during the run are left out (a user wants new positives); with
``exclude_labeled=False`` they compete like any other row and ``labeled`` says which they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .atomic import check_writable, write_parquet
from .checkpoint import CHECKPOINT, read_checkpoint
from .config import RunConfig, check_fits_memory
from .device import resolve_device
from .errors import RunDirError, SealsError, StoreError
from .scoring import TopB, _Exclusion, _rowwise_topb, merge_topb
from .store import Store

__all__ = ["RETRIEVED_FILE", "SPLITS", "RetrieveUnit", "retrieve", "load_final_models", "top_n_stream"]

RETRIEVED_FILE = "retrieved.parquet"
SPLITS = ("all", "train", "test")
DEFAULT_BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class RetrieveUnit:
    """One unit of a finished run: its key, final model and labeled ids (sorted)."""

    index: int
    concept: Any
    strategy: str
    mode: str
    w: np.ndarray  # float64 (d,)
    b: float
    labeled: np.ndarray  # int64, sorted


def _read_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} holds no config.json, so it is not a run folder; pass the --out folder of a "
            "finished `seals-gpu run`"
        )
    try:
        return RunConfig.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, SealsError) as e:
        raise RunDirError(
            f"{path} is unreadable ({' '.join(str(e).split())}); pass the folder of a finished run"
        ) from None


def _open_store(cfg: RunConfig, run_dir: Path, store: str | os.PathLike[str] | None) -> Store:
    where = Path(store) if store is not None else Path(cfg.store)
    try:
        s = Store(where)
    except StoreError as e:
        if store is not None:
            raise
        raise StoreError(
            f"the store of run {run_dir} ({cfg.store}) cannot be opened ({' '.join(str(e).split())}); "
            "pass its current location with --store"
        ) from None
    if s.fingerprint != cfg.store_fingerprint:
        raise StoreError(
            f"store {where} has fingerprint {s.fingerprint}, but run {run_dir} was made on "
            f"{cfg.store_fingerprint}; pass the run's own store (--store PATH)"
        )
    return s


def load_final_models(
    run_dir: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | None = None,
    strategies: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
) -> tuple[RunConfig, Store, list[RetrieveUnit]]:
    """The finished run in ``run_dir``: its config, its store (checked by fingerprint) and the final model
    of each chosen unit. Refused in one line (:class:`SealsError`) when the folder holds no run, its
    checkpoint is missing, corrupt or not of the last round, or a strategy/mode is not one of the run's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(
            f"run folder {run_dir} does not exist or is not a folder; pass a run's --out folder"
        )
    cfg = _read_config(run_dir)
    for what, asked, have in (("strategy", strategies, cfg.strategies), ("mode", modes, cfg.modes)):
        for x in asked or ():
            if x not in have:
                raise SealsError(
                    f"--{what} {x!r} is not one of the run's ({', '.join(have)}); pick from those"
                )
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise RunDirError(
            f"{run_dir} has no checkpoint ({CHECKPOINT}): the run never finished a round; finish it with "
            "`seals-gpu run ... --resume` first"
        )
    s = _open_store(cfg, run_dir, store)
    arrays = read_checkpoint(ckpt, cfg, s.dim)
    rnd = int(arrays["round"])
    if rnd < cfg.n_rounds:
        raise RunDirError(
            f"the run in {run_dir} has not finished (its checkpoint is at round {rnd} of {cfg.n_rounds}); "
            "finish it with `seals-gpu run ... --resume` first"
        )
    W, b = arrays["W"], arrays["b"]
    units = []
    i = 0
    for c in cfg.concepts:
        for st in cfg.strategies:
            for m in cfg.modes:
                if (not strategies or st in strategies) and (not modes or m in modes):
                    labeled = np.unique(arrays[f"u{i}_labeled"].astype(np.int64))
                    units.append(RetrieveUnit(i, c, st, m, W[i].astype(np.float64), float(b[i]), labeled))
                i += 1
    return cfg, s, units


def top_n_stream(
    blocks: Any,
    W: torch.Tensor,
    bias: torch.Tensor,
    n: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    device: torch.device | None = None,
    max_elems: int | None = None,
    progress: Any = None,
) -> TopB:
    """Per unit, the ``n`` rows of largest logit ``x . w_u + b_u`` over a stream of ``(ids, X)`` blocks,
    ties to the lower id. One ``X @ W.T`` per block (split so that at most ``max_elems`` logits exist at
    once); a unit's running top-n is merged with each block's. ``exclude[u]``: ids unit u never returns.

    Returns a :class:`TopB` (ids, float32 logits, counts) on ``device``.
    """
    dev = torch.device(device) if device is not None else W.device
    W = W.to(dev, torch.float32)
    U = int(W.shape[0])
    Wt = W.t().contiguous()
    bc = bias.to(dev, torch.float32)
    excl = _Exclusion(list(exclude) if exclude is not None else None, U, dev)
    if max_elems is None:
        max_elems = (1 << 24) if dev.type == "cuda" else (1 << 22)
    step = max(1, int(max_elems) // max(U, 1))
    out = TopB.empty(U, n, dev)
    for ids_np, X_np in blocks:
        if progress is not None:
            progress.update(int(ids_np.size))
        if ids_np.size == 0 or U == 0:
            continue
        order = np.argsort(ids_np, kind="stable")  # the block top-n wants ascending ids (ties -> lower id)
        ids_t = torch.from_numpy(np.ascontiguousarray(ids_np[order])).to(dev)
        X = torch.from_numpy(np.ascontiguousarray(X_np[order])).to(dev, torch.float32)
        for s in range(0, int(ids_t.numel()), step):
            ids_s = ids_t[s : s + step]
            Z = (X[s : s + step] @ Wt + bc).t().contiguous()  # (U, rows) logits
            excl.apply(Z, ids_s)  # excluded pairs -> -inf, which the top-n never counts
            out = merge_topb(out, _rowwise_topb(Z, ids_s, n), n)
    out.scores = out.scores.to(torch.float32)
    return out


def _concept_type(concepts: Sequence[Any]) -> pa.DataType:
    return pa.int64() if all(isinstance(c, (int, np.integer)) for c in concepts) else pa.string()


def retrieve(
    run_dir: str | os.PathLike[str],
    *,
    top: int,
    strategies: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    split: str = "all",
    exclude_labeled: bool = True,
    device: str = "auto",
    store: str | os.PathLike[str] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    force: bool = False,
    progress: bool = False,
    log: Any = None,
) -> Path:
    """Write ``RUN/retrieved.parquet``: each chosen unit's top ``top`` rows of the store (see the module
    docstring). Every check comes before any work, and nothing is written unless all of it succeeds.

    Args:
        run_dir: a finished run's folder (its checkpoint at the last round).
        top: rows per unit (>= 1); a unit gets fewer when the split holds fewer candidates.
        strategies, modes: keep only units of these (default: all of the run's units).
        split: ``all`` (default), ``train`` or ``test`` rows of the store (the run's split).
        exclude_labeled: leave out ids the unit labeled during the run (default).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        store: the run's store at another path (checked by fingerprint).
        block_rows: rows read and scored per block.
        force: replace an existing ``retrieved.parquet``.

    Returns:
        The path written.

    Example:
        >>> retrieve("runs/a", top=100)                      # doctest: +SKIP
        PosixPath('runs/a/retrieved.parquet')
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise SealsError(f"--top {top!r}: ask for at least 1 row per unit")
    if split not in SPLITS:
        raise SealsError(f"--split {split!r}: choose {', '.join(SPLITS)}")
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise SealsError(f"block_rows={block_rows!r}: at least 1 row per block")
    run_dir = Path(run_dir)
    out = run_dir / RETRIEVED_FILE
    cfg, s, units = load_final_models(run_dir, store=store, strategies=strategies, modes=modes)
    if not units:
        raise SealsError(f"no unit of {run_dir} matches --strategy/--mode; pick from the run's")
    if os.path.lexists(out):
        if out.is_symlink() or not out.is_file():
            raise SealsError(f"{out} exists and is not a plain file; remove it or move it away first")
        if not force:
            raise SealsError(f"{out} already exists; pass --force to replace it")
    check_writable(out)
    U = len(units)
    n_keep = min(int(top), s.num_rows)
    # the running top-n (ids, scores, and the merge's working copies) is what grows with --top
    check_fits_memory(
        U * n_keep * 64.0,
        what=f"--top {top} for {U} unit(s)",
        fix="lower --top or choose fewer units with --strategy/--mode",
        error=SealsError,
    )
    dev = resolve_device(device)
    if log is not None:
        log(f"device: {dev.reason}")
    W = torch.from_numpy(np.stack([u.w for u in units]).astype(np.float32))
    bias = torch.from_numpy(np.asarray([u.b for u in units], dtype=np.float32))
    exclude = [u.labeled for u in units] if exclude_labeled else None

    def blocks():
        for batch in s.iter_batches(batch_rows=int(block_rows), split=split != "all"):
            assert batch.embeddings is not None
            if split == "all":
                yield batch.ids, batch.embeddings
                continue
            keep = batch.split if split == "test" else ~batch.split
            yield batch.ids[keep], batch.embeddings[keep]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.num_rows, unit="rows", desc=f"retrieving top {top} for {U} unit(s)")
    try:
        topb = top_n_stream(blocks(), W, bias, n_keep, exclude=exclude, device=dev.torch_device, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    ids, scores, counts = topb.numpy()
    table = _table(units, cfg, ids, scores, counts)
    write_parquet(out, table)
    return out


def _table(
    units: Sequence[RetrieveUnit], cfg: RunConfig, ids: np.ndarray, scores: np.ndarray, counts: np.ndarray
) -> pa.Table:
    ctype = _concept_type(cfg.concepts)
    rows = [np.arange(int(c)) for c in counts]
    unit_of = np.concatenate([np.full(r.size, j, np.int64) for j, r in enumerate(rows)])
    rank = np.concatenate(rows) if rows else np.empty(0, np.int64)
    out_ids = ids[unit_of, rank].astype(np.int64)
    sc = scores[unit_of, rank].astype(np.float32)
    labeled = np.zeros(out_ids.size, dtype=bool)
    for j, u in enumerate(units):
        m = unit_of == j
        if u.labeled.size and m.any():
            labeled[m] = np.isin(out_ids[m], u.labeled)
    take = pa.array(unit_of, type=pa.int64())
    concepts = [c if ctype == pa.int64() else str(c) for c in (u.concept for u in units)]
    with np.errstate(over="ignore"):
        prob = 1.0 / (1.0 + np.exp(-sc.astype(np.float64)))
    return pa.table(
        {
            "concept": pa.array(concepts, type=ctype).take(take),
            "strategy": pa.array([u.strategy for u in units], type=pa.string()).take(take),
            "mode": pa.array([u.mode for u in units], type=pa.string()).take(take),
            "rank": pa.array(rank + 1, type=pa.int64()),
            "id": pa.array(out_ids, type=pa.int64()),
            "score": pa.array(sc, type=pa.float32()),
            "probability": pa.array(prob, type=pa.float64()),
            "labeled": pa.array(labeled, type=pa.bool_()),
        }
    )
