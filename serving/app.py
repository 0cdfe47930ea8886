"""The model server: FastAPI app answering predictions for one model version.

Routes: ``POST /predict`` (one row or a batch), ``POST /feedback`` (a label for an earlier
request), ``GET /health``, ``GET /ready`` (the model is loaded and warmed), ``GET /metrics``
(Prometheus). Every input is checked against the model's signature before it reaches the model
or the prediction log; anything wrong is a 4xx naming the field.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from mlops.errors import MlopsError
from serving.model import Column, ServedModel
from serving.prediction_log import FEEDBACK, PREDICTIONS, SYNTHETIC_HEADER, PredictionLog

_TYPES: dict[str, Any] = {
    "long": StrictInt,
    "integer": StrictInt,
    "double": float,
    "float": float,
    "string": StrictStr,
    "boolean": StrictBool,
}


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int = 1_000_000
    max_batch_rows: int = 1000
    token: str | None = None  # bearer token required on /predict and /feedback when set


def row_model(columns: list[Column]) -> type[BaseModel]:
    """A pydantic model of one input row: the signature's columns and types, nothing else."""
    fields: dict[str, Any] = {}
    for col in columns:
        kind = _TYPES.get(col.type, StrictStr)
        field = Field(allow_inf_nan=False) if kind is float else Field()
        fields[col.name] = (kind, field) if col.required else (kind | None, Field(None))
    return create_model("Row", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: StrictStr = Field(pattern=r"^[0-9a-f]{32}$")
    label: Literal[0, 1]


class Metrics:
    """The server's Prometheus metrics, each labelled with the model name and version."""

    def __init__(self, model: str, version: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model": model, "version": version}
        self.labels = labels
        self.requests = Counter(
            "mlops_requests",
            "Requests by route and status.",
            [*labels, "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_request_seconds",
            "Request latency by route.",
            [*labels, "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.errors = Counter(
            "mlops_request_errors",
            "Refused or failed requests by route and kind.",
            [*labels, "route", "kind"],
            registry=self.registry,
        )
        self.predictions = Counter(
            "mlops_predictions", "Predicted labels.", [*labels, "label"], registry=self.registry
        )
        self.probability = Histogram(
            "mlops_prediction_probability",
            "Predicted P(positive).",
            list(labels),
            buckets=tuple(i / 10 for i in range(1, 11)),
            registry=self.registry,
        )
        Gauge(
            "mlops_model_info", "The model version served.", list(labels), registry=self.registry
        ).labels(**labels).set(1)


class Refused(Exception):
    def __init__(
        self, status: int, kind: str, message: str, fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.fields = status, kind, message, fields or []


def _field_errors(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join([prefix, *(str(p) for p in err["loc"])]).strip("."),
            "message": err["msg"],
        }
        for err in exc.errors()
    ]


def _invalid(kind: str, exc: ValidationError, prefix: str) -> Refused:
    """A 422 naming every field that failed validation."""
    fields = _field_errors(exc, prefix)
    return Refused(422, kind, "; ".join(f"{f['field']}: {f['message']}" for f in fields), fields)


def create_app(
    load: Callable[[], ServedModel],
    log: PredictionLog,
    config: ServerConfig = ServerConfig(),
    model_name: str = "model",
    model_ref: str = "?",
) -> FastAPI:
    """The app for the model ``load`` returns; loading runs in the background so /health answers at once."""
    state: dict[str, Any] = {"model": None, "row": None, "error": None}
    metrics = Metrics(model_name, model_ref)

    def load_and_warm() -> None:
        try:
            model = load()
            state["row"] = row_model(model.columns)
            warm = pd.DataFrame(
                [
                    {
                        c.name: (0 if c.type in ("long", "integer", "double", "float") else "")
                        for c in model.columns
                    }
                ]
            )
            labels, proba = model.predict(
                warm
            )  # the first call pays for lazy imports, not a caller
            log.warm(
                {"request_id": "0" * 32, "row": 0, "time": datetime.now(UTC), "model": model.name,
                 "version": model.version, "prediction": int(labels[0]),
                 "probability": float(proba[0]), **warm.iloc[0].to_dict()}
            )  # fmt: skip
            state["model"] = model
        except Exception as exc:  # reported by /ready and /health
            state["error"] = f"{type(exc).__name__}: {exc}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load_and_warm, daemon=True).start()
        yield
        log.close()

    app = FastAPI(title="mlops model server", lifespan=lifespan)

    def respond(route: str, status: int, body: dict[str, Any], started: float) -> JSONResponse:
        metrics.requests.labels(**metrics.labels, route=route, status=str(status)).inc()
        metrics.latency.labels(**metrics.labels, route=route).observe(time.perf_counter() - started)
        return JSONResponse(body, status_code=status)

    def refuse(route: str, exc: Refused, started: float) -> JSONResponse:
        metrics.errors.labels(**metrics.labels, route=route, kind=exc.kind).inc()
        body: dict[str, Any] = {"error": exc.message}
        if exc.fields:
            body["fields"] = exc.fields
        return respond(route, exc.status, body, started)

    async def read_json(request: Request) -> Any:
        if config.token and request.headers.get("authorization") != f"Bearer {config.token}":
            raise Refused(401, "unauthorized", "missing or wrong bearer token")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise Refused(
                413,
                "too_large",
                f"body of {declared} bytes exceeds the limit of {config.max_body_bytes}",
            )
        raw = await request.body()
        if len(raw) > config.max_body_bytes:
            raise Refused(
                413,
                "too_large",
                f"body of {len(raw)} bytes exceeds the limit of {config.max_body_bytes}",
            )
        try:
            return json.loads(raw, parse_constant=lambda c: _reject_constant(c))
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(400, "malformed_json", f"body is not valid JSON: {exc}") from None

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            model: ServedModel | None = state["model"]
            if model is None:
                raise Refused(503, "not_ready", state["error"] or "the model is still loading")
            body = await read_json(request)
            rows = _rows(body, config.max_batch_rows)
            checked = []
            for i, row in enumerate(rows):
                try:
                    checked.append(state["row"].model_validate(row).model_dump())
                except ValidationError as exc:
                    prefix = f"rows.{i}" if "rows" in body else "row"
                    raise _invalid("invalid_row", exc, prefix) from None
        except Refused as exc:
            return refuse("/predict", exc, started)
        frame = pd.DataFrame(checked, columns=[c.name for c in model.columns])
        labels, proba = model.predict(frame)
        request_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        # The release's smoke test and warm-up mark themselves: answered like any caller, but
        # neither logged nor counted as production predictions (monitoring judges real traffic).
        synthetic = request.headers.get(SYNTHETIC_HEADER) is not None
        for label in [] if synthetic else labels:
            metrics.predictions.labels(**metrics.labels, label=str(int(label))).inc()
        for p in [] if synthetic else proba:
            metrics.probability.labels(**metrics.labels).observe(float(p))
        log.append(
            PREDICTIONS,
            [
                {
                    "request_id": request_id,
                    "row": i,
                    "time": now,
                    "model": model.name,
                    "version": model.version,
                    "prediction": int(label),
                    "probability": float(p),
                    **row,
                }
                for i, (row, label, p) in enumerate(zip(checked, labels, proba, strict=True))
                if not synthetic
            ],
        )
        return respond(
            "/predict",
            200,
            {
                "request_id": request_id,
                "model": {"name": model.name, "version": model.version},
                "predictions": [int(x) for x in labels],
                "probabilities": [float(x) for x in proba],
            },
            started,
        )

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            body = await read_json(request)
            try:
                item = Feedback.model_validate(body)
            except ValidationError as exc:
                raise _invalid("invalid_feedback", exc, "") from None
        except Refused as exc:
            return refuse("/feedback", exc, started)
        log.append(
            FEEDBACK,
            [{"request_id": item.request_id, "label": item.label, "time": datetime.now(UTC)}],
        )
        return respond("/feedback", 202, {"accepted": item.request_id}, started)

    @app.get("/health")
    def health() -> JSONResponse:
        return JSONResponse(
            {"status": "ok" if state["error"] is None else "failed", "error": state["error"]},
            status_code=200 if state["error"] is None else 500,
        )

    @app.get("/ready")
    def ready() -> JSONResponse:
        model = state["model"]
        if model is None:
            return JSONResponse(
                {"ready": False, "reason": state["error"] or "loading"}, status_code=503
            )
        return JSONResponse(
            {"ready": True, "model": {"name": model.name, "version": model.version}}
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _rows(body: Any, limit: int) -> list[Any]:
    """The rows of a body ``{"row": {...}}`` or ``{"rows": [{...}, ...]}``."""
    if not isinstance(body, dict) or set(body) not in ({"row"}, {"rows"}):
        raise Refused(
            422, "invalid_body", 'the body must be {"row": {...}} or {"rows": [{...}, ...]}'
        )
    if "row" in body:
        return [body["row"]]
    rows = body["rows"]
    if not isinstance(rows, list):
        raise Refused(422, "invalid_body", "rows: must be a list of objects")
    if not rows:
        raise Refused(422, "empty_batch", "rows: the batch is empty")
    if len(rows) > limit:
        raise Refused(413, "too_many_rows", f"rows: {len(rows)} rows exceed the limit of {limit}")
    return rows


def token_from_environment(environ: Mapping[str, str]) -> str | None:
    """The bearer token (``MLOPS_SERVING_TOKEN``); required unless ``MLOPS_ENV`` is local."""
    token = environ.get("MLOPS_SERVING_TOKEN") or None
    env = environ.get("MLOPS_ENV", "local")
    if env != "local" and token is None:
        raise MlopsError(
            f"MLOPS_ENV={env}: set MLOPS_SERVING_TOKEN; "
            "outside local mode the server requires a bearer token"
        )
    return token
