"""A team's shared stack on a real PostgreSQL (Debian's, a private cluster started here:
mlops.stack.postgres): `mlops up` with one ``MLOPS_DATABASE_URL`` creates the servers' databases
and runs the Prefect server and the MLflow server (runs, registry and users) on them, both with
authentication; the training, promotion, release and monitoring flows run against it as a user
runs them (`mlops train --hand-over release`, `mlops monitor`), and every record they leave is a
row of those databases, none in a SQLite file. Clients without credentials are refused by both
servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops.stack.postgres import PrivatePostgres, postgres_bin
from tests.helpers import mlops, service_processes, stack_processes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(postgres_bin() is None, reason="needs PostgreSQL (.ci/run installs it)"),
]

# trust authentication takes any password: these stand for a team's real ones
DB_PASSWORD = f"pg-{uuid.uuid4().hex}"
AUTH_STRING = f"team:{uuid.uuid4().hex}"
MLFLOW_PASSWORD = f"mlflow-{uuid.uuid4().hex}"
MODEL = "adult-income"


@dataclass(frozen=True)
class SharedStack:
    env: dict[str, str]
    server: PrivatePostgres
    state: Path
    prefect_api: str
    mlflow: str
    up: str


@pytest.fixture(scope="module")
def shared(user_env: dict[str, str]) -> Iterator[SharedStack]:
    server = PrivatePostgres(databases=()).start()  # no database yet: `mlops up` creates them
    state = Path(user_env["MLOPS_STATE_DIR"])
    secret = state.parent / "database-url"
    secret.write_text(f"postgresql://mlops:{DB_PASSWORD}@127.0.0.1:{server.port}\n")
    env = user_env | {
        "MLOPS_DATABASE_URL_FILE": str(secret),
        "MLOPS_PREFECT_AUTH_STRING": AUTH_STRING,
        "MLOPS_MLFLOW_PASSWORD": MLFLOW_PASSWORD,
    }
    try:
        up = mlops(env, "up", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        yield SharedStack(
            env,
            server,
            state,
            f"http://127.0.0.1:{env['MLOPS_PREFECT_PORT']}/api",
            f"http://127.0.0.1:{env['MLOPS_MLFLOW_PORT']}",
            up.stdout,
        )
    finally:
        mlops(env, "down", timeout=120)
        server.stop()


def query(server: PrivatePostgres, database: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(server.url(database).replace("postgresql+asyncpg", "postgresql")) as conn:
        return list(conn.execute(sql).fetchall())


@pytest.fixture(scope="module")
def flows_ran(shared: SharedStack) -> dict[str, Any]:
    """Training handed over to release (gates, champion, the local target's canary), traffic
    with its labels, then a monitoring window: as a user runs them, against the shared stack."""
    from examples.adult.traffic import send_traffic
    from tests.helpers import typed_frame

    trained = mlops(shared.env, "train", "--hand-over", "release", timeout=900)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    router = f"http://127.0.0.1:{shared.env['MLOPS_ROUTER_PORT']}"
    sent = send_traffic(router, typed_frame(800), "income", token=None)
    monitored = mlops(shared.env, "monitor", timeout=600)
    assert monitored.returncode == 0, monitored.stdout[-3000:] + monitored.stderr[-3000:]
    return {"trained": trained.stdout, "sent": sent, "monitored": monitored.stdout}


def test_up_creates_each_servers_database_and_says_so(shared: SharedStack) -> None:
    databases = {r[0] for r in query(shared.server, "postgres", "select datname from pg_database")}
    assert {"prefect", "mlflow"} <= databases, databases
    port = shared.server.port
    assert f"prefect: created the database 127.0.0.1:{port}/prefect" in shared.up, shared.up
    assert f"mlflow: created the database 127.0.0.1:{port}/mlflow" in shared.up, shared.up


def test_the_flows_leave_their_records_in_postgres_and_none_in_sqlite(
    shared: SharedStack, flows_ran: dict[str, Any]
) -> None:
    sent = flows_ran["sent"]  # rows with a missing value are not sent: the server refuses them
    assert sent.answered == sent.sent > 700, sent.failures
    runs = query(
        shared.server,
        "prefect",
        "select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id",
    )
    completed = {name for name, state in runs if state == "COMPLETED"}
    assert {"training", "promotion", "release", "monitoring"} <= completed, runs
    versions = query(shared.server, "mlflow", "select name, version from model_versions")
    assert (MODEL, 1) in versions, versions
    aliases = query(
        shared.server, "mlflow", "select name, alias, version from registered_model_aliases"
    )
    assert (MODEL, "champion", 1) in aliases, aliases
    monitoring_runs = query(
        shared.server,
        "mlflow",
        "select count(*) from runs r join experiments e on e.experiment_id = r.experiment_id "
        "where e.name like '%monitoring%'",
    )
    assert monitoring_runs[0][0] >= 1, "the monitoring window's MLflow run is a row too"
    users = query(shared.server, "mlflow", "select username from users")
    assert ("admin",) in users, "MLflow's users live beside its runs"
    sqlite = sorted(str(p) for p in shared.state.rglob("*.db"))
    assert sqlite == [], f"no server kept its state in SQLite: {sqlite}"


def test_clients_without_credentials_are_refused_by_both_servers(shared: SharedStack) -> None:
    prefect = httpx.post(f"{shared.prefect_api}/flow_runs/filter", json={})
    assert prefect.status_code == 401, prefect.text
    mlflow = httpx.get(f"{shared.mlflow}/api/2.0/mlflow/registered-models/search")
    assert mlflow.status_code == 401, mlflow.text
    wrong = httpx.get(
        f"{shared.mlflow}/api/2.0/mlflow/registered-models/search", auth=("admin", "not-it")
    )
    assert wrong.status_code == 401, wrong.text
    right = httpx.get(
        f"{shared.mlflow}/api/2.0/mlflow/registered-models/search", auth=("admin", MLFLOW_PASSWORD)
    )
    assert right.status_code == 200, right.text


def test_status_names_each_servers_database_and_auth_never_a_secret(shared: SharedStack) -> None:
    status = mlops(shared.env, "status", timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
    port = shared.server.port
    assert f"postgresql 127.0.0.1:{port}/prefect" in lines["prefect"], status.stdout
    assert "auth string" in lines["prefect"], status.stdout
    assert f"postgresql 127.0.0.1:{port}/mlflow" in lines["mlflow"], status.stdout
    assert "basic-auth app" in lines["mlflow"], status.stdout
    for secret in (DB_PASSWORD, AUTH_STRING, MLFLOW_PASSWORD):
        assert secret not in status.stdout + status.stderr


def test_the_database_password_is_on_no_command_line(shared: SharedStack) -> None:
    """Only the two servers (and the processes they start: MLflow's uvicorn) hold it."""
    recorded = service_processes(shared.state)
    servers = {proc.pid for name in ("prefect", "mlflow") for proc in recorded[name]}
    seen = 0
    for pid, cmdline, environ in stack_processes(shared.state):
        seen += 1
        assert DB_PASSWORD not in " ".join(cmdline), cmdline
        holds = [k for k, v in environ.items() if DB_PASSWORD in v]
        assert not holds or pid in servers, (cmdline, holds)
    assert seen >= 4, "the stack's processes were found"
