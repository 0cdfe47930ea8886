"""Managed training on SageMaker against moto's server over HTTP, an EMULATION of the AWS APIs.

moto records a training job and reports it Completed at once, but runs nothing. The one step no
emulation performs, SageMaker executing the container, is done here by `run_the_container`: it
reads the job's channel from S3, runs the project's entrypoint (`python -m mlops.adapters.sagemaker_entry`,
the real code the image runs) in a process with SageMaker's environment, uploads the model
archive where SageMaker puts it and writes the process's output to the job's CloudWatch log
stream. Everything else, submitting, following, bringing logs and model back, is the product's
code against the emulated APIs.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.adapters.sagemaker import (
    LOG_GROUP,
    ManagedTrainingError,
    TrainingJob,
    fetch_model,
    follow_training_job,
    submit_training_job,
)
from mlops.core.config import ModelConfig, load_pipeline_config
from mlops.core.settings import Settings
from mlops.ml.problems import problem_for
from mlops.ml.split import Split
from tasks.data import split_dataset
from tasks.training import train_model
from tests.helpers import EXAMPLE, PROJECT, adult_frame

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(aws: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"sagemaker-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=aws, region_name="us-east-1").create_bucket(Bucket=bucket)
    return Settings(
        aws_region="us-east-1",
        aws_endpoint_url=aws,
        sagemaker_role_arn="arn:aws:iam::123456789012:role/mlops-sagemaker",
        sagemaker_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/mlops-staging/flows:abc123",
        sagemaker_bucket=bucket,
    )


@pytest.fixture(scope="module")
def split() -> tuple[Split, object]:
    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    raw = adult_frame(2000).to_csv(index=False)
    frame = pd.read_csv(io.StringIO(raw), na_values=["?"], skipinitialspace=True).dropna()
    return split_dataset.fn(frame, cfg.features.columns, problem_for(cfg.target), cfg.split), cfg


def clients(settings: Settings) -> tuple[object, object, object]:
    import boto3

    kw = {"region_name": settings.aws_region, "endpoint_url": settings.aws_endpoint_url}
    return boto3.client("sagemaker", **kw), boto3.client("s3", **kw), boto3.client("logs", **kw)


def run_the_container(job: TrainingJob, settings: Settings, workdir: Path) -> None:
    """What SageMaker does with the job (see the module docstring): channel in, entrypoint run,
    model archive out, output to CloudWatch Logs."""
    _, s3, logs = clients(settings)
    bucket, _, prefix = job.input_uri.removeprefix("s3://").partition("/")
    channel, model_dir = workdir / "input" / "data" / "train", workdir / "model"
    channel.mkdir(parents=True)
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:  # type: ignore[attr-defined]
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()  # type: ignore[attr-defined]
        (channel / obj["Key"].rsplit("/", 1)[-1]).write_bytes(body)
    run = subprocess.run(
        [sys.executable, "-m", "mlops.adapters.sagemaker_entry"],
        cwd=PROJECT,
        env=os.environ | {"SM_CHANNEL_TRAIN": str(channel), "SM_MODEL_DIR": str(model_dir)},
        capture_output=True,
        text=True,
        check=True,
    )
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for f in model_dir.iterdir():
            tar.add(f, arcname=f.name)
    key = f"{job.output_uri.removeprefix(f's3://{bucket}/')}/{job.name}/output/model.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=archive.getvalue())  # type: ignore[attr-defined]
    stream = f"{job.name}/algo-1-{int(time.time())}"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):  # type: ignore[attr-defined]
        logs.create_log_group(logGroupName=LOG_GROUP)  # type: ignore[attr-defined]
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)  # type: ignore[attr-defined]
    now = int(time.time() * 1000)  # CloudWatch drops events older than its retention
    events = [{"timestamp": now + i, "message": line} for i, line in enumerate(run.stdout.splitlines())]  # fmt: skip
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)  # type: ignore[attr-defined]


def test_a_training_job_runs_the_project_entrypoint_and_brings_model_and_logs_back(
    settings: Settings, split: tuple[Split, object], tmp_path: Path
) -> None:
    data, cfg = split
    model_cfg = ModelConfig(
        family="hist_gradient_boosting", params={"max_iter": 30, "random_state": 0}
    )
    job = submit_training_job(data, cfg.features, model_cfg, settings)  # type: ignore[attr-defined]

    sagemaker, _, _ = clients(settings)
    described = sagemaker.describe_training_job(TrainingJobName=job.name)  # type: ignore[attr-defined]
    assert described["AlgorithmSpecification"]["TrainingImage"] == settings.sagemaker_image
    assert described["AlgorithmSpecification"]["ContainerEntrypoint"] == ["python", "-m", "mlops.adapters.sagemaker_entry"]  # fmt: skip
    assert described["RoleArn"] == settings.sagemaker_role_arn
    channel = described["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert channel == job.input_uri

    run_the_container(job, settings, tmp_path)
    done = follow_training_job(job, settings, poll=0.1)
    assert done.status == "Completed"
    assert done.model_uri == f"{job.output_uri}/{job.name}/output/model.tar.gz"
    assert any(line.startswith(f"training hist_gradient_boosting on {len(data.X_train)} rows") for line in done.logs), done.logs  # fmt: skip
    assert any(line.startswith("fitted in ") for line in done.logs)

    remote = fetch_model(done, settings)
    local = train_model.fn(data, cfg.features, model_cfg)  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        remote.predict_proba(data.X_holdout), local.predict_proba(data.X_holdout), atol=1e-9
    )


def test_missing_settings_are_named_and_nothing_is_submitted(
    settings: Settings, split: tuple[Split, object]
) -> None:
    data, cfg = split
    incomplete = settings.model_copy(update={"sagemaker_role_arn": None, "sagemaker_image": None})
    with pytest.raises(ManagedTrainingError) as err:
        submit_training_job(data, cfg.features, cfg.model, incomplete)  # type: ignore[attr-defined]
    assert "needs MLOPS_SAGEMAKER_ROLE_ARN, MLOPS_SAGEMAKER_IMAGE (unset)" in str(err.value)
    _, s3, _ = clients(settings)
    assert s3.list_objects_v2(Bucket=settings.sagemaker_bucket).get("KeyCount") == 0  # type: ignore[attr-defined]


def test_a_job_that_left_no_model_is_reported_with_where_it_looked(
    settings: Settings, split: tuple[Split, object]
) -> None:
    data, cfg = split
    job = submit_training_job(data, cfg.features, cfg.model, settings)  # type: ignore[attr-defined]
    done = follow_training_job(job, settings, poll=0.1)  # moto: Completed, nothing ran
    with pytest.raises(ManagedTrainingError, match="completed but left no model at s3://"):
        fetch_model(done, settings)
