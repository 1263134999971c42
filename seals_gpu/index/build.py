"""Build, open and describe an index folder (one or more shards over one store).

Layout::

    OUT/manifest.json      format, kind, dim, ntotal, store fingerprint, parameters, shards (dir, n, id range)
    OUT/trained.faiss      ivfpq only: the empty trained IndexIVFPQ shared by every shard
    OUT/shard-00000/       see :mod:`seals_gpu.index.shard`

The build streams the store: it reads the id column once (8 bytes a row), then scatters each batch of
vectors into the shards' memory-mapped ``vectors.npy``; memory stays bounded by the batch size, the ids
and the FAISS codes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..atomic import atomic_dir, check_output_dir
from ..errors import IndexError_
from ..store import Store, check_unique_ids
from .merge import merge_neighbors, rescorer
from .shard import KINDS, IndexShard, SearchParams, default_ivf_params, train_ivfpq

FORMAT = "seals_gpu.index/1"
FLAT_MAX_ROWS = 1_000_000  # `--kind auto`: exact flat search up to this many rows, IVF-PQ above


TRAIN_SIZE_CAP = 262_144  # default cap on IVF-PQ training rows (override with --train-size)


@dataclass(frozen=True)
class IndexSpec:
    """What to build. ``None`` fields default from the store's size (:func:`default_ivf_params`)."""

    kind: str = "auto"
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int | None = None
    rerank: int | None = None
    shards: int = 1
    train_size: int | None = None
    seed: int = 1234

    def resolve(self, n: int, d: int) -> dict[str, Any]:
        if self.kind not in ("auto", *KINDS):
            raise IndexError_(f"--kind {self.kind!r} is unknown; choose auto, flat or ivfpq")
        if self.shards < 1:
            raise IndexError_(f"--shards {self.shards} must be at least 1")
        if self.shards > n:
            raise IndexError_(f"--shards {self.shards} is more than the store's {n} rows; use fewer shards")
        kind = self.kind if self.kind != "auto" else ("flat" if n <= FLAT_MAX_ROWS else "ivfpq")
        out: dict[str, Any] = {"kind": kind, "shards": self.shards}
        if kind == "ivfpq":
            p = default_ivf_params(n, d)
            for key in ("nlist", "pq_m", "nprobe", "rerank"):
                v = getattr(self, key)
                if v is not None:
                    if v < 1:
                        raise IndexError_(f"--{key.replace('_', '-')} {v} must be at least 1")
                    p[key] = int(v)
            p["nprobe"] = min(p["nprobe"], p["nlist"])
            if d % p["pq_m"]:  # checked here, before the store is read, as well as in train_ivfpq
                raise IndexError_(
                    f"--pq-m {p['pq_m']} must divide the dimension {d}; try one of "
                    f"{[q for q in range(1, min(64, d) + 1) if d % q == 0][-4:]}"
                )
            if p["nlist"] > n:
                raise IndexError_(
                    f"--nlist {p['nlist']} needs at least {p['nlist']} training vectors, the store "
                    f"has {n}; lower --nlist or use --kind flat"
                )
            # 64 points per coarse centroid, but at most TRAIN_SIZE_CAP: k-means cost is sample x nlist; at 1e7
            # rows (nlist 16,384) the uncapped 1M-row sample made a 2-core IVF-PQ build take 36 minutes.
            p["train_size"] = int(
                self.train_size or min(n, max(65_536, min(64 * p["nlist"], TRAIN_SIZE_CAP)))
            )
            if self.train_size is not None and self.train_size < p["nlist"]:
                raise IndexError_(
                    f"--train-size {self.train_size} is fewer training vectors than --nlist {p['nlist']} lists "
                    f"(k-means needs one per list, 64 is usual; the store has {n:,} rows); raise --train-size "
                    f"to at least {p['nlist']} or lower --nlist"
                )
            p["seed"] = self.seed
            out.update(p)
        return out


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None, (lambda n: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="rows", unit_scale=True, leave=False)
    return bar, bar.update


INDEX_ENTRY = re.compile(r"^(manifest\.json|trained\.faiss|shard-[0-9]{5})$")


def index_problem(path: Path) -> str | None:
    """Why the existing folder ``path`` is not recognisably an index folder (None when it is one): its
    ``manifest.json`` has this module's format, and besides it only ``trained.faiss``, ``shard-NNNNN``
    folders and kNN graph folders (``index graph``'s default ``graph-kK``, each with its ``graph.json``)."""
    try:
        fmt = json.loads((path / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != FORMAT:
        return "no seals_gpu index manifest.json in it"
    for p in sorted(path.iterdir()):
        if p.is_symlink():
            return f"it holds the symbolic link {p.name}"
        if INDEX_ENTRY.match(p.name) and (p.is_dir() == p.name.startswith("shard-")):
            continue
        if p.is_dir() and (p / "graph.json").is_file():
            continue
        return f"it holds {p.name}, which is not part of an index"
    return None


def check_index_out(
    out: str | os.PathLike[str], *, overwrite: bool, store_path: str | os.PathLike[str] | None = None
) -> None:
    """Refuse (one line, nothing changed) an index output that is, holds or lies inside the store, is a
    file or a symlink, or exists non-empty without ``overwrite`` or as anything but an index: ``--force``
    only replaces an index folder."""
    check_output_dir(
        out,
        kind="index folder",
        problem=index_problem,
        overwrite=overwrite,
        label="index output",
        error=IndexError_,
        inputs=[("store", store_path)],
    )


def build_index(
    store: Store | str | os.PathLike[str],
    out: str | os.PathLike[str],
    spec: IndexSpec = IndexSpec(),
    *,
    progress: bool = False,
    overwrite: bool = False,
    fill: Callable[..., None] | None = None,
) -> LocalIndex:
    """Build an index folder from a store, atomically (the folder appears only when complete).

    Args:
        store: the store (or its path).
        out: the index folder to create.
        spec: kind and parameters; defaults come from the store's size.
        fill: how shards are filled from their vectors (default: in this process); the Ray build passes
            its own to fill shards in parallel tasks.

    Returns:
        The opened :class:`LocalIndex`.
    """
    store = store if isinstance(store, Store) else Store(store)
    out = Path(out)
    check_index_out(out, overwrite=overwrite, store_path=store.path)
    n, d = store.num_rows, store.dim
    params = spec.resolve(n, d)
    sorted_ids = store.read_ids()
    sorted_ids.sort()  # in place: one 8-byte-per-row array
    check_unique_ids(sorted_ids, where=f"store {store.path}")
    bounds = np.linspace(0, n, params["shards"] + 1).astype(np.int64)
    with atomic_dir(out) as tmp:
        shard_dirs = [tmp / f"shard-{s:05d}" for s in range(params["shards"])]
        for s, sd in enumerate(shard_dirs):
            sd.mkdir()
            np.save(sd / "ids.npy", sorted_ids[bounds[s] : bounds[s + 1]])
            mm = np.lib.format.open_memmap(
                sd / "vectors.npy", mode="w+", dtype=np.float32, shape=(int(bounds[s + 1] - bounds[s]), d)
            )
            del mm
        bar, tick = _progress(n, "reading store", progress)
        for b in store.iter_batches():
            pos = np.searchsorted(sorted_ids, b.ids)
            shard_of = np.searchsorted(bounds, pos, side="right") - 1
            for s in np.unique(shard_of):
                m = shard_of == s
                # Map the file for this batch only: every page a mapping touches counts in the process's
                # resident memory until it is unmapped, and store order scatters rows over the whole file.
                mm = np.load(shard_dirs[s] / "vectors.npy", mmap_mode="r+")
                mm[pos[m] - bounds[s]] = b.embeddings[m]
                del mm
            tick(b.ids.size)
        if bar is not None:
            bar.close()
        trained = None
        if params["kind"] == "ivfpq":
            trained = _train(shard_dirs, bounds, params)
            faiss.write_index(trained, str(tmp / "trained.faiss"))
        manifest = {
            "format": FORMAT,
            "kind": params["kind"],
            "dim": d,
            "ntotal": n,
            "store": {"path": str(store.path.resolve()), "fingerprint": store.fingerprint, "rows": n},
            "params": {k: v for k, v in params.items() if k not in ("kind", "shards")},
            "shards": [
                {
                    "dir": sd.name,
                    "n": int(bounds[s + 1] - bounds[s]),
                    "id_min": int(sorted_ids[bounds[s]]),
                    "id_max": int(sorted_ids[bounds[s + 1] - 1]),
                }
                for s, sd in enumerate(shard_dirs)
            ],
        }
        (fill or fill_shards_local)(
            shard_dirs, params, tmp / "trained.faiss" if trained is not None else None, progress=progress
        )
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return LocalIndex.open(out)


def _train(shard_dirs: list[Path], bounds: np.ndarray, params: dict[str, Any]) -> faiss.Index:
    n = int(bounds[-1])
    rng = np.random.default_rng(params["seed"])
    take = np.sort(rng.choice(n, size=min(n, params["train_size"]), replace=False))
    parts = []
    for s, sd in enumerate(shard_dirs):
        sel = take[(take >= bounds[s]) & (take < bounds[s + 1])] - bounds[s]
        if sel.size:
            parts.append(_RowReader(sd / "vectors.npy")[sel])
    sample = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    return train_ivfpq(sample, nlist=params["nlist"], pq_m=params["pq_m"], seed=params["seed"])


class _RowReader:
    """Read-only rows of a 2-D ``.npy`` file, each read through its own short-lived memory map.

    Streaming through one long-lived memmap would leave every page it touched resident (counted in the
    process's RSS) until the end: all of ``vectors.npy``. Here resident memory stays bounded by one read,
    and reads of sorted row positions go block by block.
    """

    def __init__(self, path: Path, block_rows: int = 65_536):
        self.path = Path(path)
        self.block_rows = block_rows
        mm = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = mm.shape, mm.dtype, mm.ndim
        del mm

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, np.ndarray) and key.ndim == 1 and key.size > self.block_rows:
            return np.concatenate(
                [self[key[s : s + self.block_rows]] for s in range(0, key.size, self.block_rows)]
            )
        mm = np.load(self.path, mmap_mode="r")
        out = np.array(mm[key])  # a copy: the mapping (and its resident pages) goes away with ``mm``
        del mm
        return out


def fill_shard(shard_dir: str | os.PathLike[str], kind: str, trained_path: str | None, progress=None) -> None:
    """Fill one shard folder (ids.npy + vectors.npy present) with its FAISS index. Pure function of files,
    so it can run in any process (a Ray task) that sees the folder."""
    shard_dir = Path(shard_dir)
    if kind != "ivfpq":
        return
    ids = np.load(shard_dir / "ids.npy")
    vectors = _RowReader(shard_dir / "vectors.npy")
    trained = faiss.read_index(str(trained_path))
    shard = IndexShard.build(ids, vectors, kind=kind, trained=trained, progress=progress)
    faiss.write_index(shard.index, str(shard_dir / "index.faiss.tmp"))
    os.replace(shard_dir / "index.faiss.tmp", shard_dir / "index.faiss")


def fill_shards_local(
    shard_dirs: list[Path], params: dict[str, Any], trained_path: Path | None, *, progress: bool = False
) -> None:
    if params["kind"] != "ivfpq":
        return
    total = 0
    for sd in shard_dirs:
        total += int(np.load(sd / "ids.npy", mmap_mode="r").shape[0])
    bar, tick = _progress(total, "adding to IVF-PQ", progress)
    for sd in shard_dirs:
        fill_shard(sd, params["kind"], str(trained_path), progress=tick)
    if bar is not None:
        bar.close()


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The index's ``manifest.json``, checked: anything unreadable, malformed or inconsistent is one
    :class:`IndexError_` line naming the file and how to rebuild it (never a KeyError or TypeError later)."""
    path = Path(path)
    mf = path / "manifest.json"
    if path.exists() and not path.is_dir():
        raise IndexError_(f"index {path} is a file; an index is the folder `seals-gpu index build` writes")
    if not path.is_dir():
        raise IndexError_(f"index {path} does not exist; build one with `seals-gpu index build STORE {path}`")
    if not os.path.lexists(mf):
        raise IndexError_(
            f"{mf} is missing: {path} is not a complete index; rebuild it with `seals-gpu index build`"
        )
    rebuild = f"rebuild it with `seals-gpu index build STORE {path} --force`"
    try:
        m = json.loads(mf.read_bytes())
    except OSError as e:
        raise IndexError_(f"{mf} cannot be read ({e.strerror or e}); {rebuild}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IndexError_(f"{mf} is not valid JSON ({' '.join(str(e).split())}); {rebuild}") from None
    why = _manifest_problem(m)
    if why is not None:
        store = m.get("store") if isinstance(m, dict) else None
        if isinstance(store, dict) and isinstance(store.get("path"), str):
            rebuild = rebuild.replace("STORE", store["path"])
        raise IndexError_(f"{mf}: {why}; {rebuild}")
    return m


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _manifest_problem(m: Any) -> str | None:
    """What is wrong with a parsed manifest (None when nothing is): its keys, their types, its shards."""
    if not isinstance(m, dict):
        return f"it holds a JSON {type(m).__name__}, not an object"
    if m.get("format") != FORMAT:
        return f"format {m.get('format')!r}, expected {FORMAT!r}"
    missing = [k for k in ("kind", "dim", "ntotal", "store", "params", "shards") if k not in m]
    if missing:
        return f"it lacks {', '.join(repr(k) for k in missing)}"
    if m["kind"] not in KINDS:
        return f"kind {m['kind']!r} is not one of {', '.join(KINDS)}"
    if not _is_int(m["dim"], 1) or not _is_int(m["ntotal"]):
        return f"dim {m['dim']!r} and ntotal {m['ntotal']!r} must be integers (dim at least 1)"
    if not isinstance(m["store"], dict) or not isinstance(m["store"].get("fingerprint"), str):
        return "'store' must be an object with the store's 'fingerprint'"
    if not isinstance(m["params"], dict) or not all(
        _is_int(m["params"].get(k, 1), 1) for k in ("nprobe", "rerank", "nlist", "pq_m")
    ):
        return "'params' must be an object of positive integer settings"
    shards = m["shards"]
    if not isinstance(shards, list):
        return f"'shards' holds a {type(shards).__name__}, not a list"
    if not shards:
        return "it lists no shards"
    last = None
    for i, s in enumerate(shards):
        if not isinstance(s, dict) or not all(k in s for k in ("dir", "n", "id_min", "id_max")):
            return f"shard {i} must be an object with 'dir', 'n', 'id_min' and 'id_max'"
        d = s["dir"]
        if not isinstance(d, str) or not d or d in (".", "..") or "/" in d or "\\" in d or "\0" in d:
            return f"shard {i} has dir {d!r}; it must be the name of a folder inside the index"
        if not _is_int(s["n"]) or not all(
            _is_int(s[k], -(2**63)) and s[k] < 2**63 for k in ("id_min", "id_max")
        ):
            return f"shard {i} ({d}) must have an integer 'n' and int64 'id_min' and 'id_max'"
        if s["n"] and s["id_min"] > s["id_max"]:
            return f"shard {i} ({d}) has id_min {s['id_min']} above id_max {s['id_max']}"
        if s["n"] and last is not None and s["id_min"] <= last:
            return f"shard {i} ({d}) starts at id {s['id_min']}, not after the previous shard's ids"
        if s["n"]:
            last = s["id_max"]
    if sum(s["n"] for s in shards) != m["ntotal"]:
        return f"its shards hold {sum(s['n'] for s in shards)} rows but ntotal is {m['ntotal']}"
    return None


class LocalIndex:
    """All shards of an index folder in this process; fans out searches and merges them.

    The same interface as the Ray ShardedIndex: ``search``, ``vectors``, ``iter_vectors``, ``ntotal``,
    ``dim``, ``store_fingerprint``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[IndexShard]):
        self.path = path
        self.manifest = manifest
        self.shards = shards
        self.kind: str = manifest["kind"]
        self.dim: int = int(manifest["dim"])
        self.ntotal: int = int(manifest["ntotal"])
        self.store_fingerprint: str = manifest["store"]["fingerprint"]
        self._id_max = np.array([s["id_max"] for s in manifest["shards"]], dtype=np.int64)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, params: SearchParams | None = None) -> LocalIndex:
        path = Path(path)
        m = read_manifest(path)
        p = m.get("params", {})
        params = params or SearchParams(nprobe=int(p.get("nprobe", 32)), rerank=int(p.get("rerank", 4)))
        shards = []
        for s in m["shards"]:
            sh = IndexShard.load(path / s["dir"], kind=m["kind"], params=params)
            if sh.ntotal != s["n"] or sh.dim != m["dim"]:
                raise IndexError_(
                    f"{path / s['dir']}: holds {sh.ntotal}x{sh.dim}, manifest says "
                    f"{s['n']}x{m['dim']}; rebuild the index"
                )
            shards.append(sh)
        return cls(path, m, shards)

    @classmethod
    def in_memory(cls, store: Store) -> LocalIndex:
        """An exact (flat) single-shard index over ``store`` built in memory: the default for runs without
        ``--index``. Costs n·d·4 bytes."""
        ids = store.read_ids()
        check_unique_ids(ids, where=f"store {store.path}")
        vectors = np.empty((ids.size, store.dim), dtype=np.float32)
        if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):  # stored in id order (usual): plain copies
            order = None
            sorted_ids = ids
        else:
            order = np.argsort(ids, kind="stable")
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            sorted_ids = ids[order]
        pos = 0
        for b in store.iter_batches():
            if order is None:
                vectors[pos : pos + b.ids.size] = b.embeddings
            else:
                vectors[inv[pos : pos + b.ids.size]] = b.embeddings
            pos += b.ids.size
        shard = IndexShard(sorted_ids, vectors, kind="flat")
        manifest = {
            "format": FORMAT,
            "kind": "flat",
            "dim": store.dim,
            "ntotal": int(ids.size),
            "store": {
                "path": str(store.path.resolve()),
                "fingerprint": store.fingerprint,
                "rows": int(ids.size),
            },
            "params": {},
            "shards": [
                {"dir": None, "n": int(ids.size), "id_min": int(sorted_ids[0]), "id_max": int(sorted_ids[-1])}
            ],
        }
        return cls(Path(f"<in-memory flat index of {store.path}>"), manifest, [shard])

    def check_store(self, store: Store) -> None:
        """Refuse an index built from another store (or an older version of this one)."""
        if store.fingerprint != self.store_fingerprint:
            raise IndexError_(
                f"index {self.path} was built from a store with fingerprint {self.store_fingerprint}, but "
                f"{store.path} has {store.fingerprint}; rebuild it with `seals-gpu index build {store.path} "
                f"{self.path} --force`"
            )

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._id_max, np.asarray(ids, dtype=np.int64), side="left")

    def search(
        self, xq: np.ndarray, k: int, *, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        parts = [s.search(xq, k, exclude_ids=exclude_ids) for s in self.shards]
        if len(parts) == 1:
            return parts[0]
        return merge_neighbors(parts, k, rescorer(np.asarray(xq, np.float32), self.vectors))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        owner = self.shard_of(ids)
        if ids.size and owner.max() >= len(self.shards):
            bad = ids[owner >= len(self.shards)][:5].tolist()
            raise IndexError_(f"ids {bad} are not in index {self.path}; pass ids from its store")
        for s in np.unique(owner):
            m = owner == s
            out[m] = self.shards[s].vectors_of(ids[m])
        return out

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        owner = np.minimum(self.shard_of(ids), len(self.shards) - 1)
        out = np.zeros(ids.shape, dtype=bool)
        for s in np.unique(owner):
            m = owner == s
            out[m] = self.shards[s].contains(ids[m])
        return out

    def all_ids(self) -> np.ndarray:
        return np.concatenate([s.ids for s in self.shards])

    def iter_vectors(self, block_rows: int = 262_144) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in self.shards:
            yield from s.iter_vectors(block_rows)

    def describe(self) -> dict[str, Any]:
        return {k: self.manifest[k] for k in ("kind", "dim", "ntotal", "params", "store")} | {
            "shards": len(self.shards)
        }


def open_index(path: str | os.PathLike[str]) -> LocalIndex:
    """Open an index folder in this process."""
    return LocalIndex.open(path)
