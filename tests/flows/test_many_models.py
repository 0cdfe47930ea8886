"""Two models in one project on real Prefect and MLflow servers: each pipeline's deployments and
automations written by `add_model` and registered, the models table read back, and a drift event
of one model retrains that model only. No worker runs here: the automation's flow run waits on
the pool, which is all this needs to see (nothing is trained)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from mlops.adapters.events import emit_model_event
from mlops.adapters.tracking import log_monitoring_run, monitoring_experiment
from mlops.cli.models import ModelRow, model_table
from mlops.core.events import DRIFT_DETECTED
from mlops.core.lineage import CHAMPION_ALIAS
from mlops.core.settings import Settings
from mlops.ml.monitoring import DriftVerdict, MonitoringOutcome, PerformanceVerdict
from mlops.stack.deployments import add_model
from mlops.stack.environments import deploy_all
from mlops.stack.local import LocalStack
from tests.helpers import adult_frame, edit_yaml, make_project

pytestmark = pytest.mark.flows


def retraining_runs(model_pipeline: str) -> list[Any]:
    """The flow runs of deployment ``retraining/<pipeline name>``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"retraining/{model_pipeline}")
        return list(
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
                )
            )
        )


def record_champion(tracking_uri: str, model: str) -> int:
    """A registered version of ``model`` with the champion alias (no model behind it)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    client.create_registered_model(model)
    run = client.create_run(client.create_experiment(model))
    version = client.create_model_version(model, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(model, CHAMPION_ALIAS, version.version)
    return int(version.version)


def wait_for_run(model_pipeline: str, timeout: float = 120) -> list[Any]:
    deadline = time.monotonic() + timeout
    while not (runs := retraining_runs(model_pipeline)) and time.monotonic() < deadline:
        time.sleep(1)
    return runs


def test_a_drift_of_one_model_retrains_that_model_only(
    local_stack: Settings, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    suffix = uuid.uuid4().hex[:6]
    a, b = f"many-a-{suffix}", f"many-b-{suffix}"  # pipeline name = model name, for short
    root = tmp_path / "project"
    a_pipeline = make_project(root, adult_frame(200), model_name=a)
    edit_yaml(a_pipeline, name=a)
    shutil.copytree(a_pipeline.parent, root / "conf-b")
    b_pipeline = root / "conf-b" / "pipeline.yaml"
    edit_yaml(b_pipeline, name=b, model_name=b, experiment=b, search=None)

    environ = dict(os.environ) | {"MLOPS_PROJECT_DIR": str(root)}
    LocalStack(local_stack, out=lambda _line: None).ensure_work_pool()
    names = add_model(root, a_pipeline, out=None) + add_model(root, b_pipeline, out=None)
    assert len(names) == 8 + 7  # B has no search
    deploy_all(root, local_stack.work_pool, environ, names)  # as `mlops model add` registers
    with get_client(sync_client=True) as client:
        for name in names:
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == local_stack.work_pool, name
            assert deployment.tags[-1] == (a if a in name else b), name

    # what `mlops models` reads: A has a champion and a judged window, B neither
    uri = str(local_stack.mlflow_tracking_uri)
    champion = record_champion(uri, a)
    outcome = MonitoringOutcome(
        a, champion, None, "2025-01-01T12:00:00", 900,
        DriftVerdict(judged=True, detected=True, reason="age drifted", share=0.4),
        PerformanceVerdict(judged=False, degraded=False, reason="no labels", metric="roc_auc"),
        [], {},
    )  # fmt: skip
    log_monitoring_run(uri, monitoring_experiment(a), asdict(outcome), None)
    table = model_table(local_stack.model_copy(update={"project_dir": root}))
    assert table.rows == [
        ModelRow(a, "conf/pipeline.yaml", f"v{champion}", "not on the local target",
                 f"DRIFT, performance not judged (v{champion}, window to 2025-01-01T12:00:00)"),
        ModelRow(b, "conf-b/pipeline.yaml", "none", "not on the local target", "never monitored"),
    ]  # fmt: skip
    assert table.notes == []

    evidence = {"reason": f"drift of {a}", "drift_share": 0.4}
    event_a = emit_model_event(DRIFT_DETECTED, a, evidence)
    (run_a,) = wait_for_run(a)
    assert run_a.parameters == {
        "pipeline": "conf/pipeline.yaml",
        "reason": DRIFT_DETECTED,
        "event_id": event_a,
        "evidence": evidence,
    }
    time.sleep(5)  # B's automation saw the same event: it would have fired by now
    assert retraining_runs(b) == []

    event_b = emit_model_event(DRIFT_DETECTED, b, {"reason": f"drift of {b}"})
    (run_b,) = wait_for_run(b)
    assert run_b.parameters["pipeline"] == "conf-b/pipeline.yaml"
    assert run_b.parameters["event_id"] == event_b
    assert [r.id for r in retraining_runs(a)] == [run_a.id]
