"""A precomputed kNN graph: every item's ``k`` nearest neighbours (itself excluded), built once, resumable.

Layout of a graph folder (default ``INDEX/graph-k{K}``)::

    graph.json            format, index path, store fingerprint, k, part_rows, the parts and which are done
    part-00000.parquet    id int64, neighbors list<int64> (k each), sims list<float32> (k each): a slot is a
                          neighbour iff its sim is finite (missing: -inf, its id -1 but never read)
    ...

Parts follow the index's shards (rows ``[start, stop)`` of one shard each), so with Ray a part's queries start
on the actor that owns them. Each part is written atomically; a rerun skips the parts already on disk.

The graph is the run's own search, stored: row ``i`` holds the k nearest TRAIN rows of item ``i`` (the store's test
split is never a neighbour; itself excluded), as ``LocalBackend.search`` finds them, so a
run that grows its pools from :meth:`KnnGraph.lookup` selects exactly what a run that searches the exact
index selects (both order by similarity descending, then id ascending, with the same float64 re-scored
similarities). For an IVF-PQ index this holds when the run's ``--k`` equals the graph's ``k`` (a smaller
``k`` reads a prefix of a search that re-ranked more candidates).

Example:
    >>> path = build_graph("idx", k=100)                 # doctest: +SKIP
    >>> g = KnnGraph.open(path); D, I = g.lookup(ids, 100)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import clean_leftovers, overlap, real, write_json, write_parquet
from .errors import ConfigError, IndexError_
from .index.build import INDEX_ENTRY, LocalIndex, read_manifest
from .index.merge import merge_neighbors, rescorer

__all__ = ["GRAPH_FORMAT", "KnnGraph", "build_graph"]

GRAPH_FORMAT = "seals_gpu.graph/3"  # /2: neighbours among the train split only; /3: negative ids are ids
# /2 graphs were built by code that took every negative neighbour id for a missing one: still right for
# stores whose ids are all >= 0, wrong (neighbours lost) otherwise, so they are read only for such stores
_GRAPH_FORMAT_NONNEG = "seals_gpu.graph/2"
MANIFEST = "graph.json"
_Finish = Callable[[dict[str, int], np.ndarray, np.ndarray, np.ndarray], None]
_IN_FLIGHT_PER_SHARD = 2  # Ray: parts queued per actor, so every actor stays busy while the driver writes


def _plan(sizes: list[int], part_rows: int) -> list[dict[str, int]]:
    parts = []
    for s, n in enumerate(sizes):
        for start in range(0, n, part_rows):
            parts.append({"part": len(parts), "shard": s, "start": start, "stop": min(n, start + part_rows)})
    return parts


def _part_file(p: dict[str, int]) -> str:
    return f"part-{p['part']:05d}.parquet"


def _part_done(path: Path, rows: int) -> bool:
    if not path.exists():
        return False
    try:
        return pq.ParquetFile(path).metadata.num_rows == rows
    except (OSError, pa.ArrowInvalid):
        return False


def _part_table(ids: np.ndarray, sims: np.ndarray, nbrs: np.ndarray) -> pa.Table:
    n, k = nbrs.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.table(
        {
            "id": pa.array(np.asarray(ids, dtype=np.int64)),
            "neighbors": pa.ListArray.from_arrays(offsets, pa.array(nbrs.astype(np.int64).ravel())),
            "sims": pa.ListArray.from_arrays(offsets, pa.array(sims.astype(np.float32).ravel())),
        }
    )


def _row_problem(ids: np.ndarray, nbrs: np.ndarray, sims: np.ndarray) -> str | None:
    """What is wrong with these rows of a graph part, or None: similarities must be finite or -inf (missing),
    in descending order (missing ones last), and an item is never its own neighbour."""
    if (np.isnan(sims) | np.isposinf(sims)).any():
        return "it holds NaN or +inf similarities"
    if (sims[:, 1:] > sims[:, :-1]).any():
        return "a row's similarities are not in descending order (missing neighbours, -inf, come last)"
    own = np.isfinite(sims) & (nbrs == ids[:, None])
    if own.any():
        return f"item {int(ids[np.flatnonzero(own.any(axis=1))[0]])} is listed as its own neighbour"
    return None


def _index_path(index: Any) -> Path:
    if isinstance(index, (str, os.PathLike)):
        return Path(index)
    path = Path(getattr(index, "path", ""))
    if not (path / "manifest.json").exists():
        raise ConfigError(
            f"build_graph needs an index folder (from `seals-gpu index build`), got {index!r}; "
            "build one and pass its path"
        )
    return path


def build_graph(
    index: str | os.PathLike[str] | LocalIndex | Any,
    *,
    k: int,
    out: str | os.PathLike[str] | None = None,
    part_rows: int = 65_536,
    use_ray: bool = False,
    ray_address: str | None = None,
    progress: bool = False,
) -> Path:
    """Compute every item's ``k`` nearest neighbours (itself excluded), part by part, into ``out``.

    Args:
        index: the index folder, or an opened :class:`LocalIndex` / ``ShardedIndex`` of one.
        k: neighbours per item (>= 1).
        out: the graph folder (default ``INDEX/graph-k{k}``).
        part_rows: rows per part (the unit of work and of resume).
        use_ray: spread the parts over Ray shard actors (one per index shard); a part's queries start on
            the actor that owns them and only ids and similarities come back.
        ray_address: the Ray cluster to join (implies ``use_ray``; else ``RAY_ADDRESS``, else a local Ray).
        progress: show a progress bar.

    Returns:
        The graph folder.

    Raises:
        ConfigError: ``k`` or ``part_rows`` below 1.
        IndexError_: ``out`` holds a graph with other settings, or the index is missing or corrupt.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"--k {k!r}: the number of neighbours must be an integer >= 1")
    if isinstance(part_rows, bool) or not isinstance(part_rows, (int, np.integer)) or part_rows < 1:
        raise ConfigError(f"--part-rows {part_rows!r} must be an integer >= 1")
    k, part_rows = int(k), int(part_rows)
    index_path = _index_path(index)
    manifest = read_manifest(index_path)
    out = Path(out) if out is not None else index_path / f"graph-k{k}"
    parts = _plan([int(s["n"]) for s in manifest["shards"]], part_rows)
    header = {
        "format": GRAPH_FORMAT,
        "index": str(index_path.resolve()),
        "store_fingerprint": manifest["store"]["fingerprint"],
        "ntotal": int(manifest["ntotal"]),
        "k": k,
        "part_rows": part_rows,
        "parts": [{**p, "file": _part_file(p)} for p in parts],
    }
    _check_out(out, index_path, manifest)
    _check_existing(out, header)
    # parts (and graph.json) a killed earlier build of this graph was writing: only this module's temporaries
    clean_leftovers(out, {MANIFEST, *(_part_file(p) for p in parts)})
    done = [p["part"] for p in parts if _part_done(out / _part_file(p), p["stop"] - p["start"])]
    todo = [p for p in parts if p["part"] not in set(done)]
    write_json(out / MANIFEST, {**header, "done": done, "complete": not todo})
    if not todo:
        return out

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(p["stop"] - p["start"] for p in todo), desc=f"kNN graph k={k}", unit="rows")

    def finish(p: dict[str, int], ids: np.ndarray, sims: np.ndarray, nbrs: np.ndarray) -> None:
        write_parquet(out / _part_file(p), _part_table(ids, sims, nbrs))
        done.append(p["part"])
        write_json(out / MANIFEST, {**header, "done": sorted(done), "complete": len(done) == len(parts)})
        if bar is not None:
            bar.update(p["stop"] - p["start"])

    try:
        test_ids = _test_ids(manifest)
        if use_ray or ray_address is not None or _is_sharded(index):
            _build_ray(index, index_path, todo, k, ray_address, finish, test_ids)
        else:
            local = index if isinstance(index, LocalIndex) else LocalIndex.open(index_path)
            _build_local(local, todo, k, finish, test_ids)
    finally:
        if bar is not None:
            bar.close()
    return out


def _is_sharded(index: Any) -> bool:
    if isinstance(index, (str, os.PathLike, LocalIndex)):
        return False
    from .distributed import ShardedIndex

    return isinstance(index, ShardedIndex)


def _check_out(out: Path, index_path: Path, manifest: dict[str, Any]) -> None:
    """The graph folder is never a file, the index or the store, nor holds or lies inside either (through
    symlinks and ``..`` too); inside the index it may only be a folder of its own, beside the shards (the
    default ``INDEX/graph-kK``). Reads only."""
    if out.exists() and not out.is_dir():
        raise IndexError_(f"--out {out} is a file, not a folder; pass a folder path for the kNN graph")
    checks: list[tuple[str, Any]] = [("store", manifest["store"].get("path"))]
    if real(out).parent != real(index_path) or INDEX_ENTRY.match(real(out).name):
        checks.append(("index", index_path))  # else INDEX/NAME: a folder of its own, as the default is
    for what, path in checks:
        how = overlap(out, path) if path else None
        if how is not None:
            raise IndexError_(
                f"--out {out} {how} the {what} {path}, which the graph is built from; pick another --out "
                f"(the default is {index_path / 'graph-kK'})"
            )


def _check_existing(out: Path, header: dict[str, Any]) -> None:
    mf = out / MANIFEST
    if not mf.exists():
        if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise IndexError_(
                f"{out} exists and is not a kNN graph folder (no {MANIFEST}); pass another --out or empty it"
            )
        return
    try:
        old = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise IndexError_(f"{mf} is not valid JSON ({e}); delete {out} and rebuild the graph") from None
    keys = ("format", "store_fingerprint", "ntotal", "k", "part_rows", "parts")
    diff = [key for key in keys if old.get(key) != header[key]]
    if diff:
        raise IndexError_(
            f"{out} holds a kNN graph with other settings ({', '.join(diff)} differ: e.g. k={old.get('k')} vs "
            f"{header['k']}, part_rows={old.get('part_rows')} vs {header['part_rows']}); delete it, or pass "
            "another --out, or rerun with the original settings to resume it"
        )


def _test_ids(manifest: dict[str, Any]) -> np.ndarray:
    """Sorted ids of the index's store's test split: they are never anyone's neighbour."""
    from .store import Store

    path = manifest["store"].get("path")
    try:
        store = Store(path)
    except Exception as e:  # noqa: BLE001 - any failure to open means the same thing here
        raise IndexError_(
            f"the index's store {path} cannot be opened ({e}); the graph needs its train/test split"
        ) from None
    if store.fingerprint != manifest["store"]["fingerprint"]:
        raise IndexError_(
            f"store {path} changed since the index was built (fingerprint {store.fingerprint}, index "
            f"{manifest['store']['fingerprint']}); rebuild the index"
        )
    ids, is_test = store.read_split()
    return np.sort(ids[is_test])


def _build_local(
    index: LocalIndex, todo: list[dict[str, int]], k: int, finish: _Finish, test_ids: np.ndarray
) -> None:
    from .backend import LocalBackend
    from .device import resolve_device

    backend = LocalBackend(
        index,
        resolve_device("cpu"),
        excluded=test_ids,
        search_method="flat" if index.kind == "flat" else "index",
    )
    for p in todo:
        shard = index.shards[p["shard"]]
        ids = np.asarray(shard.ids[p["start"] : p["stop"]], dtype=np.int64)
        xq = np.ascontiguousarray(shard.vectors[p["start"] : p["stop"]], dtype=np.float32)
        sims, nbrs = backend.search(xq, k, ids)
        finish(p, ids, sims, nbrs)


def _build_ray(
    index: Any,
    index_path: Path,
    todo: list[dict[str, int]],
    k: int,
    address: str | None,
    finish: _Finish,
    test_ids: np.ndarray,
) -> None:
    """Parts over the shard actors: the owner searches its own rows and passes their vectors (through
    Ray's object store, not this process) to the other shards; only ids and similarities come back."""
    from .distributed import ShardedIndex, ray_session

    with ray_session(address):
        own = _is_sharded(index)
        sidx: ShardedIndex = index if own else ShardedIndex(index_path, excluded=test_ids)
        n = sidx.n_shards

        def submit(p: dict[str, int]) -> list[Any]:
            actors, s = sidx.actors, p["shard"]
            ids_r, xq_r, d_r, i_r = (
                actors[s].graph_part.options(num_returns=4).remote(p["start"], p["stop"], k)
            )
            others = [actors[t].search.remote(xq_r, k, ids_r) for t in range(n) if t != s]
            return [ids_r, d_r, i_r, *others]

        def collect(p: dict[str, int], refs: list[Any]) -> None:
            ids, d_own, i_own, *others = sidx.gather(refs, lambda: submit(p))

            def rescore(rows: np.ndarray, cand: np.ndarray) -> np.ndarray:  # near-ties at the merged k-th
                return rescorer(sidx.vectors(ids[rows]), sidx.vectors)(np.arange(rows.size), cand)

            sims, nbrs = (d_own, i_own) if n == 1 else merge_neighbors([(d_own, i_own), *others], k, rescore)
            finish(p, ids, sims, nbrs)

        try:
            window: collections.deque[tuple[dict[str, int], list[Any]]] = collections.deque()
            for p in todo:
                window.append((p, submit(p)))
                if len(window) >= _IN_FLIGHT_PER_SHARD * n:
                    collect(*window.popleft())
            while window:
                collect(*window.popleft())
        finally:
            if not own:
                sidx.close()


def _membership(ref: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``isin(values, ref)`` for sorted unique int64 ``ref``: one gather in a bool table over ref's span when
    its ids are dense (span at most 4x their count), else a binary search. Any int64 values (the offsets may
    wrap around, but a wrapped offset is never inside the span)."""
    if ref.size == 0:
        return lambda v: np.zeros(np.shape(v), dtype=bool)
    lo, span = ref[0], int(ref[-1]) - int(ref[0]) + 1
    if span <= 4 * ref.size:
        table = np.zeros(span, dtype=bool)
        table[ref - lo] = True

        def dense(v: np.ndarray) -> np.ndarray:
            off = v - lo
            inside = (off >= 0) & (off < span)
            return inside & table[np.where(inside, off, 0)]

        return dense

    def sparse(v: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(ref, v), ref.size - 1)
        return ref[pos] == v

    return sparse


def _first_bad_neighbor(
    nbrs: np.ndarray, sims: np.ndarray, allowed: Callable[[np.ndarray], np.ndarray], chunk_rows: int = 1 << 15
) -> tuple[int, int] | None:
    """``(row, neighbour id)`` of the first neighbour (finite similarity) that ``allowed`` refuses, or None."""
    for s in range(0, nbrs.shape[0], chunk_rows):
        nb = nbrs[s : s + chunk_rows]
        bad = np.isfinite(sims[s : s + chunk_rows]) & ~allowed(nb)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            return s + int(r), int(nb[r, c])
    return None


class KnnGraph:
    """A kNN graph in memory: sorted ids and (n, k) neighbour ids and similarities.

    Use :meth:`open`; :meth:`lookup` replaces an index search for items of the store.
    """

    def __init__(
        self, path: Path, header: dict[str, Any], ids: np.ndarray, nbrs: np.ndarray, sims: np.ndarray
    ):
        self.path = path
        self.header = header
        self.ids = ids
        self.neighbors = nbrs
        self.sims = sims
        self.k: int = int(header["k"])
        self.store_fingerprint: str = header["store_fingerprint"]
        self.index_path: str = header["index"]

    def __len__(self) -> int:
        return int(self.ids.size)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> KnnGraph:
        """Load a complete graph folder into memory (n·k·12 bytes).

        Raises:
            IndexError_: the folder is missing, incomplete or corrupt (the message says how to finish it).
        """
        path = Path(path)
        mf = path / MANIFEST
        if not mf.exists():
            raise IndexError_(
                f"{path} is not a kNN graph (no {MANIFEST}); build one with `seals-gpu index graph INDEX --k K`"
            )
        try:
            header = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise IndexError_(f"{mf} is not valid JSON ({e}); delete {path} and rebuild the graph") from None
        if header.get("format") not in (GRAPH_FORMAT, _GRAPH_FORMAT_NONNEG):
            raise IndexError_(
                f"{mf}: format {header.get('format')!r}, expected {GRAPH_FORMAT!r}; rebuild the graph"
            )
        k = int(header["k"])
        rebuild = f"`seals-gpu index graph {header.get('index')} --k {k} --out {path}`"
        missing = [
            p["file"] for p in header["parts"] if not _part_done(path / p["file"], p["stop"] - p["start"])
        ]
        if missing:
            raise IndexError_(
                f"kNN graph {path} is incomplete ({len(missing)} of {len(header['parts'])} parts missing, "
                f"e.g. {missing[0]}); finish it with {rebuild}"
            )
        n = int(header["ntotal"])
        ids = np.empty(n, dtype=np.int64)
        nbrs = np.empty((n, k), dtype=np.int64)
        sims = np.empty((n, k), dtype=np.float32)
        row = 0
        for p in header["parts"]:
            try:
                t = pq.read_table(path / p["file"], columns=["id", "neighbors", "sims"])
            except (OSError, pa.ArrowInvalid, KeyError) as e:
                raise IndexError_(
                    f"{path / p['file']} is unreadable ({e}); delete it and rerun {rebuild}"
                ) from None
            m = t.num_rows
            nb = t.column("neighbors").combine_chunks()
            sm = t.column("sims").combine_chunks()
            if np.any(np.diff(nb.offsets.to_numpy()) != k) or np.any(np.diff(sm.offsets.to_numpy()) != k):
                raise IndexError_(
                    f"{path / p['file']}: rows do not all hold {k} neighbours; delete it and rerun {rebuild}"
                )
            if row + m > n:
                raise IndexError_(
                    f"{path / p['file']}: more rows than the graph's {n} items; delete it and rerun {rebuild}"
                )
            ids[row : row + m] = t.column("id").to_numpy()
            nbrs[row : row + m] = nb.values.to_numpy().reshape(m, k)
            sims[row : row + m] = sm.values.to_numpy().reshape(m, k)
            problem = _row_problem(ids[row : row + m], nbrs[row : row + m], sims[row : row + m])
            if problem:
                raise IndexError_(f"{path / p['file']}: {problem}; delete it and rerun {rebuild}")
            row += m
        if row != n or (n > 1 and not (ids[1:] > ids[:-1]).all()):
            raise IndexError_(f"kNN graph {path}: ids are not the index's {n} sorted unique ids; rebuild it")
        if header.get("format") == _GRAPH_FORMAT_NONNEG and n and ids[0] < 0:
            raise IndexError_(
                f"{mf}: a {_GRAPH_FORMAT_NONNEG} graph over negative ids (its builder dropped negative "
                f"neighbour ids as missing); delete {path} and rebuild it with {rebuild}"
            )
        g = cls(path, header, ids, nbrs, sims)
        bad = _first_bad_neighbor(nbrs, sims, _membership(ids))
        if bad is not None:
            raise IndexError_(
                f"{g._part_file(bad[0])}: item {int(ids[bad[0]])} has neighbour id {bad[1]}, which is not an "
                f"item of the graph; delete that part and rerun {rebuild}"
            )
        return g

    def _part_file(self, row: int) -> Path:
        """The part file holding row ``row`` (parts hold consecutive rows, in the manifest's order)."""
        stops = np.cumsum([p["stop"] - p["start"] for p in self.header["parts"]])
        return self.path / self.header["parts"][int(np.searchsorted(stops, row, side="right"))]["file"]

    def _rebuild(self) -> str:
        return f"`seals-gpu index graph {self.index_path} --k {self.k} --out {self.path}`"

    def check_store(self, store: Any) -> None:
        """Refuse a graph built over another store (or an older version of this one), or one whose items are
        not the store's ids or whose neighbours are not its train rows (a corrupt or edited part)."""
        if store.fingerprint != self.store_fingerprint:
            raise IndexError_(
                f"kNN graph {self.path} was built from index {self.index_path} over a store with fingerprint "
                f"{self.store_fingerprint}, but {store.path} has {store.fingerprint}; rebuild the index and "
                f"the graph: `seals-gpu index build {store.path} INDEX --force` then "
                f"`seals-gpu index graph INDEX --k {self.k}`"
            )
        ids, is_test = store.read_split()
        order = np.argsort(ids, kind="stable")
        ids, is_test = ids[order], is_test[order]
        if not np.array_equal(ids, self.ids):
            out = np.flatnonzero(~_membership(ids)(self.ids))
            if out.size:  # a part's rows come from the index: recomputing that part restores them
                raise IndexError_(
                    f"{self._part_file(int(out[0]))}: item id {int(self.ids[out[0]])} is not in store "
                    f"{store.path}; delete that part and rerun {self._rebuild()}"
                )
            raise IndexError_(
                f"kNN graph {self.path} holds {self.ids.size} items but store {store.path} has {ids.size}; "
                f"delete {self.path} and rebuild it with {self._rebuild()}"
            )
        bad = _first_bad_neighbor(self.neighbors, self.sims, _membership(ids[~is_test]))
        if bad is not None:
            raise IndexError_(
                f"{self._part_file(bad[0])}: item {int(self.ids[bad[0]])} has neighbour id {bad[1]}, which is "
                f"in the test split of {store.path} (neighbours are train rows only); delete that part and "
                f"rerun {self._rebuild()}"
            )

    def lookup(self, ids: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k`` neighbours of each id: ``(D (n, k) float32, I (n, k) int64)``; a slot is a
        neighbour iff its ``D`` is finite (missing slots: ``-inf`` / ``-1``; -1 is also a legal id).

        Raises:
            IndexError_: an id not in the graph, or ``k`` above the graph's.
        """
        k = self.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.k:
            raise IndexError_(
                f"k={k!r}: graph {self.path} holds {self.k} neighbours per item; ask for 1..{self.k} or "
                f"rebuild it with `--k {k}`"
            )
        ids = np.asarray(ids, dtype=np.int64).ravel()
        pos = np.minimum(np.searchsorted(self.ids, ids), max(self.ids.size - 1, 0))
        ok = self.ids[pos] == ids if self.ids.size else np.zeros(ids.shape, dtype=bool)
        if not ok.all():
            bad = ids[~ok][:5].tolist()
            raise IndexError_(
                f"ids {bad} are not in kNN graph {self.path}; pass ids from the store it was built on"
            )
        return self.sims[pos, :k].copy(), self.neighbors[pos, :k].copy()
