"""The `mlops` command and the local stack as a user meets them, each command a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from mlops.stack import free_port
from tests.helpers import PROJECT

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _run(env: dict[str, str], *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def mlops(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return _run(env, str(BIN / "mlops"), *args, timeout=timeout)


def _clean(out: subprocess.CompletedProcess[str]) -> None:
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert not [
        line for line in text.splitlines() if "| ERROR" in line or line.startswith("ERROR")
    ], text


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A user's shell: its own state folder and ports, nothing inherited from the test session."""
    state = tmp_path_factory.mktemp("user-stack")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "PREFECT_", "MLFLOW_"))
    }
    env.update(
        MLOPS_STATE_DIR=str(state),
        MLOPS_PREFECT_PORT=str(free_port()),
        MLOPS_MLFLOW_PORT=str(free_port()),
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    yield env
    mlops(env, "down", timeout=120)


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


def test_demo_then_prefect_cli_then_status_and_down(user_env: dict[str, str]) -> None:
    demo = mlops(user_env, "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    _clean(demo)
    md5 = yaml.safe_load((PROJECT / "data" / "adult.csv.dvc").read_text())["outs"][0]["md5"]
    assert "registered adult-income version 1" in demo.stdout
    assert f"mlops.data.md5 = {md5}" in demo.stdout
    assert "mlops.git.commit = " in demo.stdout and "mlops.trigger = deployment" in demo.stdout
    assert "adult-income v1 is champion (was none)" in demo.stdout
    for gate in (
        "metric-thresholds",
        "champion-vs-challenger",
        "fairness",
        "training-data",
        "model-contract",
    ):
        assert f"{gate}" in demo.stdout

    # every link of the lineage chain of the promoted version
    chain = mlops(user_env, "audit", "adult-income")
    assert chain.returncode == 0, chain.stderr
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True
    ).stdout.strip()
    for link in (
        "adult-income v1",
        "champion",
        f"dvc md5          {md5}",
        f"git commit       {commit}",
        "pipeline sha256",
        "prefect run",
        "mlflow run",
        "model.params.max_iter",
        "roc_auc",
        "policy             v1",
        "fairness                 pass",
        "promoted       by deployment",
    ):
        assert link in chain.stdout, (link, chain.stdout)

    # retraining v1 from its own data version and config gives the same holdout metrics
    again_trained = mlops(user_env, "reproduce", "adult-income", "--version", "1")
    assert again_trained.returncode == 0, again_trained.stdout + again_trained.stderr
    assert "reproduced: largest difference 0" in again_trained.stdout
    assert "Traceback" not in again_trained.stdout + again_trained.stderr

    # up again: nothing new is started
    again = mlops(user_env, "up")
    assert again.returncode == 0 and again.stdout.count("already running") == 3
    assert "started" not in again.stdout

    # the Prefect CLI against the stack runs the deployment through the worker
    api = f"http://127.0.0.1:{user_env['MLOPS_PREFECT_PORT']}/api"
    run = _run(
        {**user_env, "PREFECT_API_URL": api},
        str(BIN / "prefect"),
        "deployment",
        "run",
        "training/adult",
        "--watch",
        "--watch-timeout",
        "600",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Flow run finished successfully in 'Completed'" in run.stdout
    flow_run_id = next(line.split()[-1] for line in run.stdout.splitlines() if "UUID:" in line)
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api) as client:
        fr = client.read_flow_run(uuid.UUID(flow_run_id))
    assert fr.state is not None and fr.state.is_completed()

    status = mlops(user_env, "status")
    assert status.returncode == 0
    assert [line.split()[0] for line in status.stdout.splitlines()] == [
        "prefect",
        "mlflow",
        "worker",
    ]

    # a server that dies is reported, and a command that needs it says so
    state = json.loads((Path(user_env["MLOPS_STATE_DIR"]) / "stack.json").read_text())
    pids = {s["name"]: s["pid"] for s in state["services"]}
    os.killpg(os.getpgid(pids["mlflow"]), signal.SIGKILL)
    psutil.Process(pids["mlflow"]).wait(timeout=10)
    status = mlops(user_env, "status")
    assert status.returncode == 1
    assert "mlflow" in status.stdout and "dead" in status.stdout
    train = mlops(user_env, "train")
    assert train.returncode == 1
    assert "MLflow server not answering" in train.stderr and "mlops up" in train.stderr
    assert "Traceback" not in train.stdout + train.stderr

    down = mlops(user_env, "down")
    assert down.returncode == 0
    for name, pid in pids.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (
            name
        )
    assert "not running" in mlops(user_env, "status").stdout
