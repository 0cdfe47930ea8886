"""The registry webhook receiver: MLflow's signed ``model_version.created`` deliveries become the
Prefect event ``mlops.registry.version-created``, which the promotion deployment's automation
answers.

MLflow 3 signs each delivery as Standard Webhooks do: ``X-MLflow-Signature: v1,<base64 of
HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")>``, with the delivery id and the Unix
timestamp in their own headers. The receiver refuses a delivery without a signature (401), or
whose signature does not match, whose timestamp is outside the tolerance, or whose delivery id it
accepted already (403), and counts every delivery by outcome on ``/metrics``
(``mlops_webhook_deliveries_total{outcome}``).

Versions that mlops' own flows register (they carry the registration's run-id and checksum tags
from the start) are acknowledged and skipped: the flow that registered them judges them itself,
so a training with a hand-over is not promoted twice.

The shared secret is ``MLOPS_REGISTRY_WEBHOOK_SECRET`` or, unset, one generated into
``<state_dir>/registry-webhooks/secret`` (mode 0600); it reaches MLflow through its API when
`mlops up` registers the webhook, never through a command line.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
from mlflow.webhooks import constants as mlflow_webhooks
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mlops.adapters.registry import RUN_ID_TAG
from mlops.core.errors import StackError
from mlops.core.events import REGISTRY_VERSION_CREATED
from mlops.core.files import write_atomic
from mlops.core.integrity import CHECKSUM_TAG
from mlops.core.settings import Settings

REGISTRY_WEBHOOK = "registry_webhook"  # the stack service (MLOPS_REGISTRY_WEBHOOK_PORT)

#: The MLflow webhook `mlops up` registers (found again by this name: registering is idempotent).
WEBHOOK_NAME = "mlops-registry-events"

#: Where MLflow delivers; the path names the sender.
DELIVERY_PATH = "/mlflow/registry"


# MLflow's headers and signature version
SIGNATURE_HEADER = mlflow_webhooks.WEBHOOK_SIGNATURE_HEADER
TIMESTAMP_HEADER = mlflow_webhooks.WEBHOOK_TIMESTAMP_HEADER
DELIVERY_ID_HEADER = mlflow_webhooks.WEBHOOK_DELIVERY_ID_HEADER
SIGNATURE_VERSION = mlflow_webhooks.WEBHOOK_SIGNATURE_VERSION

#: A delivery older or newer than this is refused as a replay (Standard Webhooks: five minutes).
TOLERANCE_SECONDS = 300

# The tags mlops' registration writes with the version itself (mlops.adapters.registry)
OWN_REGISTRATION_TAGS = (RUN_ID_TAG, CHECKSUM_TAG)

OUTCOMES = (
    "accepted",  # verified, event emitted
    "skipped",  # verified, a version an mlops flow registered
    "ignored",  # verified, not a model_version.created delivery
    "unsigned",  # no signature, timestamp or delivery id: 401
    "forged",  # a signature that does not match: 403
    "stale",  # timestamp outside the tolerance: 403
    "replayed",  # a delivery id accepted before: 403
    "malformed",  # signed, but not the JSON of a version: 400
    "failed",  # the event could not be emitted: 503, MLflow retries
)

Emit = Callable[[str, dict[str, Any], uuid.UUID], object]


# secrets ----------------------------------------------------------------------------------------
def _folder(settings: Settings) -> Path:
    return settings.state_dir / "registry-webhooks"


def _private_value(path: Path, make: Callable[[], str]) -> str:
    """The value in ``path``, created with ``make()`` readable by its owner only when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another `mlops up` was first: use its value
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(make())
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise StackError(f"{path}: the file is empty; remove it and run `mlops up` again")
    return value


def webhook_secret(settings: Settings) -> str:
    """The secret MLflow signs deliveries with: the setting, else the state folder's own."""
    if settings.registry_webhook_secret is not None:
        return settings.registry_webhook_secret.get_secret_value()
    return _private_value(_folder(settings) / "secret", lambda: secrets.token_urlsafe(32))


def mlflow_server_env(settings: Settings) -> dict[str, str]:
    """What the local MLflow server needs to deliver to the receiver.

    MLflow refuses webhook URLs that are not https or that resolve to a private or loopback
    address (its SSRF protection); the local stack's receiver is plain HTTP on ``settings.host``,
    so the stack's own server allows both, for loopback and private hosts only. It also keeps
    the webhook secret encrypted with a key of the state folder (without one, each start of
    MLflow makes a new key and can no longer read the secrets it stored)."""
    from cryptography.fernet import Fernet

    env = {
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": _private_value(
            _folder(settings) / "mlflow-encryption-key", lambda: Fernet.generate_key().decode()
        )
    }
    if _is_local(settings.host):
        env |= {
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        }
    return env


def _is_local(host: str) -> bool:
    try:
        address = ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_loopback or address.is_private


def receiver_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.registry_webhook_port}"


# verification -----------------------------------------------------------------------------------
class Refused(Exception):
    def __init__(self, status: int, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.outcome, self.reason = status, outcome, reason


def signature(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """MLflow's signature of one delivery (``v1,<base64>``)."""
    digest = hmac.new(
        secret.encode("utf-8"), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256
    ).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


class Verifier:
    """Checks deliveries against the secret, the clock and the delivery ids accepted lately."""

    def __init__(
        self,
        secret: str,
        tolerance: float = TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("the registry webhook secret must not be empty")
        self._secret = secret
        self._tolerance = tolerance
        self._clock = clock
        self._seen: dict[str, float] = {}  # delivery id -> when accepted
        self._lock = threading.Lock()

    def check(self, headers: dict[str, str], body: bytes) -> str:
        """The delivery id of a delivery that may be acted on; raises ``Refused`` otherwise."""
        given = headers.get(SIGNATURE_HEADER.lower())
        stamp = headers.get(TIMESTAMP_HEADER.lower())
        delivery = headers.get(DELIVERY_ID_HEADER.lower())
        missing = [
            h
            for h, v in (
                (SIGNATURE_HEADER, given),
                (TIMESTAMP_HEADER, stamp),
                (DELIVERY_ID_HEADER, delivery),
            )
            if not v
        ]
        if missing:
            raise Refused(401, "unsigned", f"missing {', '.join(missing)}")
        assert given is not None and stamp is not None and delivery is not None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(400, "malformed", "the body is not UTF-8") from None
        expected = signature(self._secret, delivery, stamp, text)
        # constant-time, against each signature offered (Standard Webhooks allows several)
        if not any(hmac.compare_digest(expected, s) for s in given.split()):
            raise Refused(403, "forged", f"{SIGNATURE_HEADER} does not match the body")
        try:
            sent = int(stamp)
        except ValueError:
            raise Refused(
                400, "malformed", f"{TIMESTAMP_HEADER} {stamp!r} is not a Unix time"
            ) from None
        now = self._clock()
        if abs(now - sent) > self._tolerance:
            raise Refused(
                403,
                "stale",
                f"{TIMESTAMP_HEADER} is {now - sent:.0f}s off this clock (at most "
                f"{self._tolerance:.0f}s): refused as a replay",
            )
        with self._lock:
            if delivery in self._seen:
                raise Refused(403, "replayed", f"delivery {delivery} was accepted already")
        return delivery

    def accepted(self, delivery: str) -> None:
        """Remember ``delivery`` as done (only then: MLflow resends a delivery that failed)."""
        now = self._clock()
        with self._lock:
            self._seen[delivery] = now
            # older ones are refused by their timestamp anyway
            for old in [d for d, t in self._seen.items() if now - t > 2 * self._tolerance]:
                del self._seen[old]


def registered_by_mlops(tags: dict[str, str]) -> bool:
    """A version an mlops flow registered (its registration writes these tags with it)."""
    return all(tags.get(t) for t in OWN_REGISTRATION_TAGS)


def event_payload(data: dict[str, Any], delivery: str) -> dict[str, Any]:
    """The Prefect event's payload from MLflow's ``model_version.created`` data."""
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not name or not str(version or "").isdigit():
        raise Refused(400, "malformed", "the delivery names no model and version number")
    return {
        "model": name,
        "version": str(version),
        "run_id": data.get("run_id") or "",
        "source": data.get("source") or "",
        "delivery_id": delivery,
    }


# the service ------------------------------------------------------------------------------------
def create_app(verifier: Verifier, emit: Emit) -> Starlette:
    """The receiver: ``POST /mlflow/registry``, ``GET /health``, ``GET /metrics``.

    ``emit(event, payload, event_id)`` sends the Prefect event; the event id is derived from the
    delivery id, so a delivery that MLflow resends after a lost answer is one event."""
    registry = CollectorRegistry()
    deliveries = Counter(
        "mlops_webhook_deliveries",
        "MLflow registry webhook deliveries received, by outcome.",
        ["outcome"],
        registry=registry,
    )
    for outcome in OUTCOMES:  # every series exists from the start (rate() needs a first sample)
        deliveries.labels(outcome=outcome)

    def answer(outcome: str, status: int, detail: str, **more: Any) -> Response:
        deliveries.labels(outcome=outcome).inc()
        return JSONResponse({"outcome": outcome, "detail": detail, **more}, status_code=status)

    async def deliver(request: Request) -> Response:
        body = await request.body()
        try:
            delivery = verifier.check(dict(request.headers), body)
            message = json.loads(body)
            if not isinstance(message, dict):
                raise Refused(400, "malformed", "the body is not a JSON object")
            if (message.get("entity"), message.get("action")) != ("model_version", "created"):
                verifier.accepted(delivery)
                return answer("ignored", 200, f"{message.get('entity')}.{message.get('action')}")
            data = message.get("data")
            if not isinstance(data, dict):
                raise Refused(400, "malformed", "the delivery has no data object")
            payload = event_payload(data, delivery)
        except Refused as refused:
            return answer(refused.outcome, refused.status, refused.reason)
        except ValueError as exc:  # json.loads
            return answer("malformed", 400, f"the body is not JSON: {exc}")
        label = f"{payload['model']} v{payload['version']}"
        given = data.get("tags")
        tags: dict[str, str] = given if isinstance(given, dict) else {}
        if registered_by_mlops(tags):
            verifier.accepted(delivery)
            return answer(
                "skipped", 200, f"{label} was registered by an mlops flow, which judges it"
            )
        try:
            emit(REGISTRY_VERSION_CREATED, payload, uuid.uuid5(uuid.NAMESPACE_URL, delivery))
        except Exception as exc:  # Prefect unreachable: 503 makes MLflow deliver again
            return answer("failed", 503, f"{label}: the event was not emitted: {exc}")
        verifier.accepted(delivery)
        return answer("accepted", 200, f"{label}: {REGISTRY_VERSION_CREATED} emitted", **payload)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route(DELIVERY_PATH, deliver, methods=["POST"]),
            Route("/health", health),
            Route("/metrics", metrics),
        ]
    )


def prefect_emit(event: str, payload: dict[str, Any], event_id: uuid.UUID) -> object:
    """Emit the event to the stack's Prefect (PREFECT_API_URL of the environment)."""
    from mlops.adapters.events import emit_model_event

    emitted = emit_model_event(event, payload["model"], payload, event_id=event_id)
    if emitted is None:
        raise RuntimeError("Prefect events are disabled in this process")
    return emitted


def service_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlops.stack.registry_webhooks",
        "--host",
        settings.host,
        "--port",
        str(settings.registry_webhook_port),
    ]


def write_scrape_target(settings: Settings, targets_dir: Path) -> None:
    """Tell Prometheus (file discovery, job mlops-registry-webhooks) where the receiver is."""
    targets_dir.mkdir(parents=True, exist_ok=True)
    where = f"{settings.host}:{settings.registry_webhook_port}"
    write_atomic(
        targets_dir / "registry-webhooks.json",
        json.dumps([{"targets": [where], "labels": {"service": REGISTRY_WEBHOOK}}]),
    )


# registering the webhook with MLflow --------------------------------------------------------------
def register_webhook(settings: Settings, headers: dict[str, str]) -> str:
    """Create the MLflow webhook for ``model_version.created`` pointing at the receiver, or bring
    the one `mlops up` created before up to date (URL, secret, active); returns its id."""
    base = f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/webhooks"
    body = {
        "url": receiver_url(settings) + DELIVERY_PATH,
        "events": [{"entity": "MODEL_VERSION", "action": "CREATED"}],
        "secret": webhook_secret(settings),
        "status": "ACTIVE",
        "description": "mlops: a version registered by anyone is judged by the promotion flow",
    }
    try:
        with httpx.Client(headers=headers, timeout=30) as client:
            found = _find_webhook(client, base)
            if found is None:
                answer = client.post(base, json={"name": WEBHOOK_NAME, **body})
            else:
                answer = client.patch(f"{base}/{found}", json=body)
    except httpx.HTTPError as exc:
        raise StackError(
            f"MLflow webhook {WEBHOOK_NAME}: {base} cannot be reached ({exc})"
        ) from None
    if answer.status_code != 200:
        hint = (
            "; an MLflow server started before the stack had a receiver refuses a local URL: "
            "restart the stack (mlops down, mlops up)"
            if "scheme" in answer.text or "public IP" in answer.text
            else ""
        )
        raise StackError(
            f"MLflow refused the webhook {WEBHOOK_NAME} ({answer.status_code}): "
            f"{answer.text[:300]}{hint}"
        )
    return str(answer.json()["webhook"]["webhook_id"])


def _find_webhook(client: httpx.Client, base: str) -> str | None:
    token: str | None = None
    while True:
        params = {"max_results": "100"} | ({"page_token": token} if token else {})
        answer = client.get(base, params=params)
        if answer.status_code != 200:
            raise StackError(
                f"MLflow webhooks cannot be listed ({answer.status_code}): {answer.text[:300]}"
            )
        page = answer.json()
        for hook in page.get("webhooks", []):
            if hook.get("name") == WEBHOOK_NAME:
                return str(hook["webhook_id"])
        token = page.get("next_page_token")
        if not token:
            return None


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = create_app(Verifier(webhook_secret(Settings())), prefect_emit)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
