"""A flow run ends when its work does, and a worker-run flow still beats and is still found dead.

Prefect's own heartbeat thread sleeps in one-second steps and is joined at the flow run's exit
(about 1.1 s of fixed cost per flow run and per subflow); ``mlops.adapters.prefect_heartbeat``
replaces it, from ``tasks/__init__``, with one that its stop wakes. Here, through real flow runs
on the session's Prefect server: that replacement is the thread that beats (Prefect's own thread
has another name), it is gone once the run returns, and a flow run that the process worker
started and that is killed with SIGKILL has sent heartbeats before and ends Crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

import tasks  # noqa: F401 (what every flow module imports: it installs the heartbeat stopper)
from mlops.adapters.prefect_heartbeat import THREAD_NAME
from mlops.core.settings import Settings
from mlops.stack.local import WORKER, LocalStack
from mlops.stack.processes import stop_process_group
from tests.helpers import PROJECT

pytestmark = pytest.mark.flows

T = TypeVar("T")

#: How the process worker finds ``stalled`` (prefect.yaml spells project flows the same way).
STALLED = "tests/flows/test_flow_overhead.py:stalled"
#: How long ``stalled`` waits to be killed before it ends by itself (a test that failed early).
STALL_SECONDS = 600
#: Bounds of the polls below on a loaded machine (the worker asks for runs every second).
WAIT_SECONDS = 300


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@flow(name="stalled", persist_result=False)
def stalled(report: str) -> None:
    """Write this process's pid and thread names to ``report``, then wait to be killed."""
    seen = {"pid": os.getpid(), "threads": sorted(t.name for t in threading.enumerate())}
    partial = Path(f"{report}.partial")
    partial.write_text(json.dumps(seen))
    partial.replace(report)  # the test reads it whole or not at all
    time.sleep(STALL_SECONDS)


def wait_for(what: str, probe: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {WAIT_SECONDS} s")


def test_a_flow_run_and_its_subflow_stop_their_heartbeats_as_they_return(
    local_stack: Settings,
) -> None:
    seen: list[threading.Thread] = []

    @flow(name="heartbeat-child", persist_result=False)
    def child() -> None:
        seen.extend(heartbeat_threads())

    @flow(name="heartbeat-parent", persist_result=False)
    def parent() -> None:
        child()

    parent()
    # one thread each for the parent and the subflow: the replacement's, not Prefect's own
    assert len(set(seen)) == 2, [t.name for t in threading.enumerate()]
    # each waits its interval (at least 30 s) unless its stop woke it at the run's exit
    assert not [t for t in seen if t.is_alive()]


def test_an_async_flow_run_stops_its_heartbeat_without_joining(local_stack: Settings) -> None:
    """The async engine does not join the thread (that would block its loop); the stop ends it."""
    seen: list[threading.Thread] = []

    @flow(name="heartbeat-async", persist_result=False)
    async def beating() -> None:
        seen.extend(heartbeat_threads())

    asyncio.run(beating())
    [thread] = seen
    thread.join(timeout=WAIT_SECONDS)  # at least 30 s if it slept its interval instead
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def worker(local_stack: Settings) -> Iterator[Settings]:
    """The stack's process worker serving the session's work pool."""
    stack = LocalStack(local_stack, out=lambda _msg: None)
    stack.up(with_worker=True, deploy=False)  # the servers run already: starts the worker
    try:
        yield local_stack
    finally:
        running = stack.load().get(WORKER)
        if running is not None and stack.alive(running):
            stop_process_group(running.pid, timeout=15)


def _heartbeats(settings: Settings, flow_run_id: uuid.UUID) -> list[dict[str, Any]] | None:
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        },
        "limit": 10,
    }
    r = httpx.post(f"{settings.prefect_api_url}/events/filter", json=body, timeout=10)
    r.raise_for_status()
    return r.json()["events"] or None


def test_a_worker_run_killed_with_sigkill_beat_until_then_and_ends_crashed(
    worker: Settings, tmp_path: Path
) -> None:
    report = tmp_path / "stalled.json"
    with get_client(sync_client=True) as client:
        deployment = client.create_deployment(
            flow_id=client.create_flow_from_name("stalled"),
            name=f"stalled-{uuid.uuid4().hex[:8]}",
            entrypoint=STALLED,
            work_pool_name=worker.work_pool,
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT)}}
            ],
            parameters={"report": str(report)},
        )
        run = client.create_flow_run_from_deployment(deployment)
    pid: int | None = None
    try:
        seen = wait_for(
            "report of the worker's flow run",
            lambda: json.loads(report.read_text()) if report.exists() else None,
        )
        pid = seen["pid"]
        assert pid != os.getpid()
        # the worker's flow-run process beats, and by the replacement (loaded with `tasks`)
        assert THREAD_NAME in seen["threads"], seen["threads"]
        wait_for("heartbeat of the run on the server", lambda: _heartbeats(worker, run.id))
        os.kill(pid, signal.SIGKILL)
        pid = None  # killed: the clean-up below is for a test that failed before

        def final() -> Any:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            return state if state is not None and state.is_final() else None

        state = wait_for("final state of the killed run", final)
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it ended already
                os.kill(pid, signal.SIGKILL)
    assert state.type == StateType.CRASHED, (state.name, state.message)
    assert "-9" in (state.message or ""), state.message
