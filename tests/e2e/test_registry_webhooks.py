"""A model version registered outside any flow becomes champion by itself: a notebook logs and
registers it with plain MLflow calls; MLflow's signed webhook reaches the stack's receiver, which
emits mlops.registry.version-created; the promotion deployment's automation (written by
`mlops model add`) runs the promotion flow on the worker, which adopts the version (checksum,
provenance, the pipeline's holdout) and runs the gates; it becomes champion. A forged delivery
for the same model is refused and starts nothing."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from mlops.core.settings import Settings
from mlops.stack.local import WORKER, LocalStack, service_env
from mlops.stack.processes import stop_process_group
from tests.helpers import PROJECT, adult_frame, lenient_policy, make_project

pytestmark = pytest.mark.e2e

CHAMPION_WITHIN_SECONDS = 900  # webhook, event, automation, worker start, adoption and gates

NUMERIC = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
CATEGORICAL = ["workclass", "education", "marital_status", "occupation", "relationship", "race",
               "sex", "native_country"]  # fmt: skip


@pytest.fixture
def project(local_stack: Settings, tmp_path: Path) -> Iterator[tuple[Settings, str, str]]:
    """A project with one model's deployments added by `mlops model add`, the promotion one
    registered on the stack, and a worker serving the pool. Yields (settings, model, deployment)."""
    from mlops.stack.deployments import add_model

    name = f"outside-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(tmp_path, adult_frame(3000), model_name=name)
    lenient_policy(pipeline)
    # the work pools' descriptions, as the product's project has them
    (tmp_path / "deployments").symlink_to(PROJECT / "deployments", target_is_directory=True)
    names = add_model(tmp_path, pipeline, out=None)
    [promotion] = [n for n in names if n.startswith("promotion/")]
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_PROJECT_DIR", str(tmp_path))
    settings = Settings()
    stack = LocalStack(settings, out=lambda _msg: None)
    try:
        stack.deploy(os.environ | service_env(settings), [promotion])
        stack.up(with_worker=True, deploy=False)  # the servers run already: starts the worker
        yield settings, name, promotion
    finally:
        worker = stack.load().get(WORKER)
        if worker is not None and stack.alive(worker):
            stop_process_group(worker.pid, timeout=15)
        mp.undo()


def _log_from_a_notebook(settings: Settings, root: Path, name: str) -> str:
    """Train and register a model as a notebook would: sklearn, then plain MLflow calls."""
    import mlflow
    import skops.io
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.read_csv(root / "data" / "adult.csv", na_values=["?"])
    X, y = frame[NUMERIC + CATEGORICAL], (frame["income"] == ">50K").astype(int)
    model = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("numeric", SimpleImputer(strategy="median"), NUMERIC),
                        (
                            "categorical",
                            Pipeline(
                                [
                                    ("impute", SimpleImputer(strategy="most_frequent")),
                                    (
                                        "encode",
                                        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                                    ),
                                ]
                            ),
                            CATEGORICAL,
                        ),
                    ]
                ),
            ),
            ("classifier", HistGradientBoostingClassifier(max_iter=50, random_state=0)),
        ]
    ).fit(X, y)
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(f"notebook-{name}")
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="skops",
            skops_trusted_types=trusted,
            signature=infer_signature(X.head(200), model.predict(X.head(200))),
            metadata={
                "mlops_problem": {
                    "type": "binary",
                    "target": "income",
                    "classes": ["<=50K", ">50K"],
                }
            },
            registered_model_name=name,
        )
    assert str(info.registered_model_version) == "1"
    return run.info.run_id


def _promotion_runs(deployment: str) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async def read() -> list[Any]:
        async with get_client() as client:
            found = await client.read_deployment_by_name(deployment)
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id={"any_": [found.id]})
            )

    return asyncio.run(read())


def test_a_version_registered_outside_any_flow_becomes_champion_and_a_forged_hook_is_refused(
    project: tuple[Settings, str, str],
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlops.adapters.adoption import PROVENANCE_TAG
    from mlops.adapters.audit import AuditTrail
    from mlops.release.promotion import GATES_PASSED, GATES_TAG
    from mlops.stack.registry_webhooks import (
        DELIVERY_ID_HEADER,
        DELIVERY_PATH,
        SIGNATURE_HEADER,
        TIMESTAMP_HEADER,
        receiver_url,
        signature,
    )

    settings, name, deployment = project
    # a forged delivery for the same model: refused before anything is emitted
    delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
    forged_body = (
        '{"entity": "model_version", "action": "created", "data": '
        f'{{"name": "{name}", "version": "7", "run_id": null, "source": "", "tags": {{}}}}}}'
    )
    forged = httpx.post(
        receiver_url(settings) + DELIVERY_PATH,
        content=forged_body.encode(),
        headers={
            DELIVERY_ID_HEADER: delivery,
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: signature("a guessed secret", delivery, stamp, forged_body),
        },
        timeout=30,
    )
    assert forged.status_code == 403 and forged.json()["outcome"] == "forged", forged.text

    run_id = _log_from_a_notebook(settings, settings.project_dir, name)

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    deadline = time.monotonic() + CHAMPION_WITHIN_SECONDS
    champion = None
    while champion is None and time.monotonic() < deadline:
        try:
            champion = client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            failed = [r for r in _promotion_runs(deployment) if r.state and r.state.is_final()]
            assert not [r for r in failed if not r.state.is_completed()], [
                (r.name, r.state.message) for r in failed
            ]
            time.sleep(2)
    assert champion is not None, f"{name} v1 did not become champion within the bound"
    assert champion.version == "1" and champion.run_id == run_id
    assert champion.tags[GATES_TAG] == GATES_PASSED
    assert "registered outside mlops by" in champion.tags[PROVENANCE_TAG]

    # exactly one promotion ran, started by the automation with the version from the event; it
    # finishes (the model card) after the alias moved
    [run] = _promotion_runs(deployment)
    while not (run.state and run.state.is_final()) and time.monotonic() < deadline:
        time.sleep(1)
        [run] = _promotion_runs(deployment)
    assert run.parameters["version"] == "1"
    assert run.parameters["trigger"].startswith("registry webhook (delivery ")
    assert run.state is not None and run.state.is_completed()
    actions = [e.action for e in AuditTrail(settings.mlflow_tracking_uri).entries(name, 1)]
    assert actions[:3] == ["adopted", "gate-decision", "promoted"], actions
