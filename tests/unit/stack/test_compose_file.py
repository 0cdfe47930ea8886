"""infra/docker/compose.yaml against the Compose Specification's schema (check-jsonschema's vendored
copy, offline), and make-secrets.sh: every credential fresh, private, and never overwritten.
tests/e2e/test_compose_stack.py runs the stack itself."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import BIN, PROJECT

pytestmark = pytest.mark.unit

DOCKER = PROJECT / "infra" / "docker"


def make_secrets(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DOCKER / "make-secrets.sh"), str(folder)], capture_output=True, text=True, timeout=30
    )


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_compose_file_follows_the_compose_specification() -> None:
    checked = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DOCKER / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_stack_has_every_service_a_team_needs_and_publishes_on_loopback_only() -> None:
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "prefect-server",
        "prefect-services",
        "mlflow",
        "prometheus",
        "worker",
    }
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert "--no-services" in services["prefect-server"]["command"]
    assert services["prefect-services"]["environment"]["PREFECT_API_DATABASE_MIGRATE_ON_START"] == (
        "false"
    )


def test_make_secrets_writes_each_credential_fresh_and_consistent(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert make_secrets(one).returncode == 0
    assert make_secrets(two).returncode == 0
    clients = env_file(one / "clients.env")
    server = env_file(one / "prefect-server.env")
    mlflow = env_file(one / "mlflow-server.env")
    database = env_file(one / "postgres.env")["POSTGRES_PASSWORD"]
    assert clients["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"]
    assert clients["MLFLOW_TRACKING_PASSWORD"] == mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert (
        f"mlops:{database}@postgres:5432/prefect" in server["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    assert f"mlops:{database}@postgres:5432/mlflow" in mlflow["MLFLOW_BACKEND_STORE_URI"]
    assert f"mlops:{database}@postgres:5432/mlflow" in (one / "mlflow-basic-auth.ini").read_text()
    user, password = clients["PREFECT_API_AUTH_STRING"].split(":", 1)
    assert user == "admin" and (one / "prefect-api.password").read_text() == password
    assert env_file(two / "clients.env") != clients, "each run draws new values"
    assert len(database) == 48 and len(password) == 48


def test_make_secrets_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    assert make_secrets(folder).returncode == 0
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert {m for n, m in modes.items() if n.endswith(".env")} == {0o600}, modes
    assert modes["mlflow-basic-auth.ini"] == modes["prefect-api.password"] == 0o444
    before = {p.name: p.read_text() for p in folder.iterdir()}
    again = make_secrets(folder)
    assert again.returncode == 1 and "already holds secrets" in again.stderr
    assert {p.name: p.read_text() for p in folder.iterdir()} == before
