"""Emitting the product's Prefect events (their names and resource live in ``mlops.core.events``)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.events import emit_event

from mlops.core.events import model_resource


def emit_model_event(
    event: str, model: str, payload: dict[str, Any], event_id: UUID | None = None
) -> str | None:
    """Emit ``event`` about ``model`` (with ``event_id``, when the caller recorded it already);
    returns the event id (None if events are disabled)."""
    emitted = emit_event(event=event, resource=model_resource(model), payload=payload, id=event_id)
    return str(emitted.id) if emitted is not None else None
