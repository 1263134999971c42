"""An in-process stand-in for the parts of Ray that ``seals_gpu.distributed`` uses, for fast tests of its
driver-side logic (placement, retries, routing, merging) without starting a cluster.

What it stands in for: ``ray.is_initialized / init / shutdown``, ``ray.nodes`` and ``ray.cluster_resources``
(a list of fake nodes that tests can add to or remove from), ``ray.remote`` on a class (``.options(...)
.remote(...)`` makes an actor) or with options on a function (``.remote(...)`` runs a task), an actor
method's ``.remote(...)``, ``ray.put / get / wait / kill`` and ``ray.get_runtime_context().get_node_id()``.
Actors are real instances of the class given (``ShardActor``, so ``ShardServer`` really loads its shard
from disk), run synchronously in this process when a method is submitted; an object ref is a small
:class:`Ref` holding the result or the error. Errors are Ray's own classes (``ray.exceptions``), raised by
``get`` the way Ray raises them: a task's exception as ``RayTaskError.as_instanceof_cause()``, a call to an
actor whose ``__init__`` raised as ``ActorDiedError`` with ``actor_init_failed``, a ref that never resolves
as ``GetTimeoutError`` when ``get`` has a timeout.

What it records: every actor created (class, constructor arguments with refs resolved, options such as
``max_restarts`` / ``num_gpus`` / ``scheduling_strategy``, the node it landed on), every method call, task,
``put``, ``kill``, ``wait``, ``get`` timeout and (through :func:`install`) every backoff ``time.sleep``.

Faults it injects: :meth:`LocalRay.die` (the actor's next calls raise a Ray actor error; then Ray restarts it,
``__init__`` running again, or it stays dead for good), :meth:`LocalRay.hang` (its next calls never answer),
:meth:`LocalRay.remove_node` (a node leaves the cluster and its actors die with it), ``on_create`` (a hook
run on every new actor, e.g. to make a replacement hang), and ``init_error`` (``ray.init`` fails).

What it does not model: concurrency (calls run one after another, at submit time); processes (each actor
incarnation gets a fake pid, which ``ready()`` and ``pid()`` report where they would report this process's,
and what an actor's ``__init__`` sets process-wide, torch's and FAISS's thread counts, is recorded and then
undone);
Ray's own ``max_task_retries`` re-runs (a failure reaches the driver as if Ray's retries were spent);
resource accounting (a node takes any number of actors); serialization (arguments and results are passed
by reference, but numpy arrays among them as read-only views, as Ray's object store hands them out, so
neither side can write into the other's arrays); and where ``SPREAD`` would really put an actor
(round-robin over the alive nodes here).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray")
import ray.exceptions as rex  # noqa: E402  (after the skip: Ray is optional)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402


def node_id(name: str) -> str:
    """A valid Ray node id (56 hex digits) for a readable node name."""
    return hashlib.sha224(name.encode()).hexdigest()


def node(name: str, address: str, **resources: float) -> dict[str, Any]:
    """One entry of ``ray.nodes()``: ``node("a", "10.0.0.1", CPU=4, GPU=1)``."""
    return {"NodeID": node_id(name), "Alive": True, "NodeManagerAddress": address, "Resources": resources}


@dataclass
class Ref:
    """An object ref: the value, or the error ``get`` raises, or never ready (``hangs``)."""

    value: Any = None
    error: BaseException | None = None
    hangs: bool = False


@dataclass
class Actor:
    """One actor as the fake cluster sees it (``handle.actor``)."""

    index: int  # creation order
    cls: type
    args: tuple[Any, ...]
    kwargs: dict[str, Any]  # refs resolved
    options: dict[str, Any]
    node_id: str
    instance: Any = None
    init_error: BaseException | None = None
    pid: int = 0
    dead: bool = False  # for good: killed with no_restart, its node left, or Ray gave up on it
    failing: int = 0  # the next calls that raise ``error``
    error: Callable[[], BaseException] = rex.ActorDiedError
    restart: bool = True  # after the failing calls: restarted (True) or dead for good
    hanging: int = 0  # the next calls that never answer
    threads: tuple[int, int] = (0, 0)  # torch's and FAISS's thread counts as its __init__ left them


class Handle:
    """An actor handle: ``handle.method.remote(*args)`` runs the method and returns a :class:`Ref`."""

    def __init__(self, fake: LocalRay, actor: Actor):
        self.actor = actor
        self._fake = fake

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        fake, actor = self._fake, self.actor
        return _Remote(lambda *a, **kw: fake._call(actor, name, a, kw))


@dataclass
class _Remote:
    remote: Callable[..., Any]


@dataclass
class Task:
    """One task submitted by ``ray.remote(**options)(fn).remote(*args)``."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    options: dict[str, Any]


class _RemoteClass:
    def __init__(self, fake: LocalRay, cls: type):
        self._fake, self._cls = fake, cls

    def options(self, **options: Any) -> _Remote:
        return _Remote(lambda *a, **kw: self._fake._create(self._cls, a, kw, options))

    def remote(self, *args: Any, **kwargs: Any) -> Handle:
        return self.options().remote(*args, **kwargs)


class _RuntimeContext:
    def __init__(self, node: str):
        self._node = node

    def get_node_id(self) -> str:
        return self._node


def _frozen(obj: Any) -> Any:
    """``obj`` with every numpy array in it (in tuples, lists and dicts too) as a read-only view."""
    if isinstance(obj, np.ndarray):
        view = obj.view()
        view.flags.writeable = False
        return view
    if isinstance(obj, (tuple, list)):
        return type(obj)(_frozen(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _frozen(v) for k, v in obj.items()}
    return obj


def _task_error(e: BaseException, function_name: str) -> rex.RayTaskError:
    """What Ray makes of an exception raised in a task or actor method (its remote traceback as text)."""
    tb = "".join(traceback.format_exception(e))
    return rex.RayTaskError(function_name, tb, e, proctitle=f"ray::{function_name}", pid=4242, ip="127.0.0.1")


@dataclass
class LocalRay:
    """The fake ``ray`` module: ``install(monkeypatch, LocalRay([node(...), ...]))`` makes distributed.py use
    it. ``nodes_`` is the cluster (entries of ``ray.nodes()``; tests may append to it or edit it)."""

    nodes_: list[dict[str, Any]] = field(
        default_factory=lambda: [node("a", "10.0.0.1", CPU=4.0), node("b", "10.0.0.2", CPU=2.0)]
    )
    resources: dict[str, float] | None = None  # what cluster_resources() says, when not the nodes' sum
    initialized: bool = True
    init_error: BaseException | None = None
    on_create: Callable[[Actor], None] | None = None
    # records
    actors: list[Actor] = field(default_factory=list)
    calls: list[tuple[int, str]] = field(default_factory=list)  # (actor index, method)
    tasks: list[Task] = field(default_factory=list)
    puts: list[Any] = field(default_factory=list)
    kills: list[tuple[int, bool]] = field(default_factory=list)  # (actor index, no_restart)
    waits: list[int] = field(default_factory=list)  # num_returns
    get_timeouts: list[float | None] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    inits: list[dict[str, Any]] = field(default_factory=list)
    shutdowns: int = 0

    exceptions = rex

    def __post_init__(self) -> None:
        self._pids = itertools.count(1001)
        self._spread = itertools.count()
        self._running: list[Actor] = []

    # ------------------------------------------------------------------ session and cluster
    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)
        if self.init_error is not None:
            raise self.init_error
        self.initialized = True

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.initialized = False

    def nodes(self) -> list[dict[str, Any]]:
        return [{**n, "Resources": dict(n["Resources"])} for n in self.nodes_]

    def cluster_resources(self) -> dict[str, float]:
        """The alive nodes' resources summed, or ``resources`` where a test gives Ray's view apart (it comes
        from another query than ``nodes()`` and can lag it)."""
        if self.resources is not None:
            return dict(self.resources)
        total: dict[str, float] = {}
        for n in self.nodes_:
            if n["Alive"]:
                for key, v in n["Resources"].items():
                    total[key] = total.get(key, 0.0) + float(v)
        return total

    def remove_node(self, nid: str) -> None:
        """The node leaves the cluster: not alive any more, and its actors die with it (for good here; Ray
        would restart them elsewhere, which the driver pre-empts by re-placing them itself)."""
        for n in self.nodes_:
            if n["NodeID"] == nid:
                n["Alive"] = False
        for a in self.actors:
            if a.node_id == nid:
                a.dead = True

    def get_runtime_context(self) -> _RuntimeContext:
        """The node of the actor running now; the first node (the head) for the driver."""
        return _RuntimeContext(self._running[-1].node_id if self._running else self.nodes_[0]["NodeID"])

    # ------------------------------------------------------------------ actors and tasks
    def remote(self, *args: Any, **options: Any) -> Any:
        if args and not options and isinstance(args[0], type):
            return _RemoteClass(self, args[0])

        def wrap(fn: Callable[..., Any]) -> _Remote:
            return _Remote(lambda *a: self._task(fn, a, options))

        return wrap(args[0]) if args else wrap

    def _task(self, fn: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any]) -> Ref:
        self.tasks.append(Task(fn, args, options))
        try:
            return Ref(fn(*args))
        except Exception as e:
            return Ref(error=_task_error(e, fn.__name__).as_instanceof_cause())

    def _place(self, strategy: Any) -> str:
        alive = [n["NodeID"] for n in self.nodes_ if n["Alive"]]
        if isinstance(strategy, NodeAffinitySchedulingStrategy) and strategy.node_id in alive:
            return strategy.node_id
        assert strategy == "SPREAD" or strategy.soft, f"a hard affinity to a dead node: {strategy}"
        return alive[next(self._spread) % len(alive)]

    def _create(
        self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Handle:
        args, kwargs = self._resolve(args), self._resolve(kwargs)
        actor = Actor(
            len(self.actors),
            cls,
            args,
            kwargs,
            dict(options),
            self._place(options.get("scheduling_strategy")),
        )
        self.actors.append(actor)
        self._start(actor)
        if self.on_create is not None:
            self.on_create(actor)
        return Handle(self, actor)

    def _start(self, actor: Actor) -> None:
        """(Re)start: a new pid, ``__init__`` runs again. What it sets process-wide (torch's and FAISS's
        thread counts) is undone afterwards, as if it had run in a process of its own."""
        import faiss
        import torch

        threads = torch.get_num_threads(), faiss.omp_get_max_threads()
        actor.pid, actor.instance, actor.init_error = next(self._pids), None, None
        self._running.append(actor)
        try:
            actor.instance = actor.cls(*actor.args, **actor.kwargs)
        except Exception as e:
            actor.init_error = _task_error(e, f"{actor.cls.__name__}.__init__")
        finally:
            self._running.pop()
            actor.threads = torch.get_num_threads(), faiss.omp_get_max_threads()
            torch.set_num_threads(threads[0])
            faiss.omp_set_num_threads(threads[1])

    def _call(self, actor: Actor, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Ref:
        self.calls.append((actor.index, method))
        if actor.hanging:
            actor.hanging -= 1
            return Ref(hangs=True)
        if actor.init_error is not None:
            return Ref(error=rex.ActorDiedError(actor.init_error))
        if actor.dead:
            return Ref(error=rex.ActorDiedError())
        if actor.failing:
            actor.failing -= 1
            if not actor.failing:
                if actor.restart:
                    self._start(actor)
                else:
                    actor.dead = True
            return Ref(error=actor.error())
        self._running.append(actor)
        try:
            value = getattr(actor.instance, method)(*self._resolve(args), **self._resolve(kwargs))
        except Exception as e:
            return Ref(error=_task_error(e, f"{actor.cls.__name__}.{method}").as_instanceof_cause())
        finally:
            self._running.pop()
        # this process's pid, wherever the actor reports it, stands for the incarnation's own
        if method == "pid" and value == os.getpid():
            value = actor.pid
        elif method == "ready" and isinstance(value, dict) and value.get("pid") == os.getpid():
            value = {**value, "pid": actor.pid}
        return Ref(value)

    # ------------------------------------------------------------------ faults
    def die(
        self,
        actor: Actor,
        *,
        restart: bool,
        calls: int = 1,
        error: Callable[[], BaseException] = rex.ActorDiedError,
    ) -> None:
        """The actor's next ``calls`` calls (pings included) raise ``error()``; then Ray restarts it (a new
        pid, its shard reloaded) or, with ``restart=False``, it is dead for good (``ActorDiedError``)."""
        actor.failing, actor.error, actor.restart = calls, error, restart

    def hang(self, actor: Actor, calls: int = 1) -> None:
        """The actor's next ``calls`` calls never answer (``get`` with a timeout raises GetTimeoutError)."""
        actor.hanging = calls

    # ------------------------------------------------------------------ objects
    def put(self, obj: Any) -> Ref:
        self.puts.append(obj)
        return Ref(obj)

    def get(self, refs: Ref | list[Ref], timeout: float | None = None) -> Any:
        self.get_timeouts.append(timeout)
        items = [refs] if isinstance(refs, Ref) else list(refs)
        for r in items:
            if r.hangs:
                assert timeout is not None, (
                    "ray.get without a timeout on a call that never answers: blocks forever"
                )
                raise rex.GetTimeoutError("Get timed out: some object(s) not ready.")
            if r.error is not None:
                raise r.error
        return _frozen(items[0].value) if isinstance(refs, Ref) else [_frozen(r.value) for r in items]

    def wait(self, refs: list[Ref], *, num_returns: int = 1) -> tuple[list[Ref], list[Ref]]:
        self.waits.append(num_returns)
        return list(refs[:num_returns]), list(refs[num_returns:])

    def kill(self, handle: Handle, *, no_restart: bool = True) -> None:
        actor = handle.actor
        self.kills.append((actor.index, no_restart))
        if no_restart:
            actor.dead = True
        else:
            self._start(actor)

    def _resolve(self, obj: Any) -> Any:
        """Refs among the top-level arguments become their values, as Ray does; arrays read-only."""
        if isinstance(obj, tuple):
            return tuple(_frozen(a.value if isinstance(a, Ref) else a) for a in obj)
        return {k: _frozen(v.value if isinstance(v, Ref) else v) for k, v in obj.items()}


class _Clock:
    """``time`` for distributed.py: ``sleep`` is recorded, not waited; the rest is the real module."""

    def __init__(self, fake: LocalRay):
        self._fake = fake

    def sleep(self, seconds: float) -> None:
        self._fake.sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def install(monkeypatch: pytest.MonkeyPatch, fake: LocalRay | None = None) -> LocalRay:
    """Make ``seals_gpu.distributed`` use ``fake`` (a new two-node :class:`LocalRay` by default) for Ray, a
    fresh remote-class cache, and a recording ``time.sleep``; undone with ``monkeypatch``."""
    from seals_gpu import distributed

    fake = fake if fake is not None else LocalRay()
    monkeypatch.setattr(distributed, "_import_ray", lambda: fake)
    monkeypatch.setattr(distributed, "_REMOTE", {})
    monkeypatch.setattr(distributed, "time", _Clock(fake))
    return fake
