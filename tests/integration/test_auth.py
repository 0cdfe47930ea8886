"""The local stack started in auth mode (`mlops up` with a Prefect auth string and an MLflow
password), against its real servers: an unauthenticated client emits no event, triggers no
retraining and moves no alias; the stack's own clients (CLI, worker) and a client holding the
credentials can; no secret shows on a command line."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.helpers import assert_clean, mlops, service_processes

pytestmark = pytest.mark.integration

AUTH_STRING = f"mlops:{uuid.uuid4().hex}"  # user:password, Prefect's convention
PASSWORD = f"pw-{uuid.uuid4().hex}"
RETRAINING = "retraining/adult"


@dataclass(frozen=True)
class AuthStack:
    env: dict[str, str]
    state: Path
    prefect_api: str
    mlflow: str


@pytest.fixture(scope="module")
def auth_stack(user_env: dict[str, str]) -> Iterator[AuthStack]:
    """`mlops up` (worker and deployments included) with the auth string from a file, as a
    mounted secret gives it, and the MLflow password from the environment."""
    state = Path(user_env["MLOPS_STATE_DIR"])
    secret = state.parent / "prefect-auth-string"
    secret.write_text(AUTH_STRING + "\n")
    env = user_env | {
        "MLOPS_PREFECT_AUTH_STRING_FILE": str(secret),
        "MLOPS_MLFLOW_PASSWORD": PASSWORD,
    }
    up = mlops(env, "up", timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    host = "127.0.0.1"
    yield AuthStack(
        env,
        state,
        f"http://{host}:{env['MLOPS_PREFECT_PORT']}/api",
        f"http://{host}:{env['MLOPS_MLFLOW_PORT']}",
    )
    # user_env's teardown runs `mlops down` with the plain env: stop it here with the secrets
    mlops(env, "down", timeout=120)


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def event(name: str, resource: str) -> dict[str, object]:
    from prefect.events import Event

    return Event(event=name, resource={"prefect.resource.id": resource}).model_dump(mode="json")


async def websocket_auth(api: str, token: str | None, subprotocols: list[str] | None = None) -> str:
    """Open Prefect's events-in websocket, send the auth message; the type of the answer."""
    from websockets import Subprotocol
    from websockets.asyncio.client import connect

    url = api.replace("http://", "ws://", 1) + "/events/in"
    protocols = [Subprotocol(p) for p in (["prefect"] if subprotocols is None else subprotocols)]
    async with connect(url, subprotocols=protocols or None) as socket:
        await socket.send(json.dumps({"type": "auth", "token": token}))
        return str(json.loads(await socket.recv())["type"])


def stored_events(api: str, resource: str, expected: int) -> list[str]:
    """Names of the events stored for ``resource``, once ``expected`` are (the server persists
    events asynchronously) or after 20 s."""
    body = {
        "filter": {"resource": {"id": [resource]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}
    }
    deadline = time.monotonic() + 20
    while True:
        answer = httpx.post(f"{api}/events/filter", json=body, headers=basic(AUTH_STRING))
        assert answer.status_code == 200, answer.text
        names = sorted(e["event"] for e in answer.json()["events"])
        if len(names) >= expected or time.monotonic() > deadline:
            return names
        time.sleep(0.25)


def test_secrets_reach_the_servers_through_the_environment_only(auth_stack: AuthStack) -> None:
    processes = service_processes(auth_stack.state)
    assert set(processes) >= {"prefect", "mlflow", "worker", "registry_webhook"}
    assert set(processes) <= {
        "prefect",
        "mlflow",
        "worker",
        "registry_webhook",
        "prometheus",
        "pushgateway",
    }
    for name, procs in processes.items():
        for proc in procs:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
            assert AUTH_STRING not in cmdline and PASSWORD not in cmdline, (name, cmdline)
    environ = {name: procs[0].environ() for name, procs in processes.items()}
    assert environ["prefect"]["PREFECT_SERVER_API_AUTH_STRING"] == AUTH_STRING
    assert environ["worker"]["PREFECT_API_AUTH_STRING"] == AUTH_STRING
    assert "PREFECT_SERVER_API_AUTH_STRING" not in environ["worker"]  # the server's own
    assert environ["mlflow"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == PASSWORD
    assert environ["worker"]["MLFLOW_TRACKING_PASSWORD"] == PASSWORD  # flow runs inherit it
    assert "--app-name" in processes["mlflow"][0].cmdline()
    for private in ("basic_auth.ini", "auth.db", "flask-secret-key"):
        mode = stat.S_IMODE((auth_stack.state / "mlflow" / private).stat().st_mode)
        assert mode == 0o600, (private, oct(mode))
    assert PASSWORD not in (auth_stack.state / "mlflow" / "basic_auth.ini").read_text()


def test_status_names_the_auth_of_each_service(auth_stack: AuthStack) -> None:
    out = mlops(auth_stack.env, "status")
    assert_clean(out)
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "auth string" in lines["prefect"]
    assert "basic-auth app, user admin" in lines["mlflow"]
    assert "sends the auth string" in lines["worker"]


def test_an_unauthenticated_client_emits_no_event(auth_stack: AuthStack) -> None:
    resource = f"mlops.model.auth-test-{uuid.uuid4().hex[:8]}"
    url = f"{auth_stack.prefect_api}/events"
    # over HTTP: no header, a wrong string, or a bearer token are all refused
    for headers in ({}, basic("mlops:wrong"), {"Authorization": f"Bearer {AUTH_STRING}"}):
        refused = httpx.post(
            url, json=[event("mlops.model.drift-detected", resource)], headers=headers
        )
        assert refused.status_code == 401, (headers, refused.text)

    # over the events websocket (what prefect.events.emit_event uses): the first message must
    # carry the auth string, and a client that skips the handshake is closed too
    for token in (None, "mlops:wrong"):
        with pytest.raises(ConnectionClosedError) as closed:
            asyncio.run(websocket_auth(auth_stack.prefect_api, token))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with pytest.raises(InvalidStatus) as refused_upgrade:  # refused before the upgrade
        asyncio.run(websocket_auth(auth_stack.prefect_api, None, subprotocols=[]))
    assert refused_upgrade.value.response.status_code == 403
    assert asyncio.run(websocket_auth(auth_stack.prefect_api, AUTH_STRING)) == "auth_success"

    async def emit_with_prefects_client() -> None:
        from prefect.events import Event
        from prefect.events.clients import PrefectEventsClient
        from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

        with temporary_settings({PREFECT_API_AUTH_STRING: AUTH_STRING}):
            async with PrefectEventsClient(auth_stack.prefect_api) as client:
                await client.emit(
                    Event(event="mlops.auth-test.ws", resource={"prefect.resource.id": resource})
                )

    asyncio.run(emit_with_prefects_client())
    accepted = httpx.post(
        url, json=[event("mlops.auth-test.http", resource)], headers=basic(AUTH_STRING)
    )
    assert accepted.status_code == 204, accepted.text
    names = stored_events(auth_stack.prefect_api, resource, expected=2)
    assert names == ["mlops.auth-test.http", "mlops.auth-test.ws"]  # no drift event got in


def test_an_unauthenticated_client_triggers_no_retraining(auth_stack: AuthStack) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.states import Scheduled
    from prefect.types._datetime import now

    with SyncPrefectClient(auth_stack.prefect_api, auth_string=AUTH_STRING) as client:
        deployment = client.read_deployment_by_name(RETRAINING)
        assert deployment.work_pool_name == "local"
        with SyncPrefectClient(auth_stack.prefect_api) as anonymous:
            with pytest.raises(PrefectHTTPStatusError, match="401"):
                anonymous.read_deployment_by_name(RETRAINING)
            with pytest.raises(PrefectHTTPStatusError, match="401"):
                anonymous.create_flow_run_from_deployment(deployment.id)
        with (
            SyncPrefectClient(auth_stack.prefect_api, auth_string="mlops:wrong") as wrong,
            pytest.raises(PrefectHTTPStatusError, match="401"),
        ):
            wrong.create_flow_run_from_deployment(deployment.id)
        # the credentials may: a run scheduled for tomorrow (so the worker leaves it alone)
        run = client.create_flow_run_from_deployment(
            deployment.id, state=Scheduled(scheduled_time=now("UTC") + timedelta(days=1))
        )
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
        assert [r.id for r in runs] == [run.id]  # the refused attempts left no run behind
        assert runs[0].state_type == StateType.SCHEDULED
        client.delete_flow_run(run.id)


def test_an_unauthenticated_mlflow_client_moves_no_alias(
    auth_stack: AuthStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = f"auth-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(auth_stack.mlflow)
    client.create_registered_model(name)
    experiment = client.create_experiment(name)
    run = client.create_run(experiment)
    versions = [
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
        for _ in range(2)
    ]
    client.set_registered_model_alias(name, "champion", versions[0].version)

    for user, password in (("admin", None), ("admin", "wrong-password-123")):
        if password is None:
            monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
            monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        with pytest.raises(MlflowException, match=r"401"):
            MlflowClient(auth_stack.mlflow).set_registered_model_alias(
                name, "champion", versions[1].version
            )
    raw = httpx.post(
        f"{auth_stack.mlflow}/api/2.0/mlflow/registered-models/alias",
        json={"name": name, "alias": "champion", "version": versions[1].version},
    )
    assert raw.status_code == 401, raw.text

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert client.get_model_version_by_alias(name, "champion").version == versions[0].version
    client.set_registered_model_alias(name, "champion", versions[1].version)
    assert client.get_model_version_by_alias(name, "champion").version == versions[1].version


def test_a_changed_mlflow_password_is_reported_when_the_stack_starts(
    auth_stack: AuthStack,
) -> None:
    """The admin keeps the password it was created with: `up` with another one says so."""
    from pydantic import SecretStr

    from mlops.core.errors import StackError
    from mlops.core.settings import Settings
    from mlops.stack.local import check_credentials

    settings = Settings(
        state_dir=auth_stack.state,
        mlflow_tracking_uri=auth_stack.mlflow,
        mlflow_password=SecretStr("another-password-123"),
    )
    with pytest.raises(StackError, match="mlflow refuses the credentials of MLOPS_MLFLOW_PASSWORD"):
        check_credentials(settings, "mlflow")
