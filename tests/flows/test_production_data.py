"""Retraining with labelled production rows of which one breaks the data contract: the rows are
checked as they are collected, the good ones join the training data, the bad one is reported in
the audit trail and an artifact of the run (it used to refuse the whole training set)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from mlops.core.settings import Settings
from tests.fixtures import trained_project
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.flows


@pytest.fixture(scope="module")
def project(
    local_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("production-data")
    policy = {"release": {"ready_timeout_seconds": 60}}
    with trained_project(root, "prod-rows", policy=policy, versions=0, router=True) as built:
        yield {"name": built.name, "pipeline": str(built.pipeline), "settings": built.settings}


def _write_log(log_root: str, rows: pd.DataFrame, target: str, old: bool) -> list[str]:
    """``rows`` as the model server logs them (predictions, then their labels); returns request
    ids. ``old``: as servers before problem types did (0/1 for the classes), else class names."""
    committed = datetime.now(UTC) - timedelta(minutes=30)
    ids = [uuid.uuid4().hex for _ in range(len(rows))]
    times = [committed - timedelta(seconds=1) for _ in ids]
    # the server's layout: hour partitions of the commit stamp, which the file name carries
    part = f"date={committed:%Y-%m-%d}/hour={committed:%H}"
    answer = (
        {"prediction": 0, "probability": 0.5}
        if old
        else {"prediction": "<=50K", "probabilities": [[0.5, 0.5]] * len(rows), "probability": 0.5}
    )
    predictions = rows.drop(columns=[target]).assign(
        request_id=ids, row=0, time=times, model="m", version=1, **answer
    )
    label = (rows[target] == ">50K").astype("int64") if old else rows[target]
    labels = pd.DataFrame({"request_id": ids, "label": label, "time": times})
    for kind, frame in (("predictions", predictions), ("feedback", labels)):
        folder = Path(log_root) / kind / part
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{committed:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:12]}.parquet"
        frame.to_parquet(folder / name, index=False)
    return ids


def test_an_out_of_contract_production_row_is_left_out_and_reported(
    project: dict[str, Any],
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.retraining import retraining
    from mlops.adapters.audit import AuditTrail

    settings, name = project["settings"], project["name"]
    rows = (
        pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"], skiprows=range(1, 3001), nrows=400)
        .dropna()
        .reset_index(drop=True)
    )
    rows.loc[7, "age"] = -5  # one row a caller's bug or a bad join produced
    # half of them logged before problem types (labels 0/1), half since (class names)
    ids = _write_log(settings.prediction_log(name), rows.iloc[:200], "income", old=True)
    ids += _write_log(settings.prediction_log(name), rows.iloc[200:], "income", old=False)

    state = retraining(pipeline=project["pipeline"], reason="manual", return_state=True)
    outcome = state.result()  # on the old code: DataContractError, age:in_range, for one row
    assert outcome.trained is not None

    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    tags = client.get_model_version(name, str(outcome.trained)).tags
    assert tags["mlops.data.production_rows"] == str(len(rows) - 1)

    entries = AuditTrail(str(settings.mlflow_tracking_uri)).entries(name)
    [collected] = [e for e in entries if e.action == "production-data-collected"]
    assert collected.evidence["kept_rows"] == len(rows) - 1
    assert collected.evidence["rejected_rows"] == 1
    assert collected.evidence["failed_checks"] == {"age:in_range[17.0, 100.0]": 1}
    [example] = collected.evidence["rejected_examples"]
    assert example["request_id"] == ids[7] and example["age"] == -5
    assert "1 row(s) break the data contract" in collected.reason
    # what the release is to expect of the new version: the class shares of the labels it kept
    shares = rows.drop(index=7)["income"].value_counts(normalize=True).to_dict()
    assert collected.evidence["expected_predictions"]["shares"] == pytest.approx(shares)
    assert collected.evidence["expected_predictions"]["rows"] == len(rows) - 1

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    [artifact] = [a for a in artifacts if a.key == "production-data-collected"]
    assert ids[7] in str(artifact.data) and "age" in str(artifact.data)
