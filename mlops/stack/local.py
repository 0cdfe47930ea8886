"""The local stack: a Prefect server, an MLflow server and a process worker on 127.0.0.1.

`up` starts each as a child process in its own session, records its pid and start time under
``<state_dir>/stack.json`` and waits until it answers; `down` stops exactly the recorded processes
(the start time guards against a recycled pid); `status` says what runs where and with which auth.

With ``MLOPS_PREFECT_AUTH_STRING`` set, the Prefect server requires it; with ``MLOPS_MLFLOW_PASSWORD``,
the MLflow server runs its basic-auth app. Secrets reach the servers and every client the stack
starts through the environment only, never a command line (``ps`` shows argv to every user).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mlops.core.errors import StackError
from mlops.core.files import write_atomic
from mlops.core.settings import Settings
from mlops.stack.fork_server import ForkServer
from mlops.stack.postgres import ensure_database, where
from mlops.stack.processes import (
    console_script,
    free_port,
    healthy,
    port_free,
    process_alive,
    spawn,
    started_at,
    stop_process_group,
    tail,
)
from mlops.stack.prometheus import (
    INSTALL_HINT,
    PROMETHEUS,
    PUSHGATEWAY,
    prometheus_argv,
    prometheus_binary,
    pushgateway_argv,
    pushgateway_url,
    render_config,
    scrape_targets_dir,
)
from mlops.stack.registry_webhooks import (
    REGISTRY_WEBHOOK,
    mlflow_server_env,
    register_webhook,
    service_argv,
    write_scrape_target,
)

WORKER = "worker"


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    port: int | None
    health_url: str | None
    ui_url: str | None


@dataclass
class Running:
    name: str
    pid: int
    started: float  # processes.started_at: tells the process from a later one given its pid
    log: str
    ui_url: str | None = None
    port: int | None = None


@dataclass
class StackState:
    services: list[Running] = field(default_factory=list)

    def get(self, name: str) -> Running | None:
        return next((s for s in self.services if s.name == name), None)


def sqlite_file(settings: Settings, name: str) -> Path:
    """The SQLite file the server ``name`` (prefect, mlflow) keeps its state in by default."""
    return settings.state_dir / name / f"{name}.db"


def service_env(settings: Settings) -> dict[str, str]:
    """Environment for the stack's processes and for flow runs against it."""
    state = settings.state_dir
    prefect_home = state / "prefect"
    env = {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": str(settings.prefect_api_url),
        "PREFECT_SERVER_API_HOST": settings.host,
        "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{sqlite_file(settings, 'prefect')}",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.results_dir),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the worker asks for due runs every half second (one indexed query on a local server):
        # an automation's run waits at most that long (Prefect's default is 10 s)
        "PREFECT_WORKER_QUERY_SECONDS": "0.5",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DO_NOT_TRACK": "1",
        "MLOPS_PROJECT_DIR": str(settings.project_dir),
        "MLOPS_STATE_DIR": str(state),
        "MLOPS_HOST": settings.host,
        "MLOPS_PREFECT_PORT": str(settings.prefect_port),
        "MLOPS_MLFLOW_PORT": str(settings.mlflow_port),
        "MLOPS_PREFECT_API_URL": str(settings.prefect_api_url),
        "MLOPS_MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "MLOPS_PROMETHEUS_PORT": str(settings.prometheus_port),
        "MLOPS_PROMETHEUS_URL": str(settings.prometheus_url),
        "MLOPS_PUSHGATEWAY_PORT": str(settings.pushgateway_port),
        "MLOPS_WORK_POOL": settings.work_pool,
    }
    if pushgateway := pushgateway_url(settings):
        env["MLOPS_PUSHGATEWAY_URL"] = pushgateway
    if settings.aws_endpoint_url:  # an S3-compatible store or an emulation: every client goes there
        env |= {
            "AWS_ENDPOINT_URL": settings.aws_endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": settings.aws_endpoint_url,
        }
    if settings.aws_region:
        env["AWS_DEFAULT_REGION"] = settings.aws_region
    return env | client_credentials(settings)


def client_credentials(settings: Settings) -> dict[str, str]:
    """The credentials every client of the stack sends: the worker, the flow runs it spawns, the
    CLI, model servers and the release guard, as Prefect, MLflow and the model server read them."""
    env = {}
    if settings.prefect_auth_string is not None:
        env["PREFECT_API_AUTH_STRING"] = settings.prefect_auth_string.get_secret_value()
    if settings.mlflow_password is not None:
        env["MLFLOW_TRACKING_USERNAME"] = settings.mlflow_username
        env["MLFLOW_TRACKING_PASSWORD"] = settings.mlflow_password.get_secret_value()
    if settings.serving_token is not None:
        env["MLOPS_SERVING_TOKEN"] = settings.serving_token.get_secret_value()
    return env


def server_env(settings: Settings, name: str) -> dict[str, str]:
    """What only the server ``name`` gets beyond `service_env`: the secret it checks clients
    against, and Prefect's database when it is not the SQLite file. For MLflow's auth app this
    writes its config under the state folder (mode 0600)."""
    if name == "prefect":
        env = {}
        if settings.prefect_auth_string is not None:
            env["PREFECT_SERVER_API_AUTH_STRING"] = settings.prefect_auth_string.get_secret_value()
        if (url := settings.server_database("prefect")) is not None:  # not the SQLite file
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = url
        return env
    if name == "mlflow":  # delivers the registry webhooks to the stack's receiver
        auth = mlflow_auth_env(settings) if settings.mlflow_password is not None else {}
        # the backend store from the environment, not --backend-store-uri: its password stays
        # off the command line (MLflow's CLI reads this variable for that option)
        store = settings.server_database("mlflow") or f"sqlite:///{sqlite_file(settings, 'mlflow')}"
        # MLflow 3's Huey job runner (seven processes, each importing MLflow) runs its GenAI jobs;
        # the registry and tracking need none of it, and webhooks go out from the server's threads
        return (
            auth
            | mlflow_server_env(settings)
            | {"MLFLOW_BACKEND_STORE_URI": store, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        )
    return {}


#: The settings only the servers read: kept out of every other process the stack starts
SERVER_ONLY = (
    "MLOPS_DATABASE_URL",
    "MLOPS_DATABASE_URL_FILE",
    "MLOPS_PREFECT_DATABASE_URL",
    "MLOPS_MLFLOW_DATABASE_URL",
)


def check_shared(settings: Settings) -> None:
    """A stack that serves beyond this machine's loopback runs with both servers' authentication:
    refused otherwise, naming what to set, before anything starts."""
    if settings.local_only:
        return
    missing = [
        variable
        for variable, value in (
            ("MLOPS_PREFECT_AUTH_STRING", settings.prefect_auth_string),
            ("MLOPS_MLFLOW_PASSWORD", settings.mlflow_password),
        )
        if value is None
    ]
    if missing:
        raise StackError(
            f"MLOPS_HOST={settings.host} serves the stack beyond this machine, and then both "
            f"servers require authentication: set {' and '.join(missing)} (or their _FILE "
            "variables, a mounted secret each), or MLOPS_HOST=127.0.0.1 for one person's stack"
        )


def ensure_databases(settings: Settings, out: Callable[[str], None]) -> None:
    """Create each server's PostgreSQL database where the server has none yet."""
    for name in ("prefect", "mlflow"):
        url = settings.server_database(name)
        if url is not None and ensure_database(url):
            out(f"{name}: created the database {where(url)}")


def mlflow_auth_env(settings: Settings) -> dict[str, str]:
    """Config of MLflow's basic-auth app: its user database and ini under ``<state>/mlflow``.

    The admin is created with the configured password when the user database is new; MLflow
    ignores the password once the admin exists (see `check_credentials`)."""
    assert settings.mlflow_password is not None
    folder = settings.state_dir / "mlflow"
    shared = settings.server_database("mlflow")
    database = folder / "auth.db"
    if shared is None and not database.exists():  # an empty file is an empty SQLite database
        write_private(database, "")
    # on a shared stack its users live beside its runs (their own tables and migration history);
    # the ini then holds the database's password, and is private like every file here
    users = shared.replace("%", "%%") if shared else f"sqlite:///{database}"
    key_file = folder / "flask-secret-key"
    if not key_file.exists():  # static across restarts, or the UI's CSRF tokens break
        write_private(key_file, secrets.token_hex(32))
    config = folder / "basic_auth.ini"
    write_private(
        config,
        "[mlflow]\n"
        # the admin alone is authorised; a user someone signs up gets no permission by default
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {users}\n"
        f"admin_username = {settings.mlflow_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # one PBKDF2 check per login a minute, not per request; one worker, so no stale copies
        "auth_cache_ttl_seconds = 60\n",
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow_username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": settings.mlflow_password.get_secret_value(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": key_file.read_text(),
    }


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, readable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def auth_headers(settings: Settings, name: str) -> dict[str, str]:
    """The Authorization header a client of server ``name`` sends (none without auth)."""
    if name == "prefect" and settings.prefect_auth_string is not None:
        return {"Authorization": basic(settings.prefect_auth_string.get_secret_value())}
    if name == "mlflow" and settings.mlflow_password is not None:
        password = settings.mlflow_password.get_secret_value()
        return {"Authorization": basic(f"{settings.mlflow_username}:{password}")}
    if name == "serving" and settings.serving_token is not None:
        return {"Authorization": f"Bearer {settings.serving_token.get_secret_value()}"}
    return {}


def serving_token(settings: Settings) -> str | None:
    """The bearer token model servers require (``MLOPS_SERVING_TOKEN``), or None."""
    return settings.serving_token.get_secret_value() if settings.serving_token else None


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")


def database_mode(settings: Settings, name: str) -> str | None:
    """Which database the server ``name`` keeps its state in, for `mlops status` (never the
    password); None for a service without one."""
    if name not in ("prefect", "mlflow"):
        return None
    url = settings.server_database(name)  # type: ignore[arg-type]
    return f"postgresql {where(url)}" if url else f"SQLite {sqlite_file(settings, name)}"


def auth_mode(settings: Settings, name: str) -> str:
    """Which authentication the service ``name`` uses, for `mlops status`."""
    if name == "prefect":
        return "auth string" if settings.prefect_auth_string is not None else "no auth"
    if name == "mlflow":
        if settings.mlflow_password is None:
            return "no auth"
        return f"basic-auth app, user {settings.mlflow_username}"
    if name == WORKER:
        return "sends the auth string" if settings.prefect_auth_string is not None else "no auth"
    if name == PROMETHEUS:
        return "scrapes every 1 s, no auth"
    if name == PUSHGATEWAY:
        return "no auth"
    if name == REGISTRY_WEBHOOK:
        return "HMAC-signed MLflow deliveries only"
    return ""


def services(settings: Settings) -> list[Service]:
    mlflow_dir = settings.state_dir / "mlflow"
    return [
        Service(
            name="prefect",
            argv=[
                console_script("prefect"),
                "server",
                "start",
                "--host",
                settings.host,
                "--port",
                str(settings.prefect_port),
            ],
            port=settings.prefect_port,
            health_url=f"{settings.prefect_api_url}/health",
            ui_url=settings.prefect_ui_url,
        ),
        Service(
            name="mlflow",
            argv=[
                console_script("mlflow"),
                "server",
                "--host",
                settings.host,
                "--port",
                str(settings.mlflow_port),
                "--artifacts-destination",
                settings.mlflow_artifacts_url or str(mlflow_dir / "artifacts"),
                "--serve-artifacts",
                "--workers",
                "1",
                *(["--app-name", "basic-auth"] if settings.mlflow_password is not None else []),
            ],
            port=settings.mlflow_port,
            health_url=f"{settings.mlflow_tracking_uri}/health",
            ui_url=str(settings.mlflow_tracking_uri),
        ),
        Service(
            name=PROMETHEUS,
            argv=prometheus_argv(settings) if prometheus_binary() else [],
            port=settings.prometheus_port,
            health_url=f"{settings.prometheus_url}/-/ready",
            ui_url=str(settings.prometheus_url),
        ),
        Service(
            name=PUSHGATEWAY,
            argv=[] if settings.pushgateway_url else pushgateway_argv(settings),
            port=settings.pushgateway_port,
            health_url=f"http://{settings.host}:{settings.pushgateway_port}/-/ready",
            ui_url=f"http://{settings.host}:{settings.pushgateway_port}",
        ),
        Service(
            name=REGISTRY_WEBHOOK,
            argv=service_argv(settings),
            port=settings.registry_webhook_port,
            health_url=f"http://{settings.host}:{settings.registry_webhook_port}/health",
            ui_url=f"http://{settings.host}:{settings.registry_webhook_port}/metrics",
        ),
        Service(
            name=WORKER,
            # Prefect's process worker, its flow runs forked from a zygote that imported the
            # pipeline once (mlops.stack.worker): an event's run starts without a fresh import
            argv=[
                sys.executable,
                "-m",
                "mlops.stack.worker",
                "--pool",
                settings.work_pool,
                "--name",
                f"mlops-{settings.work_pool}",
                "--project-dir",
                str(settings.project_dir),
            ],
            port=None,
            health_url=None,
            ui_url=f"{settings.prefect_ui_url}/work-pools/work-pool/{settings.work_pool}",
        ),
    ]


class LocalStack:
    """Start, inspect and stop the local stack described by ``settings``."""

    def __init__(self, settings: Settings, out: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.out = out
        self.state_file = settings.state_dir / "stack.json"
        self.logs = settings.state_dir / "logs"

    # state -----------------------------------------------------------------------------------
    def load(self) -> StackState:
        if not self.state_file.exists():
            return StackState()
        try:
            raw = json.loads(self.state_file.read_text())
            return StackState([Running(**s) for s in raw.get("services", [])])
        except (ValueError, TypeError) as exc:
            raise StackError(
                f"{self.state_file}: unreadable stack state ({exc}); remove it after "
                "checking no mlops process runs"
            ) from None

    def _save(self, state: StackState) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.state_file, json.dumps({"services": [asdict(s) for s in state.services]}, indent=2)
        )

    @staticmethod
    def alive(run: Running) -> bool:
        return process_alive(run.pid, run.started)

    # up --------------------------------------------------------------------------------------
    def up(self, with_worker: bool = True, deploy: bool = True) -> StackState:
        """Start what is not running yet, wait for health, register the work pool and deployments.

        If any part fails, the processes this call started are stopped again: a failed `up`
        leaves the machine as it found it.
        """
        check_shared(self.settings)
        state = self.load()
        # the database URLs (their passwords) reach the servers alone (server_env)
        env = {k: v for k, v in os.environ.items() if k not in SERVER_ONLY}
        env |= service_env(self.settings)
        for d in (
            self.settings.state_dir / "prefect",
            self.settings.state_dir / "mlflow",
            self.logs,
        ):
            d.mkdir(parents=True, exist_ok=True)
        by_name = {s.name: s for s in services(self.settings)}
        started: list[Running] = []
        try:
            ensure_databases(self.settings, self.out)
            servers = [by_name["prefect"], by_name["mlflow"], by_name[REGISTRY_WEBHOOK]]
            write_scrape_target(self.settings, scrape_targets_dir(self.settings))
            if by_name[PUSHGATEWAY].argv:
                servers.append(by_name[PUSHGATEWAY])
            if by_name[PROMETHEUS].argv:
                render_config(self.settings)
                servers.append(by_name[PROMETHEUS])
            else:
                self.out(f"{PROMETHEUS}: not started. {INSTALL_HINT}")
            for svc in servers:
                self._ensure_running(state, svc, env, started)
            for svc in servers:
                run = state.get(svc.name)
                assert run is not None
                self._wait_healthy(svc, run)
                check_credentials(self.settings, svc.name)
            register_webhook(self.settings, auth_headers(self.settings, "mlflow"))
            self.ensure_work_pool()
            if deploy:
                self.deploy(env)
            if with_worker:
                worker = self._ensure_running(state, by_name[WORKER], env, started)
                self._wait_worker(worker)
        except (StackError, KeyboardInterrupt):
            for run in reversed(started):
                stop_process_group(run.pid, timeout=10)
                state.services.remove(run)
            self._save(state)
            raise
        return state

    def _ensure_running(
        self, state: StackState, svc: Service, env: dict[str, str], started: list[Running]
    ) -> Running:
        running = state.get(svc.name)
        if running and self.alive(running):
            self.out(f"{svc.name}: already running (pid {running.pid})")
            return running
        if running:
            state.services.remove(running)
        run = self._start(svc, env)
        started.append(run)
        state.services.append(run)
        self._save(state)
        return run

    def _start(self, svc: Service, env: dict[str, str]) -> Running:
        if svc.port is not None and not port_free(self.settings.host, svc.port):
            raise StackError(
                f"{svc.name}: port {svc.port} on {self.settings.host} is already in use by another "
                f"program; stop it, or choose another port with MLOPS_{svc.name.upper()}_PORT"
            )
        log = self.logs / f"{svc.name}.log"
        env = env | server_env(self.settings, svc.name)
        proc = spawn(svc.argv, log, cwd=self.settings.project_dir, env=env)
        started = started_at(proc.pid)
        self.out(f"{svc.name}: started (pid {proc.pid}, log {log})")
        return Running(svc.name, proc.pid, started, str(log), svc.ui_url, svc.port)

    def _wait_healthy(self, svc: Service, run: Running) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        assert svc.health_url is not None
        while time.monotonic() < deadline:
            if not self.alive(run):
                raise StackError(
                    f"{svc.name} exited during start-up; last lines of {run.log}:\n"
                    + tail(Path(run.log))
                )
            if healthy(svc.health_url):
                return
            time.sleep(0.5)
        raise StackError(
            f"{svc.name} did not answer {svc.health_url} within "
            f"{self.settings.startup_timeout:.0f}s; last lines of {run.log}:\n"
            + tail(Path(run.log))
        )

    def ensure_work_pool(self) -> None:
        """Create the stack's process work pool, as deployments/environments/local.yaml describes
        it, if it does not exist (safe to run twice)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists
        from prefect.workers.process import ProcessWorker

        from mlops.stack.environments import load_environment

        spec = load_environment(self.settings.project_dir, "local")
        if spec.pool_type != "process":
            raise StackError(
                f"environment local: the local stack runs a process worker; type "
                f"{spec.pool_type!r} needs its own worker"
            )
        with (
            prefect_settings(self.settings),
            get_client(sync_client=True) as client,
        ):
            try:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=self.settings.work_pool,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                        description=spec.description or None,
                        concurrency_limit=spec.concurrency_limit,
                    )
                )
                self.out(f"work pool '{self.settings.work_pool}': created")
            except ObjectAlreadyExists:
                pass

    def deploy(self, env: dict[str, str], names: list[str] | None = None) -> None:
        """Register every deployment of prefect.yaml on this stack's work pool, or only ``names``
        (``flow/deployment``)."""
        from mlops.stack.environments import DeploymentEnvironmentError, deploy_all

        try:
            deploy_all(self.settings.project_dir, self.settings.work_pool, env, names)
        except DeploymentEnvironmentError as exc:
            raise StackError(str(exc)) from None
        which = f"{len(names)} deployments" if names else "deployments"
        self.out(f"{which}: registered from prefect.yaml on work pool '{self.settings.work_pool}'")

    def _wait_worker(self, run: Running) -> None:
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + self.settings.startup_timeout
        with (
            prefect_settings(self.settings),
            get_client(sync_client=True) as client,
        ):
            while time.monotonic() < deadline:
                if not self.alive(run):
                    raise StackError(
                        f"worker exited during start-up; last lines of {run.log}:\n"
                        + tail(Path(run.log))
                    )
                workers = client.read_workers_for_work_pool(self.settings.work_pool)
                if any(w.status == "ONLINE" or str(w.status).endswith("ONLINE") for w in workers):
                    return
                time.sleep(0.5)
        raise StackError(
            f"the worker did not come online within {self.settings.startup_timeout:.0f}s; "
            f"see {run.log}"
        )

    # down / status ---------------------------------------------------------------------------
    def down(self, timeout: float = 15.0) -> list[str]:
        """Stop the processes this stack started (worker first), and only those."""
        state = self.load()
        stopped = []
        for run in sorted(state.services, key=lambda r: r.name != WORKER):
            if self.alive(run):
                stop_process_group(run.pid, timeout)
                stopped.append(run.name)
                self.out(f"{run.name}: stopped (pid {run.pid})")
            else:
                self.out(f"{run.name}: was not running")
        if ForkServer(self.settings.state_dir).stop():
            self.out("fork server: stopped (the model servers it forked are the targets')")
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped

    def status(self) -> list[tuple[str, str, str]]:
        """(service, state, where) for each recorded service: running, unhealthy or dead."""
        state = self.load()
        rows = []
        by_name = {s.name: s for s in services(self.settings)}
        for run in state.services:
            svc = by_name.get(run.name)
            if not self.alive(run):
                rows.append(
                    (run.name, f"dead (pid {run.pid} is gone; see {run.log})", run.ui_url or "")
                )
            elif svc and svc.health_url and not healthy(svc.health_url):
                rows.append(
                    (run.name, f"not answering (pid {run.pid}; see {run.log})", run.ui_url or "")
                )
            else:
                auth = auth_mode(self.settings, run.name)
                database = database_mode(self.settings, run.name)
                detail = f"{auth}; {database}" if database else auth
                rows.append((run.name, f"running (pid {run.pid}; {detail})", run.ui_url or ""))
        return rows


def prefect_settings(settings: Settings) -> contextlib.AbstractContextManager[object]:
    """Prefect's settings for a client of this stack's server, whatever this process read."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    values: dict[Any, Any] = {PREFECT_API_URL: settings.prefect_api_url}
    if settings.prefect_auth_string is not None:
        values[PREFECT_API_AUTH_STRING] = settings.prefect_auth_string.get_secret_value()
    return temporary_settings(values)


def use_private_stack(project_dir: Path, state_dir: Path, **env: str) -> Settings:
    """Point this process at a private local stack (its own state folder, free ports).

    For tests and benchmarks, beside a user's running stack. Call it before Prefect is imported:
    Prefect reads its settings at import.
    """
    os.environ.update(
        MLOPS_PROJECT_DIR=str(project_dir),
        MLOPS_STATE_DIR=str(state_dir),
        MLOPS_PREFECT_PORT=str(free_port()),
        MLOPS_MLFLOW_PORT=str(free_port()),
        MLOPS_PROMETHEUS_PORT=str(free_port()),
        MLOPS_PUSHGATEWAY_PORT=str(free_port()),
        MLOPS_REGISTRY_WEBHOOK_PORT=str(free_port()),
        **env,
    )
    for derived in (
        "MLOPS_PREFECT_API_URL",
        "MLOPS_MLFLOW_TRACKING_URI",
        "MLOPS_PROMETHEUS_URL",
        "MLOPS_PIPELINE",
    ):
        os.environ.pop(derived, None)
    settings = Settings()
    os.environ.update(service_env(settings))
    return settings


def check_credentials(settings: Settings, name: str) -> None:
    """Fail with the reason when server ``name`` refuses the configured credentials (MLflow keeps
    the admin password it was first started with; Prefect one started with another string)."""
    headers = auth_headers(settings, name)
    if not headers:
        return
    url = (
        f"{settings.prefect_api_url}/admin/version"
        if name == "prefect"
        else f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/users/current"
    )
    try:
        answer = httpx.get(url, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise StackError(f"{name}: {url} cannot be reached ({exc})") from None
    if answer.status_code in (401, 403):
        setting = "MLOPS_PREFECT_AUTH_STRING" if name == "prefect" else "MLOPS_MLFLOW_PASSWORD"
        hint = (
            f" (the admin of {settings.state_dir / 'mlflow' / 'auth.db'} keeps the password it "
            "was created with: change it with MLflow's update-password API)"
            if name == "mlflow"
            else " (an already running server was started with another one)"
        )
        raise StackError(f"{name} refuses the credentials of {setting}{hint}")
    if answer.status_code != 200:
        raise StackError(f"{name}: {url} answered {answer.status_code}: {answer.text[:200]}")
