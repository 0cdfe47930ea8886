"""The `mlops` command and the local stack as a user meets them, each command a real process."""

from __future__ import annotations

import socket

import psutil
import pytest

from tests.helpers import mlops

pytestmark = pytest.mark.integration


def test_a_taken_port_is_reported_plainly_and_nothing_is_left_running(
    user_env: dict[str, str],
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        # the MLflow port: the Prefect server has started by the time the clash is found
        out = mlops({**user_env, "MLOPS_MLFLOW_PORT": str(port)}, "up", timeout=180)
    assert out.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr
    assert "MLOPS_MLFLOW_PORT" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    started = [int(w.rstrip(",")) for w in out.stdout.split() if w.rstrip(",").isdigit()]
    assert started, out.stdout
    for pid in started:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    status = mlops(user_env, "status")
    assert "not running" in status.stdout


@pytest.mark.parametrize(
    ("bad", "line"),
    [
        (
            {"MLOPS_PREFECT_PORT": "not-a-port"},
            "error: MLOPS_PREFECT_PORT: Input should be a valid",
        ),
        ({}, "error: MLOPS_MLFLOW_PASSWORD: must be at least 12 characters"),
    ],
)
def test_an_unusable_setting_is_one_line_naming_it_never_its_value(
    user_env: dict[str, str], bad: dict[str, str], line: str
) -> None:
    env = (
        user_env
        | {
            "MLOPS_MLFLOW_PASSWORD": "short-pw",
            "MLOPS_DATABASE_URL": "postgresql://team:pg-secret@db:5432",
        }
        | bad
    )
    out = mlops(env, "status", timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert line in out.stderr, out.stderr
    for secret in ("short-pw", "pg-secret"):
        assert secret not in out.stdout + out.stderr
