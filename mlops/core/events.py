"""The product's Prefect events: names, the resource they concern, and one way to emit them.

Automations (``prefect.yaml`` triggers) match these names and ``mlops.model.<name>`` resources;
payloads are small JSON with the evidence.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

DRIFT_DETECTED = "mlops.model.drift-detected"

PERFORMANCE_DEGRADED = "mlops.model.performance-degraded"

POLICY_UPDATED = "mlops.policy.updated"

PROMOTED = "mlops.model.promoted"

ROLLED_BACK = "mlops.model.rolled-back"

#: Events that ask for a new model (the retraining deployment's triggers match these).
RETRAINING_EVENTS = (DRIFT_DETECTED, PERFORMANCE_DEGRADED, POLICY_UPDATED)


def model_resource(model: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mlops.model.{model}", "prefect.resource.name": model}


def emit_model_event(
    event: str, model: str, payload: dict[str, Any], event_id: UUID | None = None
) -> str | None:
    """Emit ``event`` about ``model`` (with ``event_id``, when the caller recorded it already);
    returns the event id (None if events are disabled)."""
    from prefect.events import emit_event

    emitted = emit_event(event=event, resource=model_resource(model), payload=payload, id=event_id)
    return str(emitted.id) if emitted is not None else None
