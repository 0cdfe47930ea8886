"""Emitting the product's Prefect events (their names and resource live in ``mlops.core.events``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.events import emit_event

from mlops.core.events import model_resource


def emit_model_event(
    event: str,
    model: str,
    payload: dict[str, Any],
    event_id: UUID | None = None,
    related: Sequence[dict[str, str]] = (),
) -> str | None:
    """Emit ``event`` about ``model`` (with ``event_id``, when the caller recorded it already;
    ``related``: more resources it concerns, e.g. ``mlops.core.events.version_resource``; inside
    a flow run Prefect adds the run's own); returns the event id (None if events are disabled)."""
    emitted = emit_event(
        event=event,
        resource=model_resource(model),
        payload=payload,
        id=event_id,
        related=list(related) or None,
    )
    return str(emitted.id) if emitted is not None else None
