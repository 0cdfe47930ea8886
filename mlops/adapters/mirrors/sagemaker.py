"""The SageMaker Model Registry as a mirror of MLflow's: one model package group per registered
model, one model package per MLflow version that has been champion, its lineage in the package's
customer metadata, and its approval status following MLflow's `champion` alias.

MLflow's champion is ``Approved``; a package that was approved and no longer holds the champion
(replaced by a promotion, or put back by a rollback) is ``Rejected``, with the reason in its
approval description. A package's MLflow version is its ``mlflow.version`` metadata (SageMaker
numbers a group's packages itself). Where the version's artifacts are in S3 and packaging recorded
the model server image (``mlops.image``), the package's inference specification names both, so
SageMaker can deploy it; otherwise the package carries lineage only (the specification is
optional for a versioned package). Tested on moto's server (tests/integration/test_mirrors.py).
"""

from __future__ import annotations

import re
from typing import Any

from mlops.adapters.mirrors import LINEAGE_PREFIX, artifact_source
from mlops.adapters.registry import RegisteredVersion
from mlops.core.integrity import CHECKSUM_TAG, IMAGE_TAG
from mlops.core.settings import Settings

APPROVED, REJECTED = "Approved", "Rejected"
VERSION_KEY = "mlflow.version"
_VALUE = re.compile(r"[^\w\s.:/=+\-@]")  # what SageMaker's metadata values may not hold


def group_name(model: str) -> str:
    """SageMaker's group name for an MLflow model name: letters, digits and single hyphens, 63
    characters at most."""
    name = re.sub(r"[^a-zA-Z0-9]+", "-", model).strip("-")
    return name[:63].rstrip("-") or "model"


def _client(settings: Settings) -> Any:
    import boto3

    return boto3.client(
        "sagemaker", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url
    )


def lineage(champion: RegisteredVersion) -> dict[str, str]:
    """The version's lineage as customer metadata: its MLflow version and run, and its
    ``mlops.*`` tags (values cut to 256 characters, characters SageMaker refuses replaced)."""
    found = {VERSION_KEY: str(champion.version), "mlflow.run_id": champion.run_id}
    for key, value in sorted(champion.tags.items()):
        if key.startswith(LINEAGE_PREFIX) and value and len(found) < 50:
            found[key[:128]] = _VALUE.sub("_", value)[:256]
    return {k: v for k, v in found.items() if v}


def packages(client: Any, group: str) -> list[dict[str, Any]]:
    """Every package of the group, described (the summaries hold no metadata)."""
    found: list[dict[str, Any]] = []
    for page in client.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group):
        for summary in page["ModelPackageSummaryList"]:
            found.append(client.describe_model_package(ModelPackageName=summary["ModelPackageArn"]))
    return found


def _ensure_group(client: Any, group: str, model: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError:
        client.create_model_package_group(
            ModelPackageGroupName=group,
            ModelPackageGroupDescription=f"mirror of MLflow registered model {model}"[:1024],
        )


def _inference(settings: Settings, champion: RegisteredVersion) -> dict[str, Any]:
    image = champion.tags.get(IMAGE_TAG)
    if not image:
        return {}
    source = artifact_source(settings, champion)
    if not source or not source.startswith("s3://"):
        return {}
    container = {"Image": image, "ModelDataUrl": source}
    return {
        "InferenceSpecification": {
            "Containers": [container],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        }
    }


def sync(settings: Settings, model: str, champion: RegisteredVersion | None) -> list[str]:
    """Make the group say what MLflow says; what changed, one line each."""
    client = _client(settings)
    group = group_name(model)
    _ensure_group(client, group, model)
    known = packages(client, group)
    by_version = {p.get("CustomerMetadataProperties", {}).get(VERSION_KEY): p for p in known}
    changed: list[str] = []
    if champion is not None and str(champion.version) not in by_version:
        metadata = lineage(champion)
        created = client.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=(
                f"{model} v{champion.version} (MLflow), model sha256 "
                f"{champion.tags.get(CHECKSUM_TAG, 'unrecorded')}"
            )[:1024],
            ModelApprovalStatus=APPROVED,
            CustomerMetadataProperties=metadata,
            **_inference(settings, champion),
        )
        changed.append(f"{group}: package {created['ModelPackageArn']} for v{champion.version}")
        by_version[str(champion.version)] = {
            "ModelPackageArn": created["ModelPackageArn"],
            "ModelApprovalStatus": APPROVED,
            "CustomerMetadataProperties": metadata,
        }
    for version, package in by_version.items():
        is_champion = champion is not None and version == str(champion.version)
        status = package.get("ModelApprovalStatus")
        if is_champion and status != APPROVED:
            why = "the champion again in MLflow"
            new = APPROVED
        elif not is_champion and status == APPROVED:
            now = f"v{champion.version} is" if champion is not None else "no version is"
            why, new = f"no longer the champion in MLflow: {now}", REJECTED
        else:
            continue
        client.update_model_package(
            ModelPackageArn=package["ModelPackageArn"],
            ModelApprovalStatus=new,
            ApprovalDescription=why,
            # sent again unchanged: SageMaker adds them to what it holds; moto's emulation
            # drops a package's metadata from an update that does not send it
            CustomerMetadataProperties=package["CustomerMetadataProperties"],
        )
        changed.append(f"{group}: v{version} {new} ({why})")
    return changed
