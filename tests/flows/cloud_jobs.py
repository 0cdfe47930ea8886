"""What the vertex-ai or azure-container-instance worker would submit for a flow run of a pool, built
by the worker's own code and checked by the cloud SDK's own models; printed as JSON.

    PYTHONPATH=.tools/workers python tests/flows/cloud_jobs.py <pool>

Run in a subprocess by tests/flows/test_environments.py: prefect-gcp and prefect-azure live in
.tools/workers, not in the project's environment (pyproject.toml's `workers` extra says why). The
pool is read from the Prefect API the environment names; its block references (the MLflow
password's Secret) are resolved as the worker resolves them when it starts a flow run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

WORKER_API_KEY = "pnu_api-key-of-the-worker"


async def _config(pool_name: str, kind: Any) -> tuple[Any, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_KEY, temporary_settings

    async with get_client() as client:
        pool = await client.read_work_pool(pool_name)
        config = await kind.from_template_and_values(pool.base_job_template, {}, client=client)
    # the worker of these environments talks to Prefect Cloud with an API key, which it hands on
    with temporary_settings({PREFECT_API_KEY: WORKER_API_KEY}):
        config.prepare_for_flow_run(
            FlowRun(flow_id=uuid.uuid4(), name="spec-check"), work_pool=pool
        )
    return pool, config


def vertex(pool_name: str) -> dict[str, Any]:
    """The CustomJob the worker creates (google.cloud.aiplatform_v1 types, which refuse unknown
    fields and wrong types), as the REST API receives it."""
    from google.cloud.aiplatform_v1.types.custom_job import CustomJob
    from prefect_gcp.workers.vertex import VertexAIWorker, VertexAIWorkerJobConfiguration

    pool, config = asyncio.run(_config(pool_name, VertexAIWorkerJobConfiguration))
    worker = VertexAIWorker(work_pool_name=pool.name)
    job = CustomJob(
        display_name=config.job_name,
        job_spec=worker._build_job_spec(config),
        labels=worker._get_compatible_labels(configuration=config),
    )
    return {"region": config.region, "custom_job": json.loads(CustomJob.to_json(job))}


def azure(pool_name: str) -> dict[str, Any]:
    """The ARM deployment the worker submits, its container group read back through
    azure-mgmt-containerinstance's ContainerGroup model: a value of the wrong type fails that read,
    what the model does not know is dropped by the round trip (the test compares), and what it
    requires and is missing is listed."""
    from azure.mgmt.containerinstance.models import ContainerGroup
    from azure.mgmt.resource.resources.models import (
        Deployment,
        DeploymentMode,
        DeploymentProperties,
    )
    from prefect_azure.workers.container_instance import AzureContainerJobConfiguration

    _pool, config = asyncio.run(_config(pool_name, AzureContainerJobConfiguration))
    template = config.arm_template
    deployment = Deployment(
        properties=DeploymentProperties(
            mode=DeploymentMode.INCREMENTAL,
            template=template,
            parameters={"container_group_name": {"value": "mlops-spec-check"}},
        )
    )
    group = template["resources"][0]
    model = ContainerGroup.deserialize(group)  # raises on a value of the wrong type
    return {
        "resource_group": config.resource_group_name,
        "deployment_missing": missing_required(deployment, "deployment"),
        "group": group,
        "group_missing": missing_required(model, "group"),
        "group_as_modelled": model.serialize(keep_readonly=True),
    }


def missing_required(model: Any, path: str) -> list[str]:
    """The attributes an azure-mgmt model (and the models it holds) marks required and lacks: the
    generated models record the rule (``_validation``) but no longer check it before sending."""
    missing = [
        f"{path}.{name}"
        for name, rule in model._validation.items()
        if rule.get("required") and getattr(model, name) is None
    ]
    for name in model._attribute_map:
        value = getattr(model, name)
        held = value if isinstance(value, list) else [value]
        for i, item in enumerate(held):
            if hasattr(item, "_validation"):
                missing += missing_required(item, f"{path}.{name}[{i}]")
    return missing


if __name__ == "__main__":
    build = {"vertex-ai": vertex, "azure-container-instance": azure}
    kind, pool = sys.argv[1], sys.argv[2]
    print(json.dumps(build[kind](pool)))
