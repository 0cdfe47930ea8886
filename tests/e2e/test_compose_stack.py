"""A team's stack on one container host, as infra/docker/compose.yaml runs it: PostgreSQL, Redis,
the Prefect server beside its services, MLflow, Prometheus and a docker worker, on the engine the
image tests use (Podman's Docker API, docker-compose 1.29 from Debian). Every image is built here
from this checkout: the flow image on the locally built Debian base, and Postgres, Redis and
Prometheus from Debian's packages (infra/docker/standins/), since no hub is reachable. Then, as a
team's admin would: the secrets from make-secrets.sh, `mlops data pull` into the team's DVC remote,
`mlops deploy --env docker --create-pool`, one training run through the worker as a container of
the flow image, and the stack stopped with its volumes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from mlops.stack.processes import free_port
from tests.engine import Engine, build_image, container_engine
from tests.helpers import BIN, PROJECT, git, mlops, run_command

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("docker-compose") is None,
        reason="needs docker-compose (infra/docker/setup-engine.sh installs it; CI runs it)",
    ),
]

DOCKER = PROJECT / "infra" / "docker"
MODEL = "adult-income"


@dataclass(frozen=True)
class Compose:
    project: str
    env: dict[str, str]  # compose's own: the engine, images, ports, secrets
    client: dict[str, str]  # a team member's shell: the servers and their credentials
    secrets: Path
    remote: Path

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "-p", self.project, "-f", str(DOCKER / "compose.yaml"), *args]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def psql(self, database: str, sql: str) -> list[str]:
        out = self("exec", "-T", "postgres", "psql", "-U", "mlops", "-d", database, "-tAc", sql)
        assert out.returncode == 0, out.stdout + out.stderr
        return [line for line in out.stdout.splitlines() if line]


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def wait_for(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:.0f} s (last: {last})")


def engine_client(docker_host: str) -> Any:
    """The engine's Docker API with room to work: removing a 2.7 GB image took over the client's
    default 60 s on a loaded CI machine."""
    return docker.DockerClient(base_url=docker_host, timeout=900)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with container_engine(tmp_path_factory.mktemp("engine")) as found:
        yield found


@pytest.fixture(scope="module")
def images(engine: Engine) -> Iterator[dict[str, str]]:
    """The four images of the stack, built from this checkout (each tag this run's own), their
    tags removed with the module (the layers stay: the next build reuses them)."""
    run = uuid.uuid4().hex[:8]
    tags = {
        "MLOPS_FLOW_IMAGE": f"localhost/mlops-flows:{run}",
        "MLOPS_POSTGRES_IMAGE": f"localhost/mlops-postgres:{run}",
        "MLOPS_REDIS_IMAGE": f"localhost/mlops-redis:{run}",
        "MLOPS_PROMETHEUS_IMAGE": f"localhost/mlops-prometheus:{run}",
    }
    started = time.monotonic()
    build_image(
        engine, DOCKER / "flows.Dockerfile", PROJECT, tags["MLOPS_FLOW_IMAGE"], EXTRAS="server"
    )
    for name in ("postgres", "redis", "prometheus"):
        dockerfile = DOCKER / "standins" / f"{name}.Dockerfile"
        build_image(engine, dockerfile, dockerfile.parent, tags[f"MLOPS_{name.upper()}_IMAGE"])
    print(f"images built in {time.monotonic() - started:.0f} s")
    yield tags
    client = engine_client(engine.docker_host)
    for tag in tags.values():
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag, noprune=True)


@pytest.fixture(scope="module")
def stack(
    engine: Engine, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Compose]:
    root = tmp_path_factory.mktemp("compose")
    secrets = root / "secrets"
    made = subprocess.run(
        [str(DOCKER / "make-secrets.sh"), str(secrets)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    remote = root / "dvc-remote"
    remote.mkdir()
    remote.chmod(0o777)  # the flow containers run as the image's user (10001)
    ports = {f"MLOPS_{n}_PORT": str(free_port()) for n in ("PREFECT", "MLFLOW", "PROMETHEUS")}
    socket = engine.docker_host.removeprefix("unix://")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env = base | images | ports
    env |= {"DOCKER_HOST": engine.docker_host, "MLOPS_SECRETS_DIR": str(secrets)}
    env |= {"MLOPS_DOCKER_SOCKET": socket}
    client = {k: v for k, v in base.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    client |= read_env_file(secrets / "clients.env") | {
        "PATH": f"{BIN}:{base.get('PATH', '')}",
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['MLOPS_PREFECT_PORT']}/api",
        "MLOPS_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['MLOPS_MLFLOW_PORT']}",
        "MLOPS_DVC_REMOTE_URL": str(remote),
        "MLOPS_FLOW_IMAGE": images["MLOPS_FLOW_IMAGE"],
        "MLOPS_STATE_DIR": str(root / "state"),
    }
    compose = Compose(f"mlops-{uuid.uuid4().hex[:8]}", env, client, secrets, remote)
    try:
        up = compose("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        wait_for(
            lambda: httpx.get(f"{client['PREFECT_API_URL']}/health").json() is True,
            "the Prefect server answers",
            300,
        )
        wait_for(
            lambda: httpx.get(f"{client['MLOPS_MLFLOW_TRACKING_URI']}/health").status_code == 200,
            "the MLflow server answers",
            300,
        )
        yield compose
    finally:
        logs = compose("logs", "--no-color", "--tail", "40")
        print(logs.stdout[-20000:])
        compose("down", "-v", "--timeout", "20")


@pytest.fixture(scope="module")
def trained(stack: Compose, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The admin's steps, then one training run through the worker."""
    checkout = tmp_path_factory.mktemp("checkout") / "project"
    git(PROJECT, "clone", "-q", str(PROJECT), str(checkout))
    pulled = run_command(
        stack.client | {"MLOPS_PROJECT_DIR": str(checkout)},
        str(BIN / "mlops"),
        "data",
        "pull",
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    secret = run_command(
        stack.client,
        str(BIN / "python"),
        "-c",
        "import os; from prefect.blocks.system import Secret; "
        "Secret(value=os.environ['MLFLOW_TRACKING_PASSWORD']).save('mlops-mlflow-password')",
    )
    assert secret.returncode == 0, secret.stderr
    deployed = mlops(stack.client, "deploy", "--env", "docker", "--create-pool", timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    started = time.monotonic()
    volume = json.dumps([f"{stack.remote}:{stack.remote}"])
    run = run_command(
        stack.client,
        str(BIN / "prefect"),
        "deployment",
        "run",
        "training/adult",
        "--job-variable",
        f"volumes={volume}",
        "--watch",
        "--watch-timeout",
        "900",
        timeout=960,
    )
    return {
        "run": run,
        "seconds": time.monotonic() - started,
        "pulled": pulled.stdout,
        "deployed": deployed.stdout,
    }


def flow_runs(stack: Compose, deployment: str) -> list[dict[str, Any]]:
    """The runs of ``deployment`` that have started, as the Prefect API records them."""
    out = run_command(
        stack.client,
        str(BIN / "python"),
        "-c",
        "import json, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    d = c.read_deployment_by_name(sys.argv[1])\n"
        "    print(json.dumps([{'state': r.state_type.value, 'pool': r.work_pool_name,\n"
        "        'pid': r.infrastructure_pid} for r in c.read_flow_runs()\n"
        "        if r.deployment_id == d.id and r.state_type.value != 'SCHEDULED']))",
        deployment,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_the_training_run_completes_in_a_container_of_the_flow_image(
    stack: Compose, trained: dict[str, Any]
) -> None:
    run = trained["run"]
    print(f"training run through the compose stack: {trained['seconds']:.0f} s")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Completed" in run.stdout, run.stdout[-4000:]
    runs = flow_runs(stack, "training/adult")
    assert [r["state"] for r in runs] == ["COMPLETED"], runs
    assert runs[0]["pool"] == "mlops-docker"
    assert runs[0]["pid"], "the worker recorded the container it started"


def test_the_records_are_rows_of_postgres(stack: Compose, trained: dict[str, Any]) -> None:
    assert trained["run"].returncode == 0
    databases = set(stack.psql("postgres", "select datname from pg_database"))
    assert {"prefect", "mlflow"} <= databases, databases
    states = stack.psql(
        "prefect",
        "select r.state_type from flow_run r join flow f on f.id = r.flow_id "
        "where f.name = 'training' and r.state_type <> 'SCHEDULED'",
    )
    assert states == ["COMPLETED"], states
    versions = stack.psql("mlflow", f"select version from model_versions where name = '{MODEL}'")
    assert versions == ["1"], versions
    assert stack.psql("mlflow", "select username from users") == ["admin"]
    # the task runs reach the database through the services' recorder, from Redis's event stream
    recorded = wait_for(
        lambda: int(stack.psql("prefect", "select count(*) from task_run")[0]) >= 5,
        "the services recorded the training's task runs",
        60,
    )
    assert recorded
    # and the services' scheduler made the monitoring deployments' runs
    scheduled = stack.psql(
        "prefect",
        "select count(*) from flow_run r join flow f on f.id = r.flow_id "
        "where f.name = 'monitoring' and r.auto_scheduled",
    )
    assert int(scheduled[0]) > 0, scheduled


def test_the_data_version_came_from_the_teams_dvc_remote(
    stack: Compose, trained: dict[str, Any]
) -> None:
    assert "seeded" in trained["pulled"] or "present" in trained["pulled"], trained["pulled"]
    stored = [p for p in stack.remote.rglob("*") if p.is_file()]
    assert len(stored) == 1, stored
    assert trained["run"].returncode == 0  # and the container read it from there


def test_both_servers_refuse_clients_without_credentials(stack: Compose) -> None:
    prefect = stack.client["PREFECT_API_URL"]
    mlflow = stack.client["MLOPS_MLFLOW_TRACKING_URI"]
    assert httpx.post(f"{prefect}/flow_runs/filter", json={}).status_code == 401
    search = f"{mlflow}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(search).status_code == 401
    assert httpx.get(search, auth=("admin", "not-the-password")).status_code == 401
    right = httpx.get(search, auth=("admin", stack.client["MLFLOW_TRACKING_PASSWORD"]))
    assert right.status_code == 200, right.text
    auth = stack.client["PREFECT_API_AUTH_STRING"]
    assert httpx.post(
        f"{prefect}/flow_runs/filter", json={}, auth=tuple(auth.split(":", 1))
    ).is_success


def test_prometheus_scrapes_the_prefect_api_with_its_credentials(stack: Compose) -> None:
    url = f"http://127.0.0.1:{stack.env['MLOPS_PROMETHEUS_PORT']}/api/v1/targets"

    def healthy() -> dict[str, str] | None:
        targets = httpx.get(url).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if health.get("prefect-server") == "up" else None

    health = wait_for(healthy, "Prometheus scraped the Prefect API", 90)
    assert health == {"prefect-server": "up", "prometheus": "up"}, health


def test_no_secret_is_on_a_container_command_line(stack: Compose) -> None:
    values = [v for f in stack.secrets.glob("*.env") for v in read_env_file(f).values()]
    secrets = [v for v in values if len(v) >= 24 and v != "admin"]
    assert secrets, "make-secrets.sh wrote random values"
    listed = stack("ps", "-q")
    ids = listed.stdout.split()
    assert len(ids) == 7, listed.stdout
    engine = engine_client(stack.env["DOCKER_HOST"])
    commands = [" ".join(engine.containers.get(i).attrs["Config"].get("Cmd") or []) for i in ids]
    assert any("prefect" in c for c in commands), commands
    for secret in secrets:
        assert not [c for c in commands if secret in c]


def test_down_stops_every_container_and_removes_the_volumes(stack: Compose) -> None:
    down = stack("down", "-v", "--timeout", "20")
    assert down.returncode == 0, down.stdout + down.stderr
    assert stack("ps", "-q").stdout.split() == []
    engine = engine_client(stack.env["DOCKER_HOST"])
    left = [v.name for v in engine.volumes.list() if v.name.startswith(stack.project)]
    assert left == [], left
    assert not engine.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={stack.project}"}
    )
