"""`mlops models` with the stack stopped: every model of prefect.yaml is listed from the project's
files, and what only the servers know is shown as unknown, with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mlops.stack.deployments import add_model
from mlops.stack.processes import free_port
from tests.helpers import mlops
from tests.unit.stack.test_deployments import pipeline_copy

pytestmark = pytest.mark.unit


def stopped_stack(project: Path, state: Path) -> dict[str, str]:
    """A user's shell pointed at ``project`` and at ports nothing listens on."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "PREFECT_", "MLFLOW_"))
    }
    return env | {
        "MLOPS_PROJECT_DIR": str(project),
        "MLOPS_STATE_DIR": str(state),
        "MLOPS_PREFECT_PORT": str(free_port()),
        "MLOPS_MLFLOW_PORT": str(free_port()),
    }


def test_models_lists_each_model_and_says_what_a_stopped_stack_cannot_tell(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    for folder, name in (("conf/churn", "churn"), ("conf/basket", "basket")):
        add_model(project, pipeline_copy(project, folder, name=name, model_name=f"{name}-model"),
                  out=None)  # fmt: skip
    (project / "conf" / "basket" / "contract.yaml").unlink()  # its config no longer loads
    state = tmp_path / "state"
    (state / "release" / "churn-model").mkdir(parents=True)  # released once, servers gone since
    env = stopped_stack(project, state)
    mlflow_port = env["MLOPS_MLFLOW_PORT"]
    out = mlops(env, "models", timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "PIPELINE", "CHAMPION", "SERVES", "LAST", "MONITORING"]
    assert lines[1].split() == [
        "churn-model", "conf/churn/pipeline.yaml", "unknown", "nowhere", "(its", "local",
        "servers", "are", "stopped)", "unknown",
    ]  # fmt: skip
    assert lines[2].split()[:3] == ["?", "conf/basket/pipeline.yaml", "unknown"]
    assert (
        f"the MLflow server is not answering at http://127.0.0.1:{mlflow_port}: champions and "
        "monitoring verdicts are unknown (start the local stack with `mlops up`)"
    ) in lines
    assert any(
        line.startswith("conf/basket/pipeline.yaml: ") and "contract.yaml: file not found" in line
        for line in lines
    ), lines

    status = mlops(env, "status", timeout=120)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("the local stack is not running (start it with `mlops up`)\n")
    assert lines[1] in status.stdout.splitlines()  # the same table follows


def test_model_add_with_the_stack_stopped_writes_and_says_how_to_register(
    tmp_path: Path,
) -> None:
    path = pipeline_copy(tmp_path, "conf", name="churn", model_name="churn-model")
    env = stopped_stack(tmp_path, tmp_path / "state")
    out = mlops(env, "model", "add", str(path), timeout=120)
    assert out.returncode == 0, out.stderr
    prefect_url = f"http://127.0.0.1:{env['MLOPS_PREFECT_PORT']}/api"
    assert out.stdout.splitlines()[1:] == [
        f"the local stack is not running (no Prefect server at {prefect_url}): register them "
        "with `mlops up`, or `mlops deploy --env ENV` for an environment"
    ]
    written = yaml.safe_load((tmp_path / "prefect.yaml").read_text())["deployments"]
    assert [d["name"] for d in written] == ["churn", "churn-to-production", *["churn"] * 6]
    again = mlops(env, "model", "add", str(path), timeout=120)
    assert "deployments are in prefect.yaml already, unchanged; nothing written" in again.stdout

    rival = pipeline_copy(tmp_path, "rival", name="rival", model_name="churn-model")
    refused = mlops(env, "model", "add", str(rival), timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "error: rival/pipeline.yaml: its model_name 'churn-model' is already deployed by "
        "conf/pipeline.yaml (promotion/churn, packaging/churn, retraining/churn)"
    ), refused.stderr


def test_models_names_a_project_without_prefect_yaml(tmp_path: Path) -> None:
    out = mlops(stopped_stack(tmp_path, tmp_path / "state"), "models", timeout=120)
    assert out.returncode == 1
    assert f"error: {tmp_path / 'prefect.yaml'}: not found (add a model with `mlops model add" in (
        out.stderr
    )
