"""The product's Prefect events: their names and the resource they concern.

Automations (``prefect.yaml`` triggers) match these names and ``mlops.model.<name>`` resources;
payloads are small JSON with the evidence.
"""

from __future__ import annotations

DRIFT_DETECTED = "mlops.model.drift-detected"

PERFORMANCE_DEGRADED = "mlops.model.performance-degraded"

POLICY_UPDATED = "mlops.policy.updated"


def model_resource(model: str) -> dict[str, str]:
    """The Prefect resource an event about ``model`` concerns (what automations match on)."""
    return {"prefect.resource.id": f"mlops.model.{model}", "prefect.resource.name": model}
