"""One local Ray for the whole test session (2 CPUs, no dashboard), shared by every Ray test module.

Import the fixture into a test module (``from .ray_fixture import ray_local_fixture``) and ask for
``ray_local``. A Ray that is already running (another module's copy of this fixture, a conftest fixture)
is reused and left to whoever started it, so the session starts Ray once.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session", name="ray_local")
def ray_local_fixture():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
