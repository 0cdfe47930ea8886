"""The product's Prefect events: their names and the resource they concern.

Automations (``prefect.yaml`` triggers) match these names and ``mlops.model.<name>`` resources;
payloads are small JSON with the evidence.
"""

from __future__ import annotations

DRIFT_DETECTED = "mlops.model.drift-detected"

PERFORMANCE_DEGRADED = "mlops.model.performance-degraded"

POLICY_UPDATED = "mlops.policy.updated"

# A version registered in MLflow by anyone (a notebook, another pipeline), received as MLflow's
# signed webhook (mlops.stack.registry_webhooks); the promotion deployment's automation judges it.
REGISTRY_VERSION_CREATED = "mlops.registry.version-created"

# A release tells its story as it goes (flows/release.py): each watched step's decision (every
# check's outcome, figures, statistic and resolved queries), then the promotion or the rollback.
RELEASE_STEP = "mlops.release.step"

RELEASE_PROMOTED = "mlops.release.promoted"

RELEASE_ROLLED_BACK = "mlops.release.rolled-back"


def model_resource(model: str) -> dict[str, str]:
    """The Prefect resource an event about ``model`` concerns (what automations match on)."""
    return {"prefect.resource.id": f"mlops.model.{model}", "prefect.resource.name": model}


def version_resource(model: str, version: int) -> dict[str, str]:
    """A model version as a related resource of an event (the primary one is the model)."""
    return {
        "prefect.resource.id": f"mlops.model.{model}.version.{version}",
        "prefect.resource.role": "model-version",
        "prefect.resource.name": f"{model} v{version}",
    }
