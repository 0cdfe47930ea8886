"""Test settings for every tier.

At import, before Prefect is imported by any test module, the whole session is pointed at a
temporary state folder and free ports (Prefect reads its settings when it is imported). The
servers themselves start only when a test asks for the ``local_stack`` fixture.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mlops.core.settings import Settings
from mlops.stack.local import use_private_stack
from tests.helpers import PROJECT

if TYPE_CHECKING:
    from tests.fixtures import TrainedProject

_STATE = Path(tempfile.mkdtemp(prefix="mlops-test-"))
use_private_stack(PROJECT, _STATE, MLOPS_WORK_POOL="test-pool")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def local_stack(settings: Settings) -> Iterator[Settings]:
    """A real Prefect server and MLflow server on free loopback ports, for the whole session."""
    from mlops.stack.local import LocalStack

    stack = LocalStack(settings, out=lambda _msg: None)
    try:
        stack.up(with_worker=False, deploy=False)
        yield settings
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        # send the last flow-run logs and events before the server goes
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        stack.down()


@pytest.fixture(scope="session")
def adult_data(settings: Settings) -> Path:
    """The example dataset present in the workspace (pulled, or seeded from the shipped copy)."""
    from mlops.adapters.dvc import pull_dataset
    from mlops.core.config import load_pipeline_config

    cfg = load_pipeline_config(settings.pipeline)
    pull_dataset(settings.project_dir, cfg.data.path, cfg.data.seed)
    return settings.project_dir / cfg.data.path


@pytest.fixture(scope="session")
def registered_model(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> TrainedProject:
    """One small model trained and registered once a session, for tests that only read it
    (serve it, package it); a test that changes a version's artifacts or aliases trains its own."""
    from tests.fixtures import trained_project

    with trained_project(tmp_path_factory.mktemp("registered"), "served", rows=1500) as built:
        return built


@pytest.fixture(scope="session")
def aws() -> Iterator[str]:
    """moto's server on a free loopback port: an EMULATION of the AWS APIs over HTTP (no AWS account
    is reachable here). Yields its endpoint URL; tests reset it with POST /moto-api/reset."""
    from mlops.release.smoke import wait_until_ready
    from mlops.stack.processes import console_script, free_port, spawn, stop_process_group

    port = free_port()
    proc = spawn(
        [console_script("moto_server"), "-H", "127.0.0.1", "-p", str(port)], _STATE / "moto.log"
    )
    mp = pytest.MonkeyPatch()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        mp.setenv(key, "emulated")
    mp.delenv("AWS_PROFILE", raising=False)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, 60, path="/moto-api/")
        yield url
    finally:
        mp.undo()
        stop_process_group(proc.pid, timeout=5)


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A user's shell: its own state folder and ports, nothing inherited from the test session."""
    import os

    from mlops.stack.processes import free_port
    from tests.helpers import BIN, mlops

    state = tmp_path_factory.mktemp("user-stack")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "PREFECT_", "MLFLOW_"))
    }
    env.update(
        MLOPS_STATE_DIR=str(state),
        MLOPS_PREFECT_PORT=str(free_port()),
        MLOPS_MLFLOW_PORT=str(free_port()),
        MLOPS_REGISTRY_WEBHOOK_PORT=str(free_port()),
        MLOPS_PROMETHEUS_PORT=str(free_port()),
        MLOPS_PUSHGATEWAY_PORT=str(free_port()),
        MLOPS_ROUTER_PORT=str(free_port()),
        MLOPS_ROUTER_ADMIN_PORT=str(free_port()),
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    yield env
    mlops(env, "down", timeout=120)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_STATE, ignore_errors=True)
