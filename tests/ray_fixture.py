"""One local Ray for the whole test session (2 CPUs, no dashboard), shared by every Ray test module.

Import the fixture into a test module (``from .ray_fixture import ray_local_fixture``) and ask for
``ray_local``. A Ray that is already running (another module's copy of this fixture, a conftest fixture)
is reused and left to whoever started it, so the session starts Ray once. ``tests/test_cluster.py`` drives a
multi-node test cluster instead: it stops this Ray for its module and starts it again (``start_local_ray``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest


def start_local_ray(ray: Any) -> None:
    """The session's local Ray: a new instance (``address="local"``: never one that `ray start` or a test
    cluster on this machine left an address for), 2 CPUs, no dashboard."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )


@pytest.fixture(scope="session", name="ray_local")
def ray_local_fixture():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    start_local_ray(ray)
    try:
        yield ray
    finally:
        ray.shutdown()
