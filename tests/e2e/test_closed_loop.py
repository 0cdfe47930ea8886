"""The closed loop as a user runs it: `mlops demo` on a fresh local stack (real Prefect server,
worker, MLflow server, model servers behind the router), then the commands around it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.helpers import BIN, PROJECT, assert_clean, mlops, run_command

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(user_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`mlops demo` once for the module: its tests look at what it printed and left running (the
    last one stops the stack)."""
    demo = mlops(user_env, "demo", timeout=1200)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert_clean(demo)
    return demo


def test_the_demo_closes_the_loop_with_no_hands(
    demo: subprocess.CompletedProcess[str], user_env: dict[str, str]
) -> None:
    out = demo.stdout
    # no manual step after the shift: the drift event, the automation, retraining, gates, canary
    assert "skew:        none: 0 of 14 columns drifted (0%; limit 10%) against the " in out
    assert re.search(
        r"skew: +DETECTED: 2 of 14 columns drifted \(14%; limit 10%\) against the champion's "
        r"training data \(\d+ rows\): age, hours_per_week",
        out,
    ), out
    # the shifted window against the unshifted one before it: reported (the example sets no
    # limit), and each feature's influence on the champion's answers judged
    assert re.search(r"drift: +none: \d+ of 14 columns drifted \(\d+%; reported only", out), out
    assert "attribution: none: " in out or "attribution: DETECTED: " in out, out
    assert (
        "automation triggered by mlops.model.drift-detected: run deployment retraining/adult" in out
    )
    assert (
        "audit retraining-triggered v1" in out and "audit gate-decision v2: all gates pass" in out
    )
    assert "release step: traffic: blue 90%, green 10%" in out
    # monitoring judged the shifted window as soon as the log held its rows; each canary step
    # passed once its checks passed on at least min_requests (examples/adult/policy.yaml)
    assert re.search(r"shifted rows \([\d.]+ s later\); deployment monitoring/adult", out), out
    for step in ("step 1 (at 10%)", "step 2 (at 50%)"):
        assert f"release step: v2 {step}: pass after" in out, out
    assert "audit released v2: canary: all traffic on v2" in out
    assert "adult-income v2 is champion, serving 100% of traffic" in out
    router = f"http://127.0.0.1:{user_env['MLOPS_ROUTER_PORT']}"
    row = {"age": 52, "workclass": "Private", "fnlwgt": 77516, "education": "Bachelors",
           "education_num": 13, "marital_status": "Married-civ-spouse", "occupation": "Exec-managerial",
           "relationship": "Husband", "race": "White", "sex": "Male", "capital_gain": 0,
           "capital_loss": 0, "hours_per_week": 30, "native_country": "United-States"}  # fmt: skip
    answer = httpx.post(f"{router}/predict", json={"row": row}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model"] == {
        "name": "adult-income",
        "version": 2,
    }


def test_the_champions_lineage_and_a_reproduction(
    demo: subprocess.CompletedProcess[str], user_env: dict[str, str]
) -> None:
    # judging the next window by hand works beside the schedule
    monitor = mlops(user_env, "monitor")
    assert monitor.returncode == 0, monitor.stdout + monitor.stderr
    assert "adult-income v2: " in monitor.stdout and "  drift        " in monitor.stdout
    chain = mlops(user_env, "audit", "adult-income", "--version", "2")
    assert "retraining: mlops.model.drift-detected (event " in chain.stdout, chain.stdout
    assert "production rows  " in chain.stdout and "labelled (parquet md5 " in chain.stdout
    md5 = yaml.safe_load((PROJECT / "data" / "adult.csv.dvc").read_text())["outs"][0]["md5"]
    assert "registered adult-income version 1" in demo.stdout
    assert f"mlops.data.md5 = {md5}" in demo.stdout
    assert "mlops.git.commit = " in demo.stdout and "mlops.trigger = deployment" in demo.stdout
    assert "adult-income v1 is champion (was none)" in demo.stdout
    for gate in (
        "metric-thresholds",
        "champion-vs-challenger",
        "replay",
        "fairness",
        "training-data",
        "model-contract",
    ):
        assert f"{gate}" in demo.stdout

    # every link of the lineage chain of the first champion
    chain = mlops(user_env, "audit", "adult-income", "--version", "1")
    assert chain.returncode == 0, chain.stderr
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True
    ).stdout.strip()
    for link in (
        "adult-income v1",
        f"dvc md5          {md5}",
        f"git commit       {commit}",
        "pipeline sha256",
        "prefect run",
        "mlflow run",
        "model.params.max_iter",
        "roc_auc",
        "policy             v1",
        "fairness                 pass",
        "gate-decision  by ",
        "released       by ",
    ):
        assert link in chain.stdout, (link, chain.stdout)

    # retraining v1 from its own data version and config gives the same holdout metrics
    again_trained = mlops(user_env, "reproduce", "adult-income", "--version", "1")
    assert again_trained.returncode == 0, again_trained.stdout + again_trained.stderr
    assert "reproduced: largest difference 0" in again_trained.stdout
    assert "Traceback" not in again_trained.stdout + again_trained.stderr


def test_up_again_starts_nothing_and_the_prefect_cli_runs_through_the_worker(
    demo: subprocess.CompletedProcess[str], user_env: dict[str, str]
) -> None:
    # up again: nothing new is started
    again = mlops(user_env, "up")
    # prefect, mlflow, the webhook receiver, the Pushgateway, Prometheus and the worker
    assert again.returncode == 0 and again.stdout.count("already running") == 6, again.stdout
    assert "started" not in again.stdout

    # the Prefect CLI against the stack runs the deployment through the worker
    api = f"http://127.0.0.1:{user_env['MLOPS_PREFECT_PORT']}/api"
    run = run_command(
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
    services, _, table = status.stdout.partition("\n\n")
    assert [line.split()[0] for line in services.splitlines()] == [
        "prefect",
        "mlflow",
        "registry_webhook",
        "pushgateway",
        "prometheus",
        "worker",
    ], services
    # then the project's models: adult's champion v2 serving through its router, judged
    adult = next(line for line in table.splitlines() if line.startswith("adult-income "))
    assert adult.split()[1:3] == ["examples/adult/pipeline.yaml", "v2"], table
    assert f"http://127.0.0.1:{user_env['MLOPS_ROUTER_PORT']} (v2)" in adult, table

    # the demo again on this history: refused before it trains, naming the way to start over
    refused = mlops(user_env, "demo")
    assert refused.returncode == 1, refused.stdout
    assert "adult-income already has versions 1, 2" in refused.stderr, refused.stderr
    assert "mlops demo --fresh" in refused.stderr and "== 1." not in refused.stdout


def test_a_dead_server_is_reported_and_down_stops_everything(
    demo: subprocess.CompletedProcess[str], user_env: dict[str, str]
) -> None:
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

    # --fresh moves the whole state aside, nothing deleted, before the stack starts again (here
    # it cannot: its Prefect port is taken, which is where this run stops)
    state_dir = Path(user_env["MLOPS_STATE_DIR"])
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's TIME_WAIT
        blocker.bind(("127.0.0.1", int(user_env["MLOPS_PREFECT_PORT"])))
        blocker.listen()
        fresh = mlops(user_env, "demo", "--fresh", timeout=180)
    assert fresh.returncode == 1 and "is already in use" in fresh.stderr, fresh.stderr
    (moved,) = state_dir.parent.glob(f"{state_dir.name}-*Z")
    assert f"the earlier state is in {moved}" in fresh.stdout, fresh.stdout
    assert (moved / "mlflow").is_dir() and (moved / "prediction-log").is_dir()
    # the stack began again on an empty folder (up made its folders before the port stopped it)
    assert not (state_dir / "prediction-log").exists()
    assert not (state_dir / "mlflow" / "mlflow.db").exists()
