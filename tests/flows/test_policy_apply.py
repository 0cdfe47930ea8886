"""`mlops policy apply`: the audit entry is written before the event that announces it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prefect.events.clients import AssertingEventsClient
from prefect.events.schemas.events import Event
from prefect.events.worker import EventsWorker

from mlops.adapters.audit import AuditTrail
from mlops.adapters.policy_changes import apply_policy
from mlops.core.config import load_pipeline_config
from mlops.core.events import POLICY_UPDATED
from mlops.core.settings import Settings
from mlops.stack.processes import free_port
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.flows


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventsWorker]:
    """Prefect's recording events client (prefect.testing's asserting_events_worker)."""
    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)
    yield worker
    worker.drain()
    AssertingEventsClient.reset()


def _policy_events(worker: EventsWorker, model: str) -> list[Event]:
    worker.drain()
    return [
        e
        for client in AssertingEventsClient.all
        for e in client.events
        if e.event == POLICY_UPDATED and e.resource.id == f"mlops.model.{model}"
    ]


def test_a_failed_audit_write_emits_no_event(
    local_stack: Settings, events: EventsWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An automation answering the event would find no entry: so no event without one."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    model = f"policy-{uuid.uuid4().hex[:6]}"
    nowhere = f"http://127.0.0.1:{free_port()}"  # an audit store that is down
    with pytest.raises(Exception, match=r"127\.0\.0\.1"):
        apply_policy(nowhere, model, cfg.policy, set(cfg.contract.columns), "tester")
    assert _policy_events(events, model) == []


def test_the_event_names_the_entry_written_before_it(
    local_stack: Settings, events: EventsWorker
) -> None:
    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    model = f"policy-{uuid.uuid4().hex[:6]}"
    uri = str(local_stack.mlflow_tracking_uri)
    what, event_id = apply_policy(uri, model, cfg.policy, set(cfg.contract.columns), "tester")
    (event,) = _policy_events(events, model)
    (entry,) = AuditTrail(uri).entries(model)
    assert entry.action == "policy-applied" and entry.reason == what
    assert entry.evidence["event_id"] == str(event.id) == event_id
