"""Managed training: the training step as an AWS SageMaker training job from the project's image.

The training split and the configs go to S3 as the job's `train` channel; the job runs
`python -m mlops.adapters.sagemaker_entry` in the flow image (infra/docker/flows.Dockerfile); its status is
followed until it ends, its CloudWatch log lines are brought back, and so is the model artifact
(a skops file, loaded only if every type it holds is trusted: mlops.core.integrity), which the
training flow then evaluates and logs into its MLflow run like a local fit. The ECS work
pool stays the default cloud path: this is for fits too big for a flow-run container.

Three steps, so each can be followed and tested on its own: ``submit_training_job``,
``follow_training_job`` and ``fetch_model``; ``train_on_sagemaker`` is the three in a row.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sklearn.pipeline import Pipeline

from mlops.adapters.sagemaker_entry import LABEL, MODEL_FILE
from mlops.core.config import FeatureConfig, ModelConfig, own_code_packages
from mlops.core.errors import MlopsError
from mlops.core.integrity import untrusted_types
from mlops.core.settings import Settings
from mlops.ml.split import Split

LOG_GROUP = "/aws/sagemaker/TrainingJobs"

ENDED = {"Completed", "Failed", "Stopped"}


class ManagedTrainingError(MlopsError):
    """A SageMaker training job that cannot start, failed, or left no model."""


@dataclass(frozen=True)
class TrainingJob:
    name: str
    input_uri: str  # s3://bucket/training-jobs/<job>/input/train/
    # s3://bucket/training-jobs/<job>/output; SageMaker adds <job>/output/model.tar.gz
    output_uri: str
    status: str = "InProgress"
    model_uri: str | None = None
    seconds: float | None = None
    logs: list[str] = field(default_factory=list)


def _clients(settings: Settings) -> tuple[Any, Any, Any]:
    import boto3

    kwargs = {"region_name": settings.aws_region, "endpoint_url": settings.aws_endpoint_url}
    return (boto3.client("sagemaker", **kwargs), boto3.client("s3", **kwargs),
            boto3.client("logs", **kwargs))  # fmt: skip


def _split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def check_settings(settings: Settings) -> None:
    """Name every missing setting before anything is uploaded or created."""
    missing = [
        env
        for env, value in (
            ("MLOPS_SAGEMAKER_ROLE_ARN", settings.sagemaker_role_arn),
            ("MLOPS_SAGEMAKER_IMAGE", settings.sagemaker_image),
            ("MLOPS_SAGEMAKER_BUCKET", settings.sagemaker_bucket),
            ("MLOPS_AWS_REGION", settings.aws_region),
        )
        if not value
    ]
    if missing:
        raise ManagedTrainingError(
            f"managed training on SageMaker needs {', '.join(missing)} (unset); nothing was submitted"
        )


def submit_training_job(
    split: Split,
    features: FeatureConfig,
    model: ModelConfig,
    settings: Settings,
    max_runtime_seconds: int = 3600,
) -> TrainingJob:
    """Upload the training split and configs, and create the training job."""
    check_settings(settings)
    sagemaker, s3, _ = _clients(settings)
    label = re.sub(r"[^A-Za-z0-9]+", "-", model.label).strip("-")[:30]
    name = f"mlops-{label}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"[:63]
    bucket = str(settings.sagemaker_bucket)
    prefix = f"training-jobs/{name}"
    body = io.BytesIO()
    split.X_train.assign(**{LABEL: split.y_train.to_numpy()}).to_parquet(body, index=False)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/input/train/train.parquet", Body=body.getvalue())
    problem = split.problem
    config = {
        "problem": problem.kind,
        "target": problem.column,
        "classes": list(problem.classes),
        "features": features.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
    }
    s3.put_object(Bucket=bucket, Key=f"{prefix}/input/train/config.json", Body=json.dumps(config))
    job = TrainingJob(
        name, f"s3://{bucket}/{prefix}/input/train/", f"s3://{bucket}/{prefix}/output"
    )
    sagemaker.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": settings.sagemaker_image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python", "-m", "mlops.adapters.sagemaker_entry"],
        },
        RoleArn=settings.sagemaker_role_arn,
        InputDataConfig=[
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": job.input_uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        OutputDataConfig={"S3OutputPath": job.output_uri},
        ResourceConfig={
            "InstanceType": settings.sagemaker_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        StoppingCondition={"MaxRuntimeInSeconds": max_runtime_seconds},
        Tags=[{"Key": "mlops.model.family", "Value": model.label[:256]}],
    )
    return job


def follow_training_job(
    job: TrainingJob, settings: Settings, timeout: float = 7200, poll: float = 10
) -> TrainingJob:
    """Wait for the job to end; its final state with the log lines it wrote. A failed or stopped
    job raises with SageMaker's reason and the last log lines."""
    sagemaker, _, logs = _clients(settings)
    deadline = time.monotonic() + timeout
    while True:
        described = sagemaker.describe_training_job(TrainingJobName=job.name)
        status = described["TrainingJobStatus"]
        if status in ENDED or time.monotonic() > deadline:
            break
        time.sleep(poll)
    lines = _log_lines(logs, job.name)
    if status != "Completed":
        reason = described.get("FailureReason") or (
            f"still {status} after {timeout:.0f} s" if status not in ENDED else status
        )
        tail = "\n".join(lines[-20:])
        raise ManagedTrainingError(
            f"SageMaker training job {job.name}: {reason}"
            + (f"\nlast log lines:\n{tail}" if tail else "")
        )
    started, ended = described.get("TrainingStartTime"), described.get("TrainingEndTime")
    seconds = (ended - started).total_seconds() if started and ended else None
    return TrainingJob(
        job.name, job.input_uri, job.output_uri, status,
        described["ModelArtifacts"]["S3ModelArtifacts"], seconds, lines,
    )  # fmt: skip


def _log_lines(logs: Any, job_name: str) -> list[str]:
    """The job's CloudWatch log lines, stream by stream (one per instance)."""
    try:
        streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=job_name)
    except logs.exceptions.ResourceNotFoundException:
        return []
    lines: list[str] = []
    for stream in streams.get("logStreams", []):
        events = logs.get_log_events(
            logGroupName=LOG_GROUP, logStreamName=stream["logStreamName"], startFromHead=True
        )
        lines += [e["message"] for e in events.get("events", [])]
    return lines


def fetch_model(job: TrainingJob, settings: Settings, own_code: tuple[str, ...] = ()) -> Pipeline:
    """The fitted pipeline from the job's model.tar.gz: a skops file, refused unless every type
    it holds is a built-in family's or from the user's ``own_code`` packages."""
    import skops.io

    if job.model_uri is None:
        raise ManagedTrainingError(f"SageMaker training job {job.name} has not completed")
    _, s3, _ = _clients(settings)
    bucket, key = _split_uri(job.model_uri)
    try:
        raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        raise ManagedTrainingError(
            f"SageMaker training job {job.name} completed but left no model at {job.model_uri}"
        ) from None
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
        member = archive.extractfile(MODEL_FILE)
        if member is None:
            raise ManagedTrainingError(f"{job.model_uri} holds no {MODEL_FILE}")
        data = member.read()
    refused = untrusted_types(skops.io.get_untrusted_types(data=data), own_code)
    if refused:
        raise ManagedTrainingError(
            f"{job.model_uri}: the model holds types the project does not trust to load: "
            f"{', '.join(refused)}; nothing was deserialized"
        )
    model: Pipeline = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    return model


def train_on_sagemaker(
    split: Split, features: FeatureConfig, model: ModelConfig, settings: Settings
) -> tuple[Pipeline, TrainingJob]:
    """Fit on SageMaker: submit, follow to the end, bring the model and the logs back."""
    job = submit_training_job(split, features, model, settings)
    job = follow_training_job(job, settings)
    return fetch_model(job, settings, own_code_packages(model, features)), job
