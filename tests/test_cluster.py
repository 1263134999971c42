"""Ray across several nodes, all on this machine, and a run submitted as a Ray job.

- ``ray.cluster_utils.Cluster``: a head without CPUs (it hosts no shard) and three worker nodes of one CPU,
  each with its own raylet and object store; this process is the driver. The shards of a run spread one per
  worker node and its selections and metrics equal the in-process run's; a node removed mid-run takes its
  shard actor with it, the driver reloads that shard on a surviving node, and the run ends the same.
- ``ray start --head --block`` and ``ray job submit``: the README's cluster commands, run as written there.

Both keep to themselves, so they can run beside other Ray instances on the machine: the cluster's sessions
and address file live under a private ``RAY_TMPDIR``, the job head's under ``--temp-dir``, every port is
picked free, and the head is stopped by signalling the ``ray start`` process this test started (never
``ray stop``, which stops every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from seals_gpu.device import resolve_device
from seals_gpu.distributed import NodeSlot, assign_shards, node_slots
from seals_gpu.index import IndexSpec, LocalIndex, build_index
from seals_gpu.store import Store, write_store

from .conftest import clustered

CPU = resolve_device("cpu")
MIB = 1024 * 1024
VENV_BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------- placement, without Ray
def test_assign_shards_spreads_then_keeps_and_refills():
    a, b, c = (NodeSlot(n, f"10.0.0.{i}", 4, 1) for i, n in enumerate("abc"))
    assert assign_shards(3, [a, b, c]) == ["a", "b", "c"]
    assert assign_shards(5, [a, b]) == ["a", "b", "a", "b", "a"]
    # node b left: its shard goes to the surviving node with the fewest shards; the others stay put
    assert assign_shards(3, [a, c], keep={0: "a", 1: "b", 2: "c"}) == ["a", "a", "c"]
    assert assign_shards(4, [a, c], keep={0: "c", 1: "c", 2: None, 3: "b"}) == ["c", "c", "a", "a"]
    # one shard per GPU: a 3-GPU node takes three before a 1-GPU node takes a second
    g3, g1 = NodeSlot("g3", "10.0.1.1", 8, 3), NodeSlot("g1", "10.0.1.2", 8, 1)
    assert sorted(assign_shards(4, [g1, g3])) == ["g1", "g3", "g3", "g3"]
    assert assign_shards(6, [g1, g3]).count("g1") == 2
    assert assign_shards(2, []) == [None, None]


def test_node_slots_takes_alive_nodes_that_can_host_an_actor():
    nodes = [
        {"NodeID": "z", "Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 4.0}},
        {"NodeID": "head", "Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"memory": 1.0}},
        {"NodeID": "dead", "Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 8.0}},
        {"NodeID": "gpu", "Alive": True, "NodeManagerAddress": "10.0.0.4", "Resources": {"CPU": 8, "GPU": 2}},
        {"NodeID": "a", "Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 1.0}},
    ]
    cpu = node_slots(nodes)
    assert [n.node_id for n in cpu] == ["a", "z", "gpu"]  # by address, then id; no CPU or dead: none
    assert [n.slots for n in cpu] == [1, 1, 1] and cpu[1].cpus == 4.0
    gpu = node_slots(nodes, gpus_per_actor=0.5)
    assert [(n.node_id, n.slots) for n in gpu] == [("gpu", 2)]


# ------------------------------------------------------------------------------------------------- fixtures
@dataclass
class Data:
    store: Store
    index: Path
    test_ids: np.ndarray
    ref: dict[str, Any]


def _run(store: Store, out: Path, backend: Any = None, index: Any = None) -> dict[str, Any]:
    """A small run; its selections and its metrics without the timings."""
    from seals_gpu.config import RunConfig
    from seals_gpu.driver import Run

    cfg = RunConfig(
        store=str(store.path),
        store_fingerprint=store.fingerprint,
        concepts=(0, 1),
        strategies=("maxent", "mlp", "random"),
        modes=("seals", "all"),
        k=10,
        batch=40,
        budget=200,
        seed=5,
    )
    Run(
        cfg, out, store=store, index=index, backend=backend, device=CPU, progress=False, log=lambda *a: None
    ).start()
    return _outputs(out)


def _outputs(out: Path) -> dict[str, Any]:
    metrics = pq.read_table(out / "metrics.parquet")
    keep = [c for c in metrics.column_names if not c.startswith("seconds")]
    return {
        "selections": pq.read_table(out / "selections.parquet").to_pydict(),
        "metrics": metrics.select(keep).to_pydict(),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    root = tmp_path_factory.mktemp("cluster")
    ids, x, labels = clustered(3000, 16, seed=7)
    store = write_store(root / "store", ids, x, labels=labels)
    index = build_index(store, root / "flat3", IndexSpec(kind="flat", shards=3)).path
    all_ids, is_test = store.read_split()
    ref = _run(store, root / "local", index=LocalIndex.open(index))
    assert len(ref["selections"]["id"]) == 2 * 3 * 2 * 200
    return Data(store, Path(index), np.sort(all_ids[is_test]), ref)


@pytest.fixture(scope="module")
def cluster(data):
    """A head without CPUs and three 1-CPU worker nodes (100 MiB object stores); this process drives it.

    A local Ray this session started before (``ray_local``) is stopped for the module and started again after.
    """
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from .ray_fixture import start_local_ray

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    # short (Ray's socket paths must stay under 108 characters) and private: the cluster's sessions and the
    # address file the head writes, which a plain ray.init() elsewhere on the machine would otherwise join
    tmp = tempfile.mkdtemp(prefix="sgc", dir="/tmp")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TMPDIR", tmp)
    mp.delenv("RAY_ADDRESS", raising=False)
    c = None
    try:
        c = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "object_store_memory": 100 * MIB, "include_dashboard": False},
        )
        workers = [c.add_node(num_cpus=1, object_store_memory=100 * MIB) for _ in range(3)]
        c.wait_for_nodes(timeout=60)
        ray.init(address=c.address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        # the driver joined the head's raylet, never a worker node a test removes
        assert ray.get_runtime_context().get_node_id() == c.head_node.node_id
        yield c, workers
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        mp.undo()
        shutil.rmtree(tmp, ignore_errors=True)
        if was_running:
            start_local_ray(ray)


# ------------------------------------------------------------------------------------------ several nodes
@pytest.mark.ray
def test_shards_spread_one_per_node_and_run_equals_in_process(cluster, data, tmp_path):
    import ray

    from seals_gpu.distributed import RayBackend

    _, workers = cluster
    moves: list[str] = []
    with RayBackend(data.index, excluded=data.test_ids, device=CPU, log=moves.append) as backend:
        index = backend.index
        # one shard per worker node (the CPU-less head hosts none), and each actor really runs there
        assert sorted(index.node_of) == sorted(w.node_id for w in workers)
        running = ray.get([a.ready.remote() for a in index.actors])
        assert [r["node_id"] for r in running] == index.node_of
        assert len({r["pid"] for r in running}) == 3
        lines = index.placement_lines()
        assert lines[0] == "ray: 3 shard actor(s) on 3 node(s)"
        for s in range(3):
            assert lines[1 + s].startswith(f"ray: shard {s} (shard-0000{s}, ")
            assert f"on node {index.node_of[s][:12]} (" in lines[1 + s]
            assert f"pid {running[s]['pid']}" in lines[1 + s]
        assert index.describe()["placement"] == [
            {"shard": s, "node_id": n} for s, n in enumerate(index.node_of)
        ]
        got = _run(data.store, tmp_path / "ray", backend=backend)
    assert got == data.ref
    assert moves == []  # nothing moved


@pytest.mark.ray
def test_node_removed_mid_run_its_shard_reloads_on_a_survivor(cluster, data, tmp_path, monkeypatch):
    import ray

    from seals_gpu.distributed import RayBackend

    c, workers = cluster
    moves: list[str] = []
    with RayBackend(data.index, excluded=data.test_ids, device=CPU, log=moves.append) as backend:
        index = backend.index
        before = list(index.node_of)
        pids = [p["pid"] for p in index.placement]
        victim = next(w for w in workers if w.node_id == before[1])  # the node of shard 1
        survivors = {w.node_id for w in workers} - {victim.node_id}

        # remove the node from another thread during the second scoring call of the run
        calls: list[int] = []
        removal = threading.Thread(target=c.remove_node, args=(victim,))
        score_pool = backend.score_pool

        def score_pool_losing_a_node(*a: Any, **kw: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                removal.start()
            return score_pool(*a, **kw)

        monkeypatch.setattr(backend, "score_pool", score_pool_losing_a_node)
        got = _run(data.store, tmp_path / "ray_lost_node", backend=backend)
        assert len(calls) >= 2
        removal.join(timeout=60)
        assert not removal.is_alive()
        # the head has seen the node go (bounded wait), so the placement check below sees it too
        deadline = time.monotonic() + 30
        while any(n["NodeID"] == victim.node_id and n["Alive"] for n in ray.nodes()):
            assert time.monotonic() < deadline, "the removed node is still alive in the head's view"
            time.sleep(0.2)
        index._replace_lost()  # what every call on the index does first

        assert index.node_of[1] in survivors  # shard 1 moved to a surviving node...
        assert [index.node_of[0], index.node_of[2]] == [before[0], before[2]]  # ...the others stayed put
        running = ray.get([a.ready.remote() for a in index.actors])
        assert [r["node_id"] for r in running] == index.node_of
        assert running[1]["pid"] != pids[1]  # reloaded from the shared path by a new process
        assert [running[0]["pid"], running[2]["pid"]] == [pids[0], pids[2]]
        assert any(f"node {victim.node_id[:12]} left the cluster; shard 1 (shard-00001)" in m for m in moves)
        assert any(m.startswith(f"ray: shard 1 reloaded on node {index.node_of[1][:12]}") for m in moves)
        assert index.placement_lines()[0] == "ray: 3 shard actor(s) on 2 node(s)"
    assert got == data.ref


# ------------------------------------------------------------------------------------------ job submission
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (the head's private temp dir: only ours have it)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d.name))
    return out


@contextlib.contextmanager
def _ray_head(tmp: str, env: dict[str, str], lingering: list[int]) -> Iterator[str]:
    """``ray start --head --block`` on free ports with ``--temp-dir=tmp``; yields the dashboard's URL.

    Stopped by SIGTERM to that ``ray start`` process (it drains and stops what it started); whatever with
    ``tmp`` in its command line still runs 10 s later goes to ``lingering`` and is killed. Never ``ray stop``.
    """
    dash = _free_port()
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        f"--port={_free_port()}",
        f"--temp-dir={tmp}",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--disable-usage-stats",
        "--block",
        # every other port free-picked too, so the head can run beside other Ray instances on the machine
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]
    log = open(Path(tmp) / "ray_start.log", "w")  # noqa: SIM115 (closed below)
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dash}"
    try:
        token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        request = urllib.request.Request(f"{url}/api/version", headers={"authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, (
                f"`ray start` exited: {(Path(tmp) / 'ray_start.log').read_text()[-3000:]}"
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "the dashboard did not answer within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        log.close()
        deadline = time.monotonic() + 10
        while _pids_mentioning(tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        lingering += _pids_mentioning(tmp)
        for _ in range(20):
            left = _pids_mentioning(tmp)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)


@pytest.mark.ray
def test_run_submitted_as_a_ray_job_equals_in_process(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("aiohttp", reason="ray job submit needs the dashboard: pip install 'seals_gpu[dist]'")
    from seals_gpu.cli import main

    store, index = tmp_path / "store", tmp_path / "idx"
    synth = ["--n", "2000", "--dim", "16", "--concepts", "3", "--prevalence", "0.01:0.03", "--seed", "4"]
    assert main(["store", "synth", str(store), *synth]) == 0
    assert main(["index", "build", str(store), str(index), "--shards", "3"]) == 0
    run_args = [
        "run",
        str(store),
        "--index",
        str(index),
        "--concepts",
        "0,1",
        "--strategies",
        "maxent,random",
        "--modes",
        "seals,all",
        "--batch",
        "25",
        "--budget",
        "100",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main([*run_args, "--out", str(tmp_path / "local")]) == 0
    workdir = tmp_path / "job"  # what `--working-dir` ships to the cluster: here only a note
    workdir.mkdir()
    (workdir / "README.txt").write_text("seals_gpu run submitted as a Ray job by tests/test_cluster.py\n")

    tmp = tempfile.mkdtemp(prefix="sgj", dir="/tmp")  # short: Ray's socket paths
    token = Path(tmp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env |= {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `ray` and `seals-gpu` of this venv
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    out = tmp_path / "job_run"
    lingering: list[int] = []
    try:
        with _ray_head(tmp, env, lingering) as url:
            job = subprocess.run(
                [
                    str(VENV_BIN / "ray"),
                    "job",
                    "submit",
                    "--address",
                    url,
                    "--working-dir",
                    str(workdir),
                    "--",
                    "seals-gpu",
                    *run_args,
                    "--ray",
                    "--out",
                    str(out),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            text = job.stdout + job.stderr
            assert job.returncode == 0, text[-4000:]
            assert "succeeded" in text, text[-4000:]
        assert "search and scoring: Ray shard actors" in text
        assert "ray: 3 shard actor(s) on 1 node(s)" in text
        for s in range(3):
            assert f"ray: shard {s} (shard-0000{s}, " in text
        assert _outputs(out) == _outputs(tmp_path / "local")
        assert lingering == []  # SIGTERM to `ray start --block` stopped everything it started
        assert _pids_mentioning(tmp) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
