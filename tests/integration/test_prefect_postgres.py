"""The local stack's Prefect server on a real Postgres (Debian's PostgreSQL, a private cluster
started here: mlops.stack.postgres) instead of its SQLite file: `mlops up` with
``MLOPS_PREFECT_DATABASE_URL`` registers the work pool and the project's deployments there, a
drift event's automation creates its retraining run there, and the URL (with its password) is
on no command line and in no client's environment."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops.stack.postgres import PrivatePostgres, postgres_bin
from tests.helpers import mlops, stack_processes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(postgres_bin() is None, reason="needs PostgreSQL (.ci/run installs it)"),
]

# trust authentication takes any password: this one stands for a team's real one
PASSWORD = f"pg-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def pg_stack(user_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    server = PrivatePostgres().start()
    url = server.url("prefect").replace("mlops@", f"mlops:{PASSWORD}@")
    env = user_env | {"MLOPS_PREFECT_DATABASE_URL": url}
    try:
        up = mlops(env, "up", "--no-worker", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        yield {
            "env": env,
            "server": server,
            "api": f"http://127.0.0.1:{env['MLOPS_PREFECT_PORT']}/api",
            "state": Path(env["MLOPS_STATE_DIR"]),
        }
    finally:
        mlops(env, "down", timeout=120)
        server.stop()


def query(server: PrivatePostgres, sql: str) -> list[Any]:
    import asyncpg

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(
            server.url("prefect").replace("postgresql+asyncpg", "postgresql")
        )
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_the_work_pool_and_deployments_live_in_postgres(pg_stack: dict[str, Any]) -> None:
    server, env = pg_stack["server"], pg_stack["env"]
    pools = {r["name"] for r in query(server, "select name from work_pool")}
    assert env.get("MLOPS_WORK_POOL", "local") in pools, pools
    deployments = {r["name"] for r in query(server, "select name from deployment")}
    assert {"adult", "diabetes"} <= deployments, deployments
    assert not (pg_stack["state"] / "prefect" / "prefect.db").exists(), "no SQLite file either"


def test_a_drift_event_creates_its_retraining_run_in_postgres(pg_stack: dict[str, Any]) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events import Event

    api = pg_stack["api"]
    with SyncPrefectClient(api) as client:
        deployment = client.read_deployment_by_name("retraining/adult")
        drift = Event(
            event="mlops.model.drift-detected",
            resource={"prefect.resource.id": "mlops.model.adult-income"},
            payload={"summary": "a test's drift"},
        )
        sent = httpx.post(f"{api}/events", json=[drift.model_dump(mode="json")])
        assert sent.status_code == 204, sent.text
        deadline, runs = time.monotonic() + 60, []
        while not runs and time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
            time.sleep(0.5)
    assert len(runs) == 1, "the automation ran the retraining deployment once"
    assert runs[0].parameters.get("event_id") == str(drift.id)
    stored = query(
        server := pg_stack["server"], f"select id from flow_run where id = '{runs[0].id}'"
    )
    assert len(stored) == 1, f"the run is a row of {server.url('prefect')}"


def test_the_database_url_is_on_no_command_line_and_in_no_clients_environment(
    pg_stack: dict[str, Any],
) -> None:
    seen = 0
    for _pid, cmdline, environ in stack_processes(pg_stack["state"]):
        seen += 1
        assert PASSWORD not in " ".join(cmdline), cmdline
        in_env = [k for k, v in environ.items() if PASSWORD in v]
        is_prefect_server = "server" in cmdline and any("prefect" in a for a in cmdline)
        assert not in_env or is_prefect_server, (cmdline, in_env)
    assert seen >= 3, "the stack's servers were found (Prefect, MLflow, the webhook receiver)"


def test_status_names_each_servers_database_without_the_password(pg_stack: dict[str, Any]) -> None:
    status = mlops(pg_stack["env"], "status", timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
    server: PrivatePostgres = pg_stack["server"]
    assert f"postgresql 127.0.0.1:{server.port}/prefect" in lines["prefect"], status.stdout
    mlflow_db = pg_stack["state"] / "mlflow" / "mlflow.db"
    assert f"SQLite {mlflow_db}" in lines["mlflow"], status.stdout
    assert PASSWORD not in status.stdout + status.stderr
