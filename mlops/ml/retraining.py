"""What a retraining run reports (a module of its own: a deployment's result must unpickle)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetrainingOutcome:
    model: str
    reason: str
    event_id: str | None
    champion_before: int | None
    trained: int | None  # the version retraining produced or found (None when not needed)
    champion_after: int | None
    note: str
