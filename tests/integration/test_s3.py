"""The S3 paths against moto's server over HTTP, an EMULATION of S3 (no AWS account is reachable
here): the prediction log written by the server's writer and read by monitoring, the DVC remote
pushed to and pulled from, and the MLflow server's artifact store."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import adult_frame, make_project

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, object]]:
    """A fresh bucket on the emulated S3, and a boto3 client for it; every AWS client of this
    process (boto3, s3fs, DVC) reaches the emulation through AWS_ENDPOINT_URL."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3")
    bucket = f"mlops-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield bucket, client


def keys(client: object, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_the_prediction_log_is_written_to_s3_and_monitoring_reads_it_back(
    s3: tuple[str, object],
) -> None:
    from mlops.adapters.prediction_log import FEEDBACK, PREDICTIONS, PredictionLog
    from mlops.adapters.prediction_window import read_prediction_window

    bucket, client = s3
    root = f"s3://{bucket}/log/adult-income"
    frame = adult_frame(50)[["age", "workclass", "hours_per_week"]].assign(
        age=lambda f: f["age"].astype(int), hours_per_week=lambda f: f["hours_per_week"].astype(int)
    )
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(len(frame))]
    log = PredictionLog(root, batch_rows=20, max_age_seconds=3600)
    log.append(PREDICTIONS, [{"request_id": rid, "row": 0, "time": now, "model": "adult-income", "version": 1,
                              "prediction": 1, "probability": 0.7, **row}
                             for rid, row in zip(ids, frame.to_dict("records"), strict=True)])  # fmt: skip
    log.append(
        FEEDBACK, [{"request_id": rid, "label": k % 2, "time": now} for k, rid in enumerate(ids)]
    )
    log.close()

    written = keys(client, bucket, "log/adult-income/")
    assert any(
        k.startswith(f"log/adult-income/{PREDICTIONS}/date={now:%Y-%m-%d}/hour=") for k in written
    )
    assert any(f"/{FEEDBACK}/" in k for k in written) and all(
        k.endswith(".parquet") for k in written
    )
    # a window holds the files committed in it: the batches were committed by close()
    window = read_prediction_window(root, now - timedelta(minutes=1), datetime.now(UTC),
                                    ["age", "workclass", "hours_per_week"], 10_000)  # fmt: skip
    assert window.problems == []
    assert len(window.rows) == len(frame) and window.labelled == len(frame)
    pd.testing.assert_series_equal(
        window.rows.set_index("request_id").loc[ids, "age"].reset_index(drop=True),
        frame["age"].reset_index(drop=True),
        check_names=False,
        check_dtype=False,
    )


def test_the_dvc_remote_on_s3_holds_the_data_and_gives_it_back(
    s3: tuple[str, object], aws: str, tmp_path: Path
) -> None:
    from mlops.adapters.dvc import configure_remote, pull_dataset
    from tasks.data import resolve_data_version

    bucket, client = s3
    root = tmp_path / "project"
    make_project(root)
    configure_remote(root, f"s3://{bucket}/dvc", aws)
    assert pull_dataset(root, "data/adult.csv") == "present"  # and pushed to the remote
    version = resolve_data_version.fn(root, "data/adult.csv")
    stored = keys(client, bucket, "dvc/")
    assert any(k.replace("/", "").endswith(version.md5) for k in stored), stored

    (root / "data" / "adult.csv").unlink()  # a fresh clone: no workspace copy, no cache
    shutil.rmtree(root / ".dvc" / "cache")
    assert pull_dataset(root, "data/adult.csv") == "pulled"
    assert resolve_data_version.fn(root, "data/adult.csv").md5 == version.md5
    assert len(pd.read_csv(root / "data" / "adult.csv")) == 1500


def test_the_mlflow_server_keeps_artifacts_on_s3(
    s3: tuple[str, object], aws: str, tmp_path: Path
) -> None:
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from mlops.core.settings import Settings
    from mlops.stack.local import service_env, services
    from mlops.stack.processes import free_port, healthy, spawn, stop_process_group

    bucket, client = s3
    port = free_port()
    settings = Settings(
        state_dir=tmp_path / "state",
        mlflow_port=port,
        mlflow_tracking_uri=f"http://127.0.0.1:{port}",
        mlflow_artifacts_url=f"s3://{bucket}/mlflow",
        aws_endpoint_url=aws,
        aws_region="us-east-1",
    )
    (settings.state_dir / "mlflow").mkdir(parents=True)
    server = next(s for s in services(settings) if s.name == "mlflow")
    proc = spawn(server.argv, tmp_path / "mlflow.log", env=os.environ | service_env(settings))
    try:
        deadline = time.monotonic() + 90
        while not healthy(str(server.health_url)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert healthy(str(server.health_url)), (tmp_path / "mlflow.log").read_text()[-2000:]

        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(200, 3)), rng.integers(0, 2, 200)
        model = LogisticRegression().fit(x, y)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(str(settings.mlflow_tracking_uri))
        mlflow.set_experiment("s3-artifacts")
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(model, name="model", input_example=x[:2])
        stored = keys(client, bucket, "mlflow/")
        assert any(k.endswith("MLmodel") for k in stored), stored
        assert any("/artifacts/model." in k for k in stored), stored  # the serialized model
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        assert (loaded.predict(x) == model.predict(x)).all()
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served through the server
        mlflow.set_tracking_uri(previous)
    finally:
        stop_process_group(proc.pid, timeout=10)
