"""The SageMaker Model Registry mirroring MLflow's champion (mlops.adapters.mirrors), on moto's
server: an EMULATION of SageMaker's API over HTTP (no AWS account is reachable here)."""

from __future__ import annotations

from typing import Any

import boto3
import httpx
import pytest

from mlops.adapters.mirrors import sagemaker, sync_mirrors
from mlops.adapters.registry import RegisteredVersion
from mlops.core.settings import Settings

pytestmark = pytest.mark.integration

TAGS = {
    "mlops.data.md5": "ddc11f5db69e5ade0edc95f2a6ff3e6d",
    "mlops.git.commit": "cff4f571dc7b5240fde9a9254e5942291480312a",
    "mlops.model.sha256": "aa" * 32,
    "mlops.data.path": "data/adult.csv",
    "other.tag": "not lineage",
}


def _version(v: int) -> RegisteredVersion:
    return RegisteredVersion("adult_income.v2", v, f"run{v}", dict(TAGS), {}, False)


@pytest.fixture
def mirrored(aws: str) -> Settings:
    httpx.post(f"{aws}/moto-api/reset")
    return Settings(aws_region="eu-west-1", aws_endpoint_url=aws, registry_mirrors=["sagemaker"])


def _statuses(settings: Settings) -> dict[str, dict[str, Any]]:
    client = boto3.client(
        "sagemaker", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
    )
    return {
        p["CustomerMetadataProperties"]["mlflow.version"]: p
        for p in sagemaker.packages(client, "adult-income-v2")
    }


def test_promotion_and_rollback_move_the_approval_and_the_lineage_travels(
    mirrored: Settings,
) -> None:
    settings = mirrored
    changed = sagemaker.sync(settings, "adult_income.v2", _version(1))
    assert len(changed) == 1 and "for v1" in changed[0]
    first = _statuses(settings)
    assert first["1"]["ModelApprovalStatus"] == "Approved"
    meta = first["1"]["CustomerMetadataProperties"]
    assert meta["mlops.data.md5"] == TAGS["mlops.data.md5"]
    assert meta["mlops.git.commit"] == TAGS["mlops.git.commit"] and meta["mlflow.run_id"] == "run1"
    assert "other.tag" not in meta
    assert "InferenceSpecification" not in first["1"], "no image was recorded: lineage only"

    assert sagemaker.sync(settings, "adult_income.v2", _version(1)) == [], "not idempotent"

    promoted = sagemaker.sync(settings, "adult_income.v2", _version(2))  # v2 promoted
    now = _statuses(settings)
    assert now["2"]["ModelApprovalStatus"] == "Approved"
    assert now["1"]["ModelApprovalStatus"] == "Rejected"
    assert "no longer the champion in MLflow: v2 is" in now["1"]["ApprovalDescription"]
    assert len(promoted) == 2

    sagemaker.sync(settings, "adult_income.v2", _version(1))  # rolled back to v1
    back = _statuses(settings)
    assert back["1"]["ModelApprovalStatus"] == "Approved"
    assert back["2"]["ModelApprovalStatus"] == "Rejected"
    assert len(back) == 2, "a rollback made a new package instead of approving the old one"

    sagemaker.sync(settings, "adult_income.v2", None)  # the champion alias removed
    assert {p["ModelApprovalStatus"] for p in _statuses(settings).values()} == {"Rejected"}


def test_a_mirror_that_cannot_be_reached_is_reported_not_raised(local_stack: Settings) -> None:
    """A failed mirror must not fail a release (the sync runs as the release ends, whatever its
    outcome): MLflow already says what is in production."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    found = Settings(
        aws_region="eu-west-1", aws_endpoint_url=closed, registry_mirrors=["sagemaker"]
    )
    done = sync_mirrors(
        found.model_copy(update={"mlflow_tracking_uri": local_stack.mlflow_tracking_uri}),
        "adult_income",
    )
    assert isinstance(done["sagemaker"], str) and done["sagemaker"].startswith("not synced")


def test_group_names_are_what_sagemaker_accepts() -> None:
    assert sagemaker.group_name("adult_income.v2") == "adult-income-v2"
    assert sagemaker.group_name("x" * 80) == "x" * 63
    assert sagemaker.group_name("__") == "model"
