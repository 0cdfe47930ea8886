"""The forking process worker (mlops.stack.worker) on a real Prefect server: deployment runs are
forked from its zygote, keep what Prefect's process worker gives (infrastructure pid, crash
reports, cancellation, logs), and find the zygote's modules already imported."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect import flow, get_run_logger

from mlops.core.settings import Settings
from tests.helpers import PROJECT

pytestmark = pytest.mark.integration

POOL = "forking-test"
ENTRYPOINT = "tests/integration/test_forking_worker.py:report_facts"
PROBED = ("prefect.flow_engine", "pandas", "sklearn", "mlflow", "flows.training", "tasks")
LOGGED = "@@forked-flow-run facts written"


@flow
def report_facts(out: str, then: str = "return") -> None:
    """Write what this flow run's process knows of itself to ``out``, then return, SIGKILL
    itself (``then="sigkill"``) or wait to be cancelled (``then="wait"``)."""
    from mlops.stack import zygote

    facts = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "preloaded_at": zygote.PRELOADED_AT,
        "started_at": time.time(),
        # the same module objects the zygote imported: nothing was imported again
        "same_modules": {
            name: name in sys.modules and id(sys.modules[name]) == zygote.PRELOADED.get(name)
            for name in PROBED
        },
        "flow_run_id": os.environ.get("PREFECT__FLOW_RUN_ID"),
    }
    Path(out).write_text(json.dumps(facts))
    get_run_logger().info(LOGGED)
    if then == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if then == "wait":
        time.sleep(600)


@dataclass(frozen=True)
class Worker:
    zygote_pid: int
    log: Path


@pytest.fixture(scope="module")
def forking_worker(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """The forking worker on its own process pool, its zygote listening."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    # suppressed: the pool of an earlier module run in the same session
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(
            WorkPoolCreate(
                name=POOL,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
        )
    log = tmp_path_factory.mktemp("forking-worker") / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlops.stack.worker", "--pool", POOL, "--name", POOL],
            cwd=PROJECT,
            env=os.environ | {"PREFECT_WORKER_QUERY_SECONDS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + local_stack.startup_timeout
        while "forking flow runs from" not in log.read_text():
            assert proc.poll() is None, f"the worker exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no zygote listening: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        line = next(x for x in log.read_text().splitlines() if "forking flow runs from" in x)
        yield Worker(int(line.split()[1].rstrip(":")), log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def deployment_id(forking_worker: Worker) -> uuid.UUID:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(report_facts)
        return client.create_deployment(
            flow_id,
            name="forked",
            work_pool_name=POOL,
            entrypoint=ENTRYPOINT,
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT)}}
            ],
        )


def _start(deployment_id: uuid.UUID, out: Path, then: str) -> uuid.UUID:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"out": str(out), "then": then}
        )
        return run.id


def _wait(run_id: uuid.UUID, until: str, timeout: float = 300) -> object:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state is not None and (
                run.state.type.value == until or (until == "FINAL" and run.state.is_final())
            ):
                return run
            time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} did not reach {until} within {timeout} s")


def test_a_deployment_run_is_forked_from_the_zygote(
    deployment_id: uuid.UUID, forking_worker: Worker, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out = tmp_path / "facts.json"
    run_id = _start(deployment_id, out, "return")
    run = _wait(run_id, "FINAL")
    assert run.state.is_completed(), run.state  # type: ignore[attr-defined]
    facts = json.loads(out.read_text())
    assert facts["ppid"] == forking_worker.zygote_pid, "the flow run is not the zygote's child"
    assert str(facts["pid"]) == run.infrastructure_pid  # type: ignore[attr-defined]
    assert facts["flow_run_id"] == str(run_id)
    assert all(facts["same_modules"].values()), facts["same_modules"]
    assert facts["preloaded_at"] < facts["started_at"]
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            if any(LOGGED in entry.message for entry in logs):
                return
            time.sleep(0.5)
    raise AssertionError("the forked flow run's log never reached the Prefect server")


def test_a_flow_run_that_sigkills_itself_is_crashed(
    deployment_id: uuid.UUID, tmp_path: Path
) -> None:
    out = tmp_path / "facts.json"
    run = _wait(_start(deployment_id, out, "sigkill"), "FINAL")
    assert run.state.type.value == "CRASHED", run.state  # type: ignore[attr-defined]
    assert "-9" in (run.state.message or ""), run.state.message  # type: ignore[attr-defined]
    assert json.loads(out.read_text())["pid"] == int(run.infrastructure_pid)  # type: ignore[attr-defined]


def test_cancelling_a_flow_run_kills_its_forked_child(
    deployment_id: uuid.UUID, tmp_path: Path
) -> None:
    import psutil
    from prefect import get_client
    from prefect.states import Cancelling

    out = tmp_path / "facts.json"
    run_id = _start(deployment_id, out, "wait")
    _wait(run_id, "RUNNING")
    deadline = time.monotonic() + 120
    while not out.exists():
        assert time.monotonic() < deadline, "the waiting flow run never wrote its facts"
        time.sleep(0.2)
    pid = json.loads(out.read_text())["pid"]
    assert psutil.pid_exists(pid)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Cancelling(), force=True)
    run = _wait(run_id, "FINAL", timeout=120)
    assert run.state.type.value == "CANCELLED", run.state  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid):
        assert time.monotonic() < deadline, f"the cancelled flow run's process {pid} still runs"
        time.sleep(0.2)


def test_a_killed_zygote_is_replaced_and_the_next_run_waits_for_the_new_one(
    deployment_id: uuid.UUID, forking_worker: Worker, tmp_path: Path
) -> None:
    """Last but one in this file: it kills the zygote. The next run finds the new one importing
    and waits for it (a plain subprocess would import the same modules beside it)."""
    import psutil

    zygote = psutil.Process(forking_worker.zygote_pid)
    zygote.kill()
    deadline = time.monotonic() + 30
    # dead once a zombie: only the worker, its parent, reaps it (when it asks before a run)
    while zygote.is_running() and zygote.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the SIGKILLed zygote still runs"
        time.sleep(0.1)
    killed_at = time.time()
    out = tmp_path / "facts.json"
    run = _wait(_start(deployment_id, out, "return"), "FINAL")
    assert run.state.is_completed(), run.state  # type: ignore[attr-defined]
    facts = json.loads(out.read_text())
    assert facts["ppid"] != forking_worker.zygote_pid
    assert facts["preloaded_at"] is not None and facts["preloaded_at"] > killed_at, facts
    assert str(facts["pid"]) == run.infrastructure_pid  # type: ignore[attr-defined]
    log = forking_worker.log.read_text()
    assert "The zygote was not ready (it exited with -9, a new one is importing): waited" in log


def test_after_the_projects_code_changed_the_next_run_is_not_forked_from_old_modules(
    deployment_id: uuid.UUID, forking_worker: Worker, tmp_path: Path
) -> None:
    """After the zygote test above (its zygote is another by now): the flow's own file saved
    again (its modification time moved, its text as it was) is code the zygote imported before
    the change, so the zygote is replaced and the next run is forked from modules imported
    after the change."""
    flow_file = PROJECT / ENTRYPOINT.split(":")[0]
    stat = flow_file.stat()
    changed_at = time.time()
    os.utime(flow_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    out = tmp_path / "facts.json"
    run = _wait(_start(deployment_id, out, "return"), "FINAL")
    assert run.state.is_completed(), run.state  # type: ignore[attr-defined]
    preloaded_at = json.loads(out.read_text())["preloaded_at"]
    assert preloaded_at is not None and preloaded_at > changed_at, "forked from the old modules"
    assert "the project's Python files changed since it imported them" in (
        forking_worker.log.read_text()
    )


def test_a_run_waits_for_an_importing_zygote_only_up_to_the_bound() -> None:
    """`wait_importing`: past its bound the run goes on (as a plain subprocess) with the zygote
    still importing; within it, the zygote ends up listening."""
    import anyio

    from mlops.stack.worker import ZygoteProcess

    zygote = ZygoteProcess(PROJECT)
    zygote.start()
    try:
        assert anyio.run(zygote.wait_importing, 0.2) == "it is still importing"
        assert zygote.importing(), "the bound was not kept: the zygote finished importing"
        assert anyio.run(zygote.wait_importing, 120.0) is None
        assert zygote.socket_path.exists() and not zygote.importing()
    finally:
        zygote.stop()
