"""Ray: shard actors serve the index and score where the vectors live; one run spans a cluster.

One :class:`ShardActor` per index shard. The actor is a thin shell around :class:`ShardServer`, a plain class
(testable without Ray) that loads its shard from disk (vectors memory-mapped) and answers searches, gathers
and scoring calls. :class:`ShardedIndex` has the interface of :class:`~seals_gpu.index.build.LocalIndex`
(fan-out + :func:`~seals_gpu.index.merge.merge_neighbors`) and :class:`RayBackend` has the interface of
:class:`~seals_gpu.backend.LocalBackend`, so the driver cannot tell one process from a cluster.

What crosses the network: query vectors for a search, ids, scores, per-unit weights and small sums. The
pool's vectors never leave their shard in bulk; ``vectors(ids)`` is for labeled sets and test rows.

Fault tolerance (:class:`FaultTolerance`, one place): Ray restarts a dead actor (``max_restarts``), whose
``__init__`` reloads its shard from disk, and re-runs the calls that were in flight (``max_task_retries``);
on top of that the driver retries a call that met a dead or restarting actor a few times with exponential
backoff, and re-creates an actor that Ray gave up on. Every actor method is a read, so retries are safe.

Placement (:func:`assign_shards`, explicit): each shard actor is pinned to a node chosen by the driver
(``NodeAffinitySchedulingStrategy``, soft), one shard per node, or per GPU for ``cuda`` actors, before any
node takes a second; nodes without a CPU (or a GPU, for ``cuda``) take none. Before every call the driver
checks that the nodes of its shards are still alive; a shard whose node left the cluster is re-placed on the
surviving node with the fewest shards and reloads there from the shared path. Both the placement and every
move go to the run log (``ShardedIndex.placement_lines``, the ``log`` callback).

On a real cluster the index folder must be on a filesystem every node sees (NFS, Lustre, a FUSE-mounted
bucket), at the same path, and ``seals_gpu`` must be importable on every node (same environment, or a
Ray ``runtime_env``).

The train/test split stays with the shards too: ``RayBackend(index, excluded=store.path)`` has every actor
read its own rows' split from the store, and ``backend.split`` (:mod:`seals_gpu.split`) answers the
driver's questions (sizes, membership, train ids by rank) without a list of ids in the driver.

Example:
    >>> with ray_session(None):                                             # doctest: +SKIP
    ...     backend = RayBackend("idx", excluded="data/store", device=resolve_device("cpu"))
    ...     backend.split.train.size, backend.split.test.contains(ids)
    ...     D, I = backend.search(backend.vectors(ids), 100, exclude_ids=ids)
    ...     backend.close()
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backend import LocalBackend, sub_csr
from .device import DeviceChoice, resolve_device
from .errors import ConfigError, IndexError_, SealsError
from .evaluate import Group
from .index.build import FORMAT, LocalIndex, fill_shard, read_manifest
from .index.merge import merge_neighbors, rescorer
from .index.shard import IndexShard, SearchParams
from .pool import isin_sorted
from .scoring import TopB, merge_topb
from .split import Split

__all__ = [
    "DEFAULT_FAULT_TOLERANCE",
    "FaultTolerance",
    "NodeSlot",
    "RayBackend",
    "ShardActor",
    "ShardServer",
    "ShardedIndex",
    "assign_shards",
    "node_slots",
    "ray_fill",
    "ray_session",
]

_SUM_CHUNK = 65_536  # LocalBackend.sum_vectors' chunk: the same order of float64 additions per chunk


# ---------------------------------------------------------------------------------------------- Ray plumbing
def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "Ray is not installed, but --ray / --ray-address / RAY_ADDRESS asks for it; "
            "install it with `pip install 'seals_gpu[dist]'`"
        ) from None
    return ray


def _retryable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'the actor died or is restarting', not 'the call is wrong'."""
    import ray.exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def _last_error_line(e: BaseException) -> str:
    """The remote exception's own one-line message from a Ray error's text (``module.Class: message``)."""
    lines = [ln.strip() for ln in str(getattr(e, "error_msg", None) or e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        head, sep, msg = ln.partition(": ")
        if sep and head.rsplit(".", 1)[-1].endswith(("Error", "Error_", "Exception")) and " " not in head:
            return msg
    return lines[-1] if lines else type(e).__name__


@dataclass(frozen=True)
class FaultTolerance:
    """How shard actors survive failures; the defaults live here and nowhere else.

    Attributes:
        max_restarts: Ray restarts a dead actor this many times (-1: without limit); a restarted actor
            reloads its shard from disk in ``__init__``.
        max_task_retries: calls in flight when an actor died are re-run on the restarted actor this many
            times (bounded, so a call that itself kills the actor cannot loop forever).
        call_retries: the driver resubmits a call that still met a dead or restarting actor this many times.
        backoff_s: first wait before a driver-side retry; doubled each time.
        ready_timeout_s: how long to wait for actors to load their shards (and for a ping after a failure).
    """

    max_restarts: int = -1
    max_task_retries: int = 3
    call_retries: int = 4
    backoff_s: float = 0.5
    ready_timeout_s: float = 600.0

    def actor_options(self) -> dict[str, Any]:
        return {"max_restarts": self.max_restarts, "max_task_retries": self.max_task_retries}


DEFAULT_FAULT_TOLERANCE = FaultTolerance()


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Make sure Ray is initialised for the block; yields the ``ray`` module.

    - Ray already initialised (a test fixture, a notebook): reuse it, leave it running.
    - ``address`` given, or the ``RAY_ADDRESS`` environment variable set: connect to that cluster; at the
      end this driver disconnects, the cluster keeps running.
    - neither: start a local Ray on this machine (``num_cpus`` default ``os.cpu_count()``, no dashboard,
      worker logs not forwarded) and shut it down at the end.

    Raises:
        ConfigError: Ray is not installed (names ``pip install 'seals_gpu[dist]'``), or the cluster at
            ``address`` cannot be reached.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(
                # "local": a new instance even when `ray start` left an address in /tmp/ray on this machine
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                **quiet,
            )
    except ConnectionError as e:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address!r} ({e}); check the address (`ray status` on the "
            "head node) or drop --ray-address / RAY_ADDRESS to run locally"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------------------ placement
@dataclass(frozen=True)
class NodeSlot:
    """A node that can host shard actors.

    Attributes:
        node_id: Ray's node id (hex).
        address: the node's IP address, for the run log.
        cpus: the node's CPUs (threads for the actors placed there).
        slots: shards the node takes before any node takes more than its share: its GPUs for ``cuda``
            actors, else 1 (one shard per node).
    """

    node_id: str
    address: str
    cpus: float
    slots: int


def node_slots(nodes: Sequence[dict[str, Any]], gpus_per_actor: float = 0.0) -> list[NodeSlot]:
    """The alive nodes of ``ray.nodes()`` that can host a shard actor, in a stable order (address, id).

    A CPU actor needs a node with at least one CPU (Ray schedules an actor on a CPU even though it holds none
    while running); a GPU actor needs ``gpus_per_actor`` GPUs there.
    """
    out = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        cpus, gpus = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        if gpus_per_actor > 0:
            if gpus < gpus_per_actor:
                continue
            slots = max(1, int(gpus))
        elif cpus >= 1:
            slots = 1
        else:
            continue
        out.append(NodeSlot(str(n["NodeID"]), str(n.get("NodeManagerAddress", "?")), cpus, slots))
    return sorted(out, key=lambda x: (x.address, x.node_id))


def assign_shards(
    n_shards: int, nodes: Sequence[NodeSlot], keep: dict[int, str | None] | None = None
) -> list[str | None]:
    """The node of every shard: the shards in ``keep`` whose node is among ``nodes`` stay there; each other
    shard, in shard order, goes to the node with the lowest load (shards / slots), ties to the node with
    fewer shards, then to the earlier node. ``None`` for every shard when no node can host one.

    Example:
        >>> a, b = NodeSlot("a", "10.0.0.1", 8, 1), NodeSlot("b", "10.0.0.2", 8, 1)
        >>> assign_shards(3, [a, b])
        ['a', 'b', 'a']
        >>> assign_shards(3, [a], keep={0: "a", 1: "gone", 2: "a"})
        ['a', 'a', 'a']
    """
    if not nodes:
        return [None] * n_shards
    where = {n.node_id: i for i, n in enumerate(nodes)}
    count = [0] * len(nodes)
    out: list[str | None] = [None] * n_shards
    for s, node in (keep or {}).items():
        if node in where and 0 <= s < n_shards:
            out[s] = node
            count[where[node]] += 1
    for s in range(n_shards):
        if out[s] is None:
            i = min(range(len(nodes)), key=lambda j: (count[j] / nodes[j].slots, count[j], j))
            out[s] = nodes[i].node_id
            count[i] += 1
    return out


def _short(node_id: str | None) -> str:
    return node_id[:12] if node_id else "?"


# ------------------------------------------------------------------------------------------------- ray_fill
def _get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get`` that re-raises a task's own :class:`SealsError` (one clear line, no remote traceback)."""
    ray = _import_ray()
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, SealsError):
            raise cause from None
        raise


def _fill_task(shard_dir: str, kind: str, trained_path: str | None) -> None:
    fill_shard(shard_dir, kind, trained_path)


def ray_fill(
    shard_dirs: Sequence[str | os.PathLike[str]],
    params: dict[str, Any],
    trained_path: str | os.PathLike[str] | None,
    *,
    progress: bool = False,
) -> None:
    """Fill every shard's FAISS index in parallel Ray tasks (the ``fill=`` hook of ``build_index``).

    ``build_index`` first streams the store into each shard's memory-mapped ``ids.npy`` / ``vectors.npy``
    and trains the shared quantizer; each task then runs :func:`~seals_gpu.index.build.fill_shard`, a pure
    function of those files. On a real cluster the index's output folder (and the temporary folder beside
    it) must therefore be on a filesystem every node sees at the same path.

    Args:
        shard_dirs: the shard folders.
        params: the resolved build parameters (``params["kind"]``).
        trained_path: the trained empty IndexIVFPQ (ivfpq only).
        progress: show a bar of shards filled.
    """
    if params.get("kind") != "ivfpq":
        return
    ray = _import_ray()
    if not ray.is_initialized():
        raise ConfigError("ray_fill needs a Ray session; wrap the build in `with ray_session(address):`")
    task = ray.remote(max_retries=2)(_fill_task)
    trained = None if trained_path is None else str(trained_path)
    pending = [task.remote(str(Path(sd).resolve()), params["kind"], trained) for sd in shard_dirs]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc="filling shards (ray)", unit="shard", leave=False)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            _get(done)  # raises the task's own error (e.g. IndexError_) if it failed
            if bar is not None:
                bar.update(len(done))
    finally:
        if bar is not None:
            bar.close()


# ------------------------------------------------------------------------------------------- ShardServer
def _as_params(params: SearchParams | dict[str, Any] | None) -> SearchParams:
    if params is None or isinstance(params, SearchParams):
        return params or SearchParams()
    return SearchParams(nprobe=int(params.get("nprobe", 32)), rerank=int(params.get("rerank", 4)))


def _topb_from_numpy(parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> TopB:
    # np.array copies: arrays from Ray's object store are read-only, torch wants writeable memory
    return TopB(*(torch.from_numpy(np.array(a)) for a in parts))


def _merge_parts(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_units: int, b: int) -> TopB:
    """Merge per-shard ``(ids, scores, counts)`` results with ``merge_topb`` (exact; any order)."""
    result = TopB.empty(n_units, int(b))
    for i, part in enumerate(parts):
        top = _topb_from_numpy(part)
        result = top if i == 0 else merge_topb(result, top, b)
    return result


def _units(W: Any, bias: Any, kind: Any, ref: Any) -> tuple[torch.Tensor | None, ...]:
    """Per-unit model arrays (numpy from the driver) as CPU tensors; None stays None."""
    return tuple(None if a is None else torch.as_tensor(a) for a in (W, bias, kind, ref))


class ShardServer:
    """Everything one shard actor does, as a plain class: load a shard, search it, score its candidates.

    Args:
        shard_dir: the shard folder (``ids.npy``, ``vectors.npy``, ``index.faiss`` for ivfpq).
        kind: ``"flat"`` or ``"ivfpq"`` (the index manifest's kind).
        params: query-time knobs (nprobe, rerank), as :class:`SearchParams` or a dict.
        excluded: sorted ids never scored (the test split); only those this shard owns are kept. Or a dict
            ``{"store": path, "fingerprint": fp}``: the shard reads its own test ids from that store (see
            :func:`~seals_gpu.split.shard_test_ids`), so no id list has to come from the driver.
        device_name: where scoring runs (``"cpu"``, ``"cuda"``, ``"auto"``).
        block_rows: rows per block when streaming the shard (All-mode scoring, candidate sums).
        threads: CPU threads for FAISS and torch in this process (None: leave as is).
        scoring_backend: ``score_select``'s backend (``"auto"``, ``"torch"``, ``"cuda"``).

    Example:
        >>> srv = ShardServer("idx/shard-00000", "flat", None, test_ids, "cpu")   # doctest: +SKIP
        >>> D, I = srv.search(xq, 10, None)                                     # doctest: +SKIP
    """

    def __init__(
        self,
        shard_dir: str | os.PathLike[str],
        kind: str,
        params: SearchParams | dict[str, Any] | None,
        excluded: np.ndarray | dict[str, Any] | None,
        device_name: str = "cpu",
        *,
        block_rows: int = 131_072,
        threads: int | None = None,
        scoring_backend: str = "auto",
    ):
        if threads is not None:
            import faiss

            faiss.omp_set_num_threads(int(threads))
            torch.set_num_threads(int(threads))
        self.shard_dir = Path(shard_dir)
        self.shard = IndexShard.load(self.shard_dir, kind=kind, params=_as_params(params), mmap=True)
        ids = self.shard.ids
        if isinstance(excluded, dict):
            from .split import shard_test_ids

            self.excluded = shard_test_ids(str(excluded["store"]), excluded.get("fingerprint"), ids)
        else:
            excl = np.sort(np.asarray(excluded if excluded is not None else [], dtype=np.int64))
            self.excluded = excl[self.shard.contains(excl)] if excl.size else excl
        self.block_rows = int(block_rows)
        self.device = resolve_device(device_name)
        manifest = {
            "format": FORMAT,
            "kind": kind,
            "dim": self.shard.dim,
            "ntotal": self.shard.ntotal,
            "store": {"path": None, "fingerprint": None, "rows": self.shard.ntotal},
            "params": {},
            "shards": [
                {
                    "dir": self.shard_dir.name,
                    "n": self.shard.ntotal,
                    "id_min": int(ids[0]) if ids.size else 0,
                    "id_max": int(ids[-1]) if ids.size else -1,
                }
            ],
        }
        self.index = LocalIndex(self.shard_dir, manifest, [self.shard])
        self.backend = LocalBackend(
            self.index,
            self.device,
            excluded=self.excluded,
            block_rows=self.block_rows,
            scoring_backend=scoring_backend,
            # neighbours among this shard's train rows only (exact for flat shards; IVF-PQ filters)
            search_method="flat" if kind == "flat" else "index",
        )

    # ------------------------------------------------------------------ description
    def ready(self) -> dict[str, Any]:
        """Loaded: ``{n, dim, id_min, id_max, pid, device}``."""
        ids = self.shard.ids
        return {
            "n": self.shard.ntotal,
            "dim": self.shard.dim,
            "id_min": int(ids[0]) if ids.size else None,
            "id_max": int(ids[-1]) if ids.size else None,
            "pid": os.getpid(),
            "device": str(self.device.torch_device),
        }

    def pid(self) -> int:
        return os.getpid()

    # ------------------------------------------------------------------ index
    def search(
        self, xq: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """This shard's top-``k`` train rows for each query (see :meth:`LocalBackend.search`)."""
        return self.backend.search(xq, k, exclude_ids)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Exact float32 vectors of ``ids`` (all owned by this shard)."""
        return self.shard.vectors_of(ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` this shard owns (bool)."""
        return self.shard.contains(ids)

    owns = contains

    def ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The sorted ids of rows ``[start, stop)`` of this shard."""
        return np.asarray(self.shard.ids[start:stop], dtype=np.int64)

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[start, stop)``: ``(ids, vectors)``. Moves vectors: small tools only."""
        return self.ids(start, stop), np.ascontiguousarray(self.shard.vectors[start:stop], dtype=np.float32)

    def graph_part(
        self, start: int, stop: int, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``[start, stop)`` of this shard as queries for the kNN graph.

        Returns:
            ``(ids, xq, D, I)``: the rows' ids and vectors (to be searched on the other shards) and their
            top-``k`` in this shard, each query excluding itself.
        """
        n = self.shard.ntotal
        if not (0 <= start <= stop <= n):
            raise IndexError_(f"graph part rows [{start}, {stop}) are outside this shard's {n} rows")
        ids, xq = self.block(start, stop)
        sims, nbrs = self.backend.search(xq, k, ids)
        return ids, xq, sims, nbrs

    # ------------------------------------------------------------------ scoring
    def _candidate_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, x in self.shard.iter_vectors(self.block_rows):
            keep = ~isin_sorted(ids, self.excluded)
            if not keep.all():
                ids, x = ids[keep], x[keep]
            if ids.size:
                yield ids, x

    def candidate_sum(self) -> tuple[np.ndarray, int]:
        """Per-block float64 sums (n_blocks, d) of this shard's candidate vectors, and their count.

        Per block, not one total, so the driver adds them in :class:`LocalBackend`'s exact order.
        """
        sums = []
        count = 0
        for ids, x in self._candidate_blocks():
            sums.append(x.astype(np.float64).sum(axis=0))
            count += int(ids.size)
        out = np.stack(sums) if sums else np.zeros((0, self.shard.dim), dtype=np.float64)
        return out, count

    def sum_vectors(self, ids: np.ndarray) -> np.ndarray:
        """float64 (d,) sum of the vectors of ``ids`` (all owned by this shard)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(self.shard.dim, dtype=np.float64)
        for s in range(0, ids.size, _SUM_CHUNK):
            out += self.shard.vectors_of(ids[s : s + _SUM_CHUNK]).astype(np.float64).sum(axis=0)
        return out

    def score_pool(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        W: Any,
        bias: Any,
        kind: Any,
        ref: Any,
        beta: float,
        b: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-``b`` per unit of this shard's part of a CSR candidate batch; ``(ids, scores, counts)``."""
        W, bias, kind, ref = _units(W, bias, kind, ref)
        ids = np.asarray(ids, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        top = self.backend.score_pool(ids, offsets, W, bias, kind, ref, beta, b)
        return top.numpy()

    def score_all(
        self,
        exclude: list[np.ndarray],
        W: Any,
        bias: Any,
        kind: Any,
        ref: Any,
        beta: float,
        b: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All mode over this shard's candidates, each unit skipping its ``exclude`` ids."""
        W, bias, kind, ref = _units(W, bias, kind, ref)
        top = self.backend.score_all(exclude, W, bias, kind, ref, beta, b)
        return top.numpy()

    def random_all(
        self, exclude: list[np.ndarray], keys: list[int], seed: int, round_no: int, b: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All-mode Random over this shard's train rows (see :meth:`LocalBackend.random_all`)."""
        return self.backend.random_all(exclude, keys, seed, round_no, b).numpy()

    def group_logits(self, groups: list[Group], W: Any, bias: Any) -> list[np.ndarray]:
        """Test AP's pass 1 for the ids of each group that this shard owns (see :mod:`seals_gpu.evaluate`)."""
        W, bias, _, _ = _units(W, bias, None, None)
        return self.backend.group_logits(groups, W, bias)

    def test_counts(
        self, W: Any, bias: Any, thresholds: list[np.ndarray], groups: list[Group]
    ) -> list[np.ndarray]:
        """Test AP's pass 2 over this shard's own test rows: per unit, counts at or above each threshold."""
        W, bias, _, _ = _units(W, bias, None, None)
        return self.backend.test_counts(W, bias, thresholds, groups)

    def split(self, method: str, *args: Any) -> Any:
        """A :class:`~seals_gpu.split.ShardSplit` question about this shard's train/test rows (``counts``,
        ``codes``, ``take``, ``side_ids``)."""
        if method not in ("counts", "codes", "take", "side_ids"):
            raise ValueError(f"split method {method!r}: choose counts, codes, take or side_ids")
        return getattr(self.backend.split_part(0), method)(*args)


class ShardActor:
    """The Ray actor: a thin shell around :class:`ShardServer`; state is built once in ``__init__``.

    Made remote by :func:`_remote_actor` (Ray is an optional dependency). When Ray restarts the actor,
    ``__init__`` runs again and reloads the shard from disk.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.server = ShardServer(*args, **kwargs)

    def ready(self) -> dict[str, Any]:
        """:meth:`ShardServer.ready` and ``node_id``: the node this actor runs on."""
        return {**self.server.ready(), "node_id": _import_ray().get_runtime_context().get_node_id()}

    def pid(self) -> int:
        return self.server.pid()

    def search(self, xq, k, exclude_ids=None):
        return self.server.search(xq, k, exclude_ids)

    def vectors(self, ids):
        return self.server.vectors(ids)

    def contains(self, ids):
        return self.server.contains(ids)

    def ids(self, start=0, stop=None):
        return self.server.ids(start, stop)

    def block(self, start, stop):
        return self.server.block(start, stop)

    def graph_part(self, start, stop, k):
        return self.server.graph_part(start, stop, k)

    def candidate_sum(self):
        return self.server.candidate_sum()

    def sum_vectors(self, ids):
        return self.server.sum_vectors(ids)

    def score_pool(self, ids, offsets, W, bias, kind, ref, beta, b):
        return self.server.score_pool(ids, offsets, W, bias, kind, ref, beta, b)

    def score_all(self, exclude, W, bias, kind, ref, beta, b):
        return self.server.score_all(exclude, W, bias, kind, ref, beta, b)

    def random_all(self, exclude, keys, seed, round_no, b):
        return self.server.random_all(exclude, keys, seed, round_no, b)

    def group_logits(self, groups, W, bias):
        return self.server.group_logits(groups, W, bias)

    def test_counts(self, W, bias, thresholds, groups):
        return self.server.test_counts(W, bias, thresholds, groups)

    def split(self, method, *args):
        return self.server.split(method, *args)


_REMOTE: dict[str, Any] = {}


def _remote_actor():
    if "actor" not in _REMOTE:
        _REMOTE["actor"] = _import_ray().remote(ShardActor)
    return _REMOTE["actor"]


# ------------------------------------------------------------------------------------------- ShardedIndex
class ShardedIndex:
    """An index folder served by one Ray actor per shard; the interface of :class:`LocalIndex`.

    ``search`` sends every query to every shard in one call each and merges with ``merge_neighbors``;
    ``vectors`` / ``contains`` route ids to their owner by the manifest's id ranges. Needs a Ray session
    (:func:`ray_session`).

    Args:
        index_path: the index folder (on a filesystem every node sees).
        params: query-time knobs; default from the manifest.
        excluded: sorted ids never scored (the test split), for :class:`RayBackend`; or a store folder
            (str or Path) whose split every shard actor reads for its own id range, so the driver holds no
            id list (``RayBackend(..., excluded=store.path)``).
        device: where the actors score (``"cpu"``, ``"cuda"``, ``"auto"``); cuda reserves GPUs.
        threads_per_actor: FAISS/torch threads per actor (default: its node's cores / shards on that node).
        block_rows: rows per block when an actor streams its shard.
        scoring_backend: ``score_select``'s backend on the actors.
        fault: restart and retry settings.
        log: where a shard that moves to another node is reported (one line each); the initial placement
            is in :meth:`placement_lines`.

    Attributes:
        node_of: the node id of each shard (see :func:`assign_shards`); None where no node could be chosen
            (Ray's SPREAD scheduling then picks one).
        placement: per shard, what its actor reported when it loaded: ``n``, ``dim``, ``pid``, ``node_id``.
    """

    def __init__(
        self,
        index_path: str | os.PathLike[str],
        *,
        params: SearchParams | None = None,
        excluded: np.ndarray | str | os.PathLike[str] | None = None,
        device: str = "cpu",
        threads_per_actor: int | None = None,
        block_rows: int = 131_072,
        scoring_backend: str = "auto",
        fault: FaultTolerance = DEFAULT_FAULT_TOLERANCE,
        log: Callable[[str], None] | None = None,
    ):
        ray = _import_ray()
        if not ray.is_initialized():
            raise ConfigError("ShardedIndex needs a Ray session; open one with `with ray_session(address):`")
        self.path = Path(index_path).resolve()
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.kind: str = m["kind"]
        self.dim: int = int(m["dim"])
        self.ntotal: int = int(m["ntotal"])
        self.store_fingerprint: str = m["store"]["fingerprint"]
        self.n_shards = len(m["shards"])
        self.id_min = np.array([s["id_min"] for s in m["shards"]], dtype=np.int64)
        self.id_max = np.array([s["id_max"] for s in m["shards"]], dtype=np.int64)
        self._sizes = np.array([s["n"] for s in m["shards"]], dtype=np.int64)
        p = m.get("params", {})
        self.params = params or SearchParams(nprobe=int(p.get("nprobe", 32)), rerank=int(p.get("rerank", 4)))
        self.fault = fault
        self._log: Callable[[str], None] = log or (lambda _line: None)
        from_store = isinstance(excluded, (str, os.PathLike))
        excl = (
            np.empty(0, np.int64)
            if from_store
            else np.sort(np.asarray(excluded if excluded is not None else [], dtype=np.int64))
        )
        resources = ray.cluster_resources()
        nodes = ray.nodes()
        n_nodes = max(1, sum(1 for n in nodes if n.get("Alive")))
        cpus_per_node = int(resources.get("CPU", os.cpu_count() or 1)) // n_nodes
        self._threads_per_actor = threads_per_actor
        self._spread_threads = max(1, cpus_per_node // math.ceil(self.n_shards / n_nodes))
        options: dict[str, Any] = dict(fault.actor_options())
        self._gpus_per_actor = 0.0
        if device.startswith("cuda"):
            gpus = float(resources.get("GPU", 0))
            if gpus <= 0:
                raise ConfigError(
                    f"device {device!r} for the shard actors, but the Ray cluster has no GPUs; "
                    "start the workers with GPUs or pass --device cpu"
                )
            self._gpus_per_actor = options["num_gpus"] = min(1.0, gpus / self.n_shards)
            device = "cuda"
        self._nodes: dict[str, dict[str, Any]] = {}
        self.node_of: list[str | None] = assign_shards(self.n_shards, self._refresh_nodes(nodes))
        self.placement: list[dict[str, Any]] = [{} for _ in range(self.n_shards)]
        common = {
            "kind": self.kind,
            "params": self.params,
            "device_name": device,
            "block_rows": block_rows,
            "scoring_backend": scoring_backend,
        }
        self._make = []
        for s in range(self.n_shards):
            if from_store:
                own: Any = {"store": str(Path(excluded).resolve()), "fingerprint": self.store_fingerprint}
            else:
                lo = np.searchsorted(excl, self.id_min[s], side="left")
                hi = np.searchsorted(excl, self.id_max[s], side="right")
                own = excl[lo:hi]
            self._make.append(self._actor_factory(s, options, {**common, "excluded": own}))
        self.actors = [make() for make in self._make]
        try:
            infos = self.call(lambda: [a.ready.remote() for a in self.actors], timeout=fault.ready_timeout_s)
        except BaseException:
            self.close()
            raise
        for s, info in enumerate(infos):
            if info["n"] != int(self._sizes[s]) or info["dim"] != self.dim:
                self.close()
                raise IndexError_(
                    f"{self.path / m['shards'][s]['dir']}: holds {info['n']}x{info['dim']}, manifest says "
                    f"{self._sizes[s]}x{self.dim}; rebuild the index"
                )
            self._record(s, info)

    def _actor_factory(self, s: int, options: dict[str, Any], kwargs: dict[str, Any]) -> Callable[[], Any]:
        """A function that starts shard ``s``'s actor on ``node_of[s]`` (read when it is called)."""
        shard_dir = str(self.path / self.manifest["shards"][s]["dir"])
        cls = _remote_actor()
        # the excluded ids can be large: put them once and hold the reference here for the index's
        # lifetime, so a restarted actor can still read its constructor arguments (ray-project/ray#53727)
        excluded_ref = _import_ray().put(kwargs.pop("excluded"))

        def make() -> Any:
            node = self.node_of[s]
            strategy: Any = "SPREAD"
            if node is not None:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                # soft: a node that is full or has just left does not block the shard; where it really
                # landed is read back from its ready() and checked before every call
                strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
            return cls.options(**options, scheduling_strategy=strategy).remote(
                shard_dir, excluded=excluded_ref, threads=self._threads(s), **kwargs
            )

        return make

    # ------------------------------------------------------------------ placement
    def _refresh_nodes(self, nodes: list[dict[str, Any]] | None = None) -> list[NodeSlot]:
        """Re-read the cluster's nodes (``ray.nodes()`` unless given); the ones that can host a shard."""
        if nodes is None:
            nodes = _import_ray().nodes()
        self._nodes = {str(n["NodeID"]): n for n in nodes if n.get("Alive")}
        return node_slots(nodes, self._gpus_per_actor)

    def _threads(self, s: int) -> int:
        """FAISS/torch threads for shard ``s``'s actor: its node's CPUs shared by the shards placed there."""
        if self._threads_per_actor:
            return int(self._threads_per_actor)
        node = self.node_of[s]
        cpus = float((self._nodes.get(node or "", {}).get("Resources") or {}).get("CPU", 0.0))
        if node is None or cpus < 1:
            return self._spread_threads
        return max(1, int(cpus) // sum(1 for n in self.node_of if n == node))

    def _record(self, s: int, info: dict[str, Any]) -> None:
        """Shard ``s``'s actor answered ``ready()``: remember where it really runs."""
        self.placement[s] = dict(info)
        if info.get("node_id"):
            self.node_of[s] = str(info["node_id"])

    def _where(self, node: str | None) -> str:
        if node is None:
            return "a node of Ray's choosing"
        address = self._nodes.get(node, {}).get("NodeManagerAddress", "?")
        return f"node {_short(node)} ({address})"

    def placement_lines(self) -> list[str]:
        """One line per shard for the run log: which shard, on which node, in which process."""
        shards = self.manifest["shards"]
        n_nodes = len({n for n in self.node_of if n is not None})
        lines = [f"ray: {self.n_shards} shard actor(s) on {n_nodes} node(s)"]
        for s in range(self.n_shards):
            pid = self.placement[s].get("pid", "?")
            lines.append(
                f"ray: shard {s} ({shards[s]['dir']}, {int(self._sizes[s])} rows) on "
                f"{self._where(self.node_of[s])}, pid {pid}"
            )
        return lines

    def _replace_lost(self) -> None:
        """Shards whose node has left the cluster: start their actor again on a surviving node.

        Ray alone would restart such an actor on a node of its choosing (the affinity is soft); the driver
        puts it on the surviving node with the fewest shards instead, so the shards stay spread, and says so.
        """
        if not self.actors:
            return
        ray = _import_ray()
        slots = self._refresh_nodes()
        lost = [s for s, node in enumerate(self.node_of) if node is not None and node not in self._nodes]
        if not lost:
            return
        keep = {s: node for s, node in enumerate(self.node_of) if s not in lost}
        plan = assign_shards(self.n_shards, slots, keep)
        for s in lost:
            gone = self.node_of[s]
            with contextlib.suppress(Exception):
                ray.kill(self.actors[s], no_restart=True)
            self.node_of[s] = plan[s]
            self.actors[s] = self._make[s]()
            self._log(
                f"ray: node {_short(gone)} left the cluster; shard {s} "
                f"({self.manifest['shards'][s]['dir']}) reloads on {self._where(plan[s])}"
            )
        import ray.exceptions as rex

        try:
            infos = _get([self.actors[s].ready.remote() for s in lost], timeout=self.fault.ready_timeout_s)
        except (*_retryable_errors(), rex.GetTimeoutError):
            return  # the call that follows retries, or says what is wrong
        for s, info in zip(lost, infos, strict=True):
            self._record(s, info)
            self._log(
                f"ray: shard {s} reloaded on {self._where(self.node_of[s])}, pid {info.get('pid', '?')}"
            )

    # ------------------------------------------------------------------ calls with retries
    def call(self, submit: Callable[[], list[Any]], *, timeout: float | None = None) -> list[Any]:
        """Submit calls (``submit()`` returns object refs) and get them, resubmitting after actor failures."""
        import ray.exceptions as rex

        errors = _retryable_errors()
        attempt = 0
        while True:
            try:
                self._replace_lost()
                return _get(submit(), timeout=timeout)
            except rex.GetTimeoutError:
                raise ConfigError(
                    f"the shard actors of {self.path} did not answer within {timeout:.0f}s; check `ray status` "
                    "for free CPUs/GPUs and memory, and that every node sees the index folder"
                ) from None
            except errors as e:
                # __init__ raised (a missing or corrupt shard): a restart would fail the same way
                if getattr(e, "actor_init_failed", False):
                    raise IndexError_(
                        f"a shard actor of {self.path} could not load its shard: {_last_error_line(e)}"
                    ) from None
                if attempt >= self.fault.call_retries:
                    raise IndexError_(
                        f"a shard actor of {self.path} kept failing after {attempt + 1} tries "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the Ray "
                        "logs (`ray logs`), the workers' memory, and that every node sees the index folder"
                    ) from e
                time.sleep(self.fault.backoff_s * 2**attempt)
                attempt += 1
                self._revive()

    def _revive(self) -> None:
        """Re-create actors that Ray has given up on (restarting ones are left to Ray)."""
        ray = _import_ray()
        import ray.exceptions as rex

        died = getattr(rex, "ActorDiedError", rex.RayActorError)
        self._replace_lost()
        for s, a in enumerate(self.actors):
            try:
                ray.get(a.pid.remote(), timeout=self.fault.ready_timeout_s)
            except died:
                self.actors[s] = self._make[s]()
            except Exception:  # still restarting or unreachable: the next try will tell
                pass

    def gather(self, refs: list[Any], resubmit: Callable[[], list[Any]]) -> list[Any]:
        """Get calls submitted earlier (pipelined); if an actor died meanwhile, go through :meth:`call`."""
        try:
            return _get(refs)
        except _retryable_errors():
            return self.call(resubmit)

    def each(self, method: str, args_of: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        """Call ``method`` on the shards in ``args_of`` in parallel; results by shard."""
        order = sorted(args_of)
        res = self.call(lambda: [getattr(self.actors[s], method).remote(*args_of[s]) for s in order])
        return dict(zip(order, res, strict=True))

    # ------------------------------------------------------------------ LocalIndex interface
    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """Owner shard of each id by the manifest's id ranges (``n_shards`` for ids above every range)."""
        return np.searchsorted(self.id_max, np.asarray(ids, dtype=np.int64), side="left")

    def owners(self, ids: np.ndarray) -> np.ndarray:
        owner = self.shard_of(ids)
        if ids.size and owner.max() >= self.n_shards:
            bad = ids[owner >= self.n_shards][:5].tolist()
            raise IndexError_(f"ids {bad} are not in index {self.path}; pass ids from its store")
        return owner

    def search(
        self, xq: np.ndarray, k: int, *, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by cosine similarity over every shard: ``(D, I)`` (nq, k); a slot is a neighbour iff its
        ``D`` is finite (missing: ``-inf`` / ``-1``; any int64, -1 included, is a legal id)."""
        ray = _import_ray()
        if k < 1:
            raise IndexError_(f"k={k}; the number of neighbours must be at least 1")
        xq = np.asarray(xq)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise IndexError_(f"queries must have shape (nq, {self.dim}), got {xq.shape}; reshape your data")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if not np.isfinite(xq).all():
            raise IndexError_("queries contain NaN or inf; pass finite, l2-normalised vectors")
        ex = None if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)

        def submit() -> list[Any]:
            # put once per try, shared by every shard (a retry after a node loss puts them again)
            xq_ref, ex_ref = ray.put(xq), ray.put(ex)
            return [a.search.remote(xq_ref, k, ex_ref) for a in self.actors]

        parts = self.call(submit)
        return parts[0] if len(parts) == 1 else merge_neighbors(parts, k, rescorer(xq, self.vectors))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Exact float32 vectors of ``ids`` from their owner shards (labeled sets, test rows)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        if not ids.size:
            return out
        owner = self.owners(ids)
        masks = {int(s): owner == s for s in np.unique(owner)}
        res = self.each("vectors", {s: (ids[m],) for s, m in masks.items()})
        for s, m in masks.items():
            out[m] = res[s]
        return out

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        owner = np.minimum(self.shard_of(ids), self.n_shards - 1)
        out = np.zeros(ids.shape, dtype=bool)
        masks = {int(s): owner == s for s in np.unique(owner)}
        res = self.each("contains", {s: (ids[m],) for s, m in masks.items()})
        for s, m in masks.items():
            out[m] = res[s]
        return out

    def all_ids(self) -> np.ndarray:
        parts = self.call(lambda: [a.ids.remote() for a in self.actors])
        return np.concatenate(parts)

    def iter_vectors(self, block_rows: int = 262_144) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(ids, vectors)`` blocks from the actors. Moves every vector: small tools only."""
        for s in range(self.n_shards):
            for start in range(0, int(self._sizes[s]), block_rows):
                stop = min(int(self._sizes[s]), start + block_rows)
                yield self.each("block", {s: (start, stop)})[s]

    def check_store(self, store: Any) -> None:
        """Refuse an index built from another store (or an older version of this one)."""
        if store.fingerprint != self.store_fingerprint:
            raise IndexError_(
                f"index {self.path} was built from a store with fingerprint {self.store_fingerprint}, but "
                f"{store.path} has {store.fingerprint}; rebuild it with `seals-gpu index build {store.path} "
                f"{self.path} --force`"
            )

    def describe(self) -> dict[str, Any]:
        return {k: self.manifest[k] for k in ("kind", "dim", "ntotal", "params", "store")} | {
            "shards": self.n_shards,
            "actors": "ray",
            "placement": [{"shard": s, "node_id": n} for s, n in enumerate(self.node_of)],
        }

    def close(self) -> None:
        """Stop the actors (for good: no restart)."""
        ray = _import_ray()
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        self.actors = []

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- RayBackend
def _host(t: Any) -> Any:
    """A tensor as host numpy (exact: float32 stays float32); None passes through."""
    if t is None:
        return None
    if torch.is_tensor(t):
        return t.detach().cpu().numpy()
    return np.asarray(t)


class RayBackend:
    """The driver's backend over Ray shard actors: the methods of :class:`~seals_gpu.backend.LocalBackend`.

    Every call fans out to the shards that own the ids involved, in parallel, and merges: kNN results with
    ``merge_neighbors``, top-b with ``merge_topb``. Selections equal those of a ``LocalBackend`` over the
    same index folder (same shards, same block size).

    Args:
        index_path: the index folder (on a filesystem every node sees).
        excluded: sorted ids never scored or pooled (the test split), or the store folder whose split each
            shard reads for itself (the driver then holds no id list: see :attr:`split`).
        device: the driver's :class:`DeviceChoice`; the actors score on the same kind of device.
        threads_per_actor, block_rows, scoring_backend, fault, log: see :class:`ShardedIndex`.
    """

    def __init__(
        self,
        index_path: str | os.PathLike[str],
        *,
        excluded: np.ndarray | str | os.PathLike[str] | None,
        device: DeviceChoice,
        threads_per_actor: int | None = None,
        block_rows: int = 131_072,
        scoring_backend: str = "auto",
        fault: FaultTolerance = DEFAULT_FAULT_TOLERANCE,
        log: Callable[[str], None] | None = None,
    ):
        self.device = device
        self.index = ShardedIndex(
            index_path,
            excluded=excluded,
            device=device.kind,
            threads_per_actor=threads_per_actor,
            block_rows=block_rows,
            scoring_backend=scoring_backend,
            fault=fault,
            log=log,
        )
        self.dim = self.index.dim
        self._cand_sum: tuple[np.ndarray, int] | None = None
        self._split: Split | None = None

    @property
    def actors(self) -> list[Any]:
        return self.index.actors

    @property
    def split(self) -> Split:
        """The train/test split, answered by the shard actors (the driver holds only per-shard counts)."""
        if self._split is None:
            n = self.index.n_shards
            counts = self.index.each("split", {s: ("counts",) for s in range(n)})

            def call(method: str, args_of: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
                return self.index.each("split", {s: (method, *a) for s, a in args_of.items()})

            self._split = Split(
                self.index.id_min, self.index.id_max, np.array([counts[s] for s in range(n)]), call
            )
        return self._split

    def search(
        self, xq: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(xq, k, exclude_ids=exclude_ids)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.index.vectors(ids)

    def sum_vectors(self, ids: np.ndarray) -> np.ndarray:
        """float64 (d,) sum of the vectors of ``ids``, summed on their shards (only d floats travel back).

        Equal to ``LocalBackend.sum_vectors`` up to the order of float64 additions (~1e-16 relative).
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out = np.zeros(self.dim, dtype=np.float64)
        if not ids.size:
            return out
        owner = self.index.owners(ids)
        parts = self.index.each("sum_vectors", {int(s): (ids[owner == s],) for s in np.unique(owner)})
        for s in sorted(parts):
            out += parts[s]
        return out

    def candidate_sum(self) -> tuple[np.ndarray, int]:
        """Sum and count of every candidate's vector (the train split), computed once on the shards and
        added here block by block in the order ``LocalBackend`` uses, so the result is bit-identical."""
        if self._cand_sum is None:
            parts = self.index.each("candidate_sum", {s: () for s in range(self.index.n_shards)})
            total = np.zeros(self.dim, dtype=np.float64)
            count = 0
            for s in range(self.index.n_shards):
                sums, c = parts[s]
                for row in sums:
                    total += row
                count += int(c)
            self._cand_sum = (total, count)
        return self._cand_sum

    def n_candidates(self) -> int:
        return self.candidate_sum()[1]

    def score_pool(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        W: torch.Tensor,
        bias: torch.Tensor,
        kind: torch.Tensor,
        ref: torch.Tensor | None,
        beta: float,
        b: int,
    ) -> TopB:
        """Score each unit's CSR candidates on the shards that own them; merge the per-shard top-b."""
        ray = _import_ray()
        ids = np.asarray(ids, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        U = int(offsets.size - 1)
        owner = self.index.owners(ids)
        units = tuple(_host(t) for t in (W, bias, kind, ref))
        csr: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for s in np.unique(owner).tolist():
            m = owner == s
            csr[s] = (ids, offsets) if m.all() else sub_csr(ids, offsets, m)

        def submit() -> list[Any]:
            unit_refs = [ray.put(t) for t in units]  # once for every shard
            return [self.index.actors[s].score_pool.remote(*csr[s], *unit_refs, beta, b) for s in sorted(csr)]

        return _merge_parts(self.index.call(submit), U, b)

    def score_all(
        self,
        exclude: list[np.ndarray],
        W: torch.Tensor,
        bias: torch.Tensor,
        kind: torch.Tensor,
        ref: torch.Tensor | None,
        beta: float,
        b: int,
    ) -> TopB:
        """All mode: every actor streams its own candidates; the per-shard top-b are merged here."""
        ray = _import_ray()
        units = tuple(_host(t) for t in (W, bias, kind, ref))
        exclude = [np.asarray(e, dtype=np.int64) for e in exclude]
        per_shard = self._exclude_by_shard(exclude)  # each shard gets only the excluded ids in its id range

        def submit() -> list[Any]:
            unit_refs = [ray.put(t) for t in units]
            return [
                a.score_all.remote(per_shard[s], *unit_refs, beta, b) for s, a in enumerate(self.index.actors)
            ]

        return _merge_parts(self.index.call(submit), int(W.shape[0]), b)

    def _exclude_by_shard(self, exclude: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Each shard's part of every unit's sorted excluded ids: those in the shard's id range."""
        return [
            [e[(e >= self.index.id_min[s]) & (e <= self.index.id_max[s])] for e in exclude]
            for s in range(self.index.n_shards)
        ]

    def random_all(
        self, exclude: list[np.ndarray], keys: list[int], seed: int, round_no: int, b: int
    ) -> TopB:
        """All-mode Random: every actor draws over its own train rows; the per-shard top-b are merged here
        (no list of the train split in the driver)."""
        exclude = [np.asarray(e, dtype=np.int64) for e in exclude]
        per_shard = self._exclude_by_shard(exclude)
        args = {s: (per_shard[s], list(keys), seed, round_no, b) for s in range(self.index.n_shards)}
        res = self.index.each("random_all", args)
        return _merge_parts([res[s] for s in sorted(res)], len(keys), b)

    def _groups_by_shard(self, groups: list[Group]) -> dict[int, list[Group]]:
        """Each shard's part of every group: the group's units and the ids in the shard's id range."""
        parts: dict[int, list[Group]] = {s: [] for s in range(self.index.n_shards)}
        for units, ids in groups:
            lo = np.searchsorted(ids, self.index.id_min, side="left")
            hi = np.searchsorted(ids, self.index.id_max, side="right")
            for s in range(self.index.n_shards):
                parts[s].append((units, ids[lo[s] : hi[s]]))
        return parts

    def group_logits(self, groups: list[Group], W: torch.Tensor, bias: torch.Tensor) -> list[np.ndarray]:
        """Test AP's pass 1 (see :mod:`seals_gpu.evaluate`): each group's units' canonical logits of its
        sorted ids, computed on the shards that own the ids; shard parts joined in id order."""
        parts = self._groups_by_shard(groups)
        need = {s: (p, _host(W), _host(bias)) for s, p in parts.items() if any(ids.size for _, ids in p)}
        res = self.index.each("group_logits", need) if need else {}
        out = []
        for g, (units, _) in enumerate(groups):
            cols = [res[s][g] for s in sorted(res)]
            out.append(np.concatenate(cols, axis=1) if cols else np.empty((units.size, 0), np.float64))
        return out

    def test_counts(
        self, W: torch.Tensor, bias: torch.Tensor, thresholds: list[np.ndarray], groups: list[Group]
    ) -> list[np.ndarray]:
        """Test AP's pass 2: every shard counts over its own test rows; the counts are summed here (only
        ``sum_u P_u`` integers per shard travel back)."""
        parts = self._groups_by_shard(groups)
        Wh, bh = _host(W), _host(bias)
        res = self.index.each("test_counts", {s: (Wh, bh, thresholds, parts[s]) for s in parts})
        total = [np.zeros(t.size, np.int64) for t in thresholds]
        for s in sorted(res):
            for u, c in enumerate(res[s]):
                total[u] += c
        return total

    def close(self) -> None:
        """Stop the shard actors."""
        self.index.close()

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
