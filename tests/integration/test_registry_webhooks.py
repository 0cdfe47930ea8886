"""The registry webhook receiver of the local stack (started by `mlops up`): a delivery signed as
MLflow signs it becomes the Prefect event mlops.registry.version-created, read back through the
Prefect API; a forged, unsigned, stale or replayed one is refused and counted on /metrics; and the
real MLflow server, with the webhook `mlops up` registered, delivers a version created there."""

from __future__ import annotations

import json
import stat
import time
import uuid
from typing import Any

import httpx
import pytest

from mlops.adapters.registry import RUN_ID_TAG
from mlops.adapters.tracking import tracking_server
from mlops.core.events import REGISTRY_VERSION_CREATED
from mlops.core.integrity import CHECKSUM_TAG
from mlops.core.settings import Settings
from mlops.stack.local import auth_headers
from mlops.stack.registry_webhooks import (
    DELIVERY_ID_HEADER,
    DELIVERY_PATH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_NAME,
    receiver_url,
    register_webhook,
    signature,
    webhook_secret,
)

pytestmark = pytest.mark.integration

WAIT_SECONDS = 60  # for an event to be stored by Prefect, or delivered by MLflow


def _body(model: str, version: str = "1", tags: dict[str, str] | None = None) -> str:
    return json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {
                "name": model,
                "version": version,
                "source": "models:/m-123",
                "run_id": "run-1",
                "tags": tags or {},
                "description": None,
            },
        }
    )


def _post(
    settings: Settings,
    body: str,
    secret: str | None,
    delivery: str | None = None,
    stamp: int | None = None,
) -> httpx.Response:
    delivery = delivery or str(uuid.uuid4())
    sent = str(stamp if stamp is not None else int(time.time()))
    headers = {
        "Content-Type": "application/json",
        DELIVERY_ID_HEADER: delivery,
        TIMESTAMP_HEADER: sent,
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(secret, delivery, sent, body)
    return httpx.post(
        receiver_url(settings) + DELIVERY_PATH, content=body.encode(), headers=headers, timeout=30
    )


def _events(settings: Settings, model: str) -> list[dict[str, Any]]:
    body = {
        "filter": {
            "event": {"name": [REGISTRY_VERSION_CREATED]},
            "resource": {"id": [f"mlops.model.{model}"]},
        },
        "limit": 50,
    }
    r = httpx.post(f"{settings.prefect_api_url}/events/filter", json=body, timeout=10)
    r.raise_for_status()
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def _wait_for_events(settings: Settings, model: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if found := _events(settings, model):
            return found
        time.sleep(0.5)
    return []


def _counts(settings: Settings) -> dict[str, float]:
    text = httpx.get(receiver_url(settings) + "/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("mlops_webhook_deliveries_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('outcome="', 1)[1].split('"', 1)[0]] = float(value)
    return counts


def test_a_signed_delivery_becomes_the_prefect_event(local_stack: Settings) -> None:
    model = f"hooked-{uuid.uuid4().hex[:6]}"
    before = _counts(local_stack)
    answer = _post(local_stack, _body(model, "3"), webhook_secret(local_stack))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "accepted"
    [event] = _wait_for_events(local_stack, model)
    assert event["resource"]["prefect.resource.id"] == f"mlops.model.{model}"
    payload = event["payload"]
    assert payload["model"] == model and payload["version"] == "3"
    assert payload["run_id"] == "run-1" and payload["source"] == "models:/m-123"
    assert payload["delivery_id"] == answer.json()["delivery_id"]
    assert _counts(local_stack)["accepted"] == before["accepted"] + 1


def test_forged_unsigned_stale_and_replayed_deliveries_are_refused_and_counted(
    local_stack: Settings,
) -> None:
    model = f"forged-{uuid.uuid4().hex[:6]}"
    secret = webhook_secret(local_stack)
    before = _counts(local_stack)

    forged = _post(local_stack, _body(model), "not-the-secret")
    assert forged.status_code == 403 and forged.json()["outcome"] == "forged", forged.text
    unsigned = _post(local_stack, _body(model), None)
    assert unsigned.status_code == 401 and unsigned.json()["outcome"] == "unsigned"
    assert SIGNATURE_HEADER in unsigned.json()["detail"]
    # a body changed after signing is forged too
    delivery, stamp = str(uuid.uuid4()), int(time.time())
    headers = {
        DELIVERY_ID_HEADER: delivery,
        TIMESTAMP_HEADER: str(stamp),
        SIGNATURE_HEADER: signature(secret, delivery, str(stamp), _body(model, "1")),
    }
    tampered = httpx.post(
        receiver_url(local_stack) + DELIVERY_PATH,
        content=_body(model, "2").encode(),
        headers=headers,
        timeout=30,
    )
    assert tampered.status_code == 403 and tampered.json()["outcome"] == "forged"
    stale = _post(local_stack, _body(model), secret, stamp=int(time.time()) - 3600)
    assert stale.status_code == 403 and stale.json()["outcome"] == "stale", stale.text

    # a captured good delivery sent again, byte for byte, is refused
    delivery, stamp = str(uuid.uuid4()), int(time.time())
    first = _post(local_stack, _body(model), secret, delivery, stamp)
    assert first.status_code == 200, first.text
    again = _post(local_stack, _body(model), secret, delivery, stamp)
    assert again.status_code == 403 and again.json()["outcome"] == "replayed", again.text

    after = _counts(local_stack)
    for outcome, added in (("forged", 2), ("unsigned", 1), ("stale", 1), ("replayed", 1)):
        assert after[outcome] == before[outcome] + added, (outcome, before, after)
    # only the one good delivery made an event
    assert len(_wait_for_events(local_stack, model)) == 1


def test_a_version_an_mlops_flow_registered_is_acknowledged_and_not_announced(
    local_stack: Settings,
) -> None:
    model = f"own-{uuid.uuid4().hex[:6]}"
    own = {RUN_ID_TAG: "run-1", CHECKSUM_TAG: "0" * 64}
    answer = _post(local_stack, _body(model, tags=own), webhook_secret(local_stack))
    assert answer.status_code == 200 and answer.json()["outcome"] == "skipped", answer.text
    time.sleep(2)  # the accepted event of the first test arrived well within this
    assert _events(local_stack, model) == []


def test_mlflow_delivers_a_version_created_there_through_the_registered_webhook(
    local_stack: Settings,
) -> None:
    import mlflow
    from sklearn.linear_model import LogisticRegression

    model = f"from-mlflow-{uuid.uuid4().hex[:6]}"
    fitted = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    with tracking_server(str(local_stack.mlflow_tracking_uri)), mlflow.start_run():
        # as a notebook logs and registers a model
        mlflow.sklearn.log_model(
            fitted, name="model", serialization_format="skops", registered_model_name=model
        )
    [event] = _wait_for_events(local_stack, model)
    assert event["payload"]["version"] == "1"
    assert event["payload"]["delivery_id"]


def test_the_secret_is_private_and_registering_twice_keeps_one_webhook(
    local_stack: Settings,
) -> None:
    path = local_stack.state_dir / "registry-webhooks" / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert webhook_secret(local_stack) == path.read_text().strip()
    headers = auth_headers(local_stack, "mlflow")
    first = register_webhook(local_stack, headers)
    second = register_webhook(local_stack, headers)
    assert first == second
    listed = httpx.get(
        f"{local_stack.mlflow_tracking_uri}/api/2.0/mlflow/webhooks", headers=headers, timeout=10
    ).json()["webhooks"]
    assert [w["name"] for w in listed].count(WEBHOOK_NAME) == 1
    assert webhook_secret(local_stack) not in json.dumps(listed)  # MLflow does not hand it out
