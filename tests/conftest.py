"""Shared fixtures: one local Ray for the whole session, and the real Ubuntu IRC logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

UBUNTU_LOGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ubuntu-irc" / "logs"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, started once and shared by every test that needs it.

    `address="local"` starts a fresh instance even when a `ray start` head runs on this machine, so
    the tests never join (or tire) someone else's cluster.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # started by someone else in this process: use it, leave it running
        yield ray
        return
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # keep the test output small; errors still come back as exceptions
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ubuntu_logs() -> Path:
    """The 153 real #ubuntu IRC logs in the workspace's shared/ folder (a user's clone has none)."""
    if not UBUNTU_LOGS.is_dir():
        pytest.skip(f"the Ubuntu IRC logs are not at {UBUNTU_LOGS} (they live in the workspace's shared/ folder)")
    return UBUNTU_LOGS
