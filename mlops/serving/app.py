"""The model server: FastAPI app answering predictions for one model version.

Routes: ``POST /predict`` (one row or a batch), ``POST /explain`` (each row's answer attributed
to its input columns: ``mlops.core.explanations``; at most ``ServerConfig.max_explain_rows``
rows, on a worker thread), ``POST /feedback`` (a label for an earlier request), ``GET /health``, ``GET /ready`` (the model is loaded and warmed), ``GET /metrics``
(Prometheus), ``GET /openapi.json`` (the real request and response bodies once the model has
loaded), and the Open Inference Protocol's V2 REST routes under ``/v2``
(``mlops.serving.open_inference``). Every input is checked against the model's signature before
it reaches the model or the prediction log; anything wrong is a 4xx naming the field (or the
tensor). Rows of concurrent requests reach the model together, in one call
(``mlops.serving.batching``); each request keeps its own answer, id, log rows and refusal.

Where the work runs: the model never runs on the event loop, so /health answers while a
prediction is in flight. A small /predict body (``ServerConfig.inline_body_bytes``: a few rows)
is parsed, validated and logged on the loop, and its rows go straight to the batcher's thread
(no worker thread of its own, which cost as much as the model under load); /predict is answered
before FastAPI's routing and middleware (``_Predict``), which took more of the loop than the
model did. Bigger bodies, /feedback and V2 inference run on worker threads.

What a model answers follows its problem type (``mlops.serving.model.ServedProblem``): a
classifier its class names with one probability per class, a regression a number; /feedback
takes a label of the same kind.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from mlops.adapters.prediction_log import (
    FEEDBACK,
    PREDICTIONS,
    SYNTHETIC_HEADER,
    PredictionLog,
    feedback_schema,
    prediction_schema,
)
from mlops.core.errors import MlopsError
from mlops.core.explanations import NotExplainable
from mlops.core.outliers import OutlierScores
from mlops.serving import open_inference as oip
from mlops.serving.batching import Batcher
from mlops.serving.model import Answers, Column, InferencePath, ServedModel, ServedProblem
from mlops.serving.openapi import merge, operations

logger = logging.getLogger(__name__)

# The ranges the prediction log's Arrow columns hold (int64, int32): a wider integer is refused
# here, naming the field, instead of failing later in the model (OverflowError) or the log.
_INT_RANGE = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}


def _utf8(value: str) -> str:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 writer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text (a lone surrogate at {exc.start})") from None
    return value


def _integral(value: Any) -> Any:
    """JSON has one kind of number: 2.0 is the integer 2, as JSON Schema's ``integer`` (and so
    the OpenAPI document) says. 2.5, "2" and true stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Utf8Str = Annotated[StrictStr, AfterValidator(_utf8)]

# A JSON number (12 or 12.5), never "12" or true; NaN and infinities are refused.
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]


def _field_type(mlflow_type: str) -> Any:
    if mlflow_type in _INT_RANGE:
        low, high = _INT_RANGE[mlflow_type]
        return Annotated[StrictInt, Field(ge=low, le=high), BeforeValidator(_integral)]
    if mlflow_type in ("double", "float"):
        return Number
    if mlflow_type == "boolean":
        return StrictBool
    return Utf8Str


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int = 1_000_000
    max_batch_rows: int = 1000
    token: str | None = None  # bearer token required on /predict, /explain, /feedback, V2 infer
    # Concurrent requests' rows go to the model together (mlops.serving.batching): at most this
    # many rows a call, and a batch that has company waits at most this long for more.
    batch_rows: int = 64
    batch_wait_seconds: float = 0.002
    # A /predict body at most this large is validated on the event loop and its rows handed to
    # the batcher's thread (a few rows; the module docstring); a bigger one is validated on a
    # worker thread, so a big batch never holds the loop.
    inline_body_bytes: int = 16_384
    # Most rows one /explain request may ask about: Tree SHAP costs far more a row than
    # predicting does (benchmarks/explain.py), so explanations are for a few rows at a time.
    max_explain_rows: int = 100


def row_model(columns: list[Column]) -> type[BaseModel]:
    """A pydantic model of one input row: the signature's columns and types, nothing else."""
    fields: dict[str, Any] = {}
    for col in columns:
        kind = _field_type(col.type)
        fields[col.name] = (kind, ...) if col.required else (kind | None, None)
    return create_model("Row", __config__=ConfigDict(extra="forbid"), **fields)


RequestId = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{32}$")]


def feedback_model(problem: ServedProblem) -> type[BaseModel]:
    """The body /feedback takes for a model of ``problem``: the request id of an earlier answer
    and its true label, one of the class names (a string, never the class's index or true) for
    a classifier, a finite JSON number for a regression."""
    label: Any = Literal[problem.classes] if problem.is_classifier else Number
    return create_model(
        "Feedback",
        __config__=ConfigDict(extra="forbid"),
        request_id=(RequestId, ...),
        label=(label, ...),
    )


#: Where a regression's predicted values are counted when its metadata names no bounds
#: (versions logged before ``value_buckets``): Prometheus's default buckets.
DEFAULT_VALUE_BUCKETS = Histogram.DEFAULT_BUCKETS[:-1]


class Metrics:
    """The server's Prometheus metrics, each labelled with the model name and version. The
    answer metrics depend on the problem type and are made once the model has loaded
    (``for_problem``): ``mlops_predictions_total{label}`` counts predicted class names,
    ``mlops_prediction_probability`` P(positive) (binary), ``mlops_prediction_value`` the
    predicted numbers (regression, in the model's ``value_buckets``)."""

    def __init__(self, model: str, version: str, emf: bool | None = None) -> None:
        self.registry = CollectorRegistry()
        labels = {"model": model, "version": version}
        self.labels = labels
        # In AWS Lambda no Prometheus scrapes the server: the class counts also go to stdout as
        # CloudWatch embedded-metric-format lines (namespace mlops, metric Predictions), which
        # Lambda's logs turn into metrics the release's CloudWatch provider reads.
        self.emf = "AWS_LAMBDA_FUNCTION_NAME" in os.environ if emf is None else emf
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
            "mlops_predictions",
            "Predicted class names (classifiers).",
            [*labels, "label"],
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "mlops_batch_rows",
            "Rows per model call: concurrent requests are answered together.",
            list(labels),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.outliers = Counter(
            "mlops_outlier_rows",
            "Answered rows unlike the training data (the model's outlier detector), by the "
            "column that makes them so.",
            [*labels, "column"],
            registry=self.registry,
        )
        self.scored = Counter(
            "mlops_outlier_scored_rows",
            "Answered rows given an outlier score (the denominator of the outlier rate).",
            list(labels),
            registry=self.registry,
        )
        self.probability: Histogram | None = None
        self.value: Histogram | None = None
        Gauge(
            "mlops_model_info", "The model version served.", list(labels), registry=self.registry
        ).labels(**labels).set(1)

    def for_problem(self, problem: ServedProblem) -> None:
        """Make the answer metrics of ``problem``'s type (once, when the model has loaded)."""
        if problem.kind == "binary":
            self.probability = Histogram(
                "mlops_prediction_probability",
                "Predicted P(positive) (binary classifiers).",
                list(self.labels),
                buckets=tuple(i / 10 for i in range(1, 11)),
                registry=self.registry,
            )
        if problem.kind == "regression":
            self.value = Histogram(
                "mlops_prediction_value",
                "Predicted values (regression), in the deciles of the training target.",
                list(self.labels),
                buckets=problem.value_buckets or DEFAULT_VALUE_BUCKETS,
                registry=self.registry,
            )

    def for_path(self, path: InferencePath) -> None:
        """``mlops_inference_path{path,reason} 1``: which path answers (compiled or registered)
        and why, once the model has loaded (mlops.serving.fast_path)."""
        Gauge(
            "mlops_inference_path",
            "The inference path answering validated rows, and why.",
            [*self.labels, "path", "reason"],
            registry=self.registry,
        ).labels(**self.labels, path=path.name, reason=path.reason).set(1)

    def observe_outliers(self, scored: OutlierScores) -> None:
        self.scored.labels(**self.labels).inc(len(scored.flags))
        for flag, column in zip(scored.flags, scored.columns, strict=True):
            if flag:
                self.outliers.labels(**self.labels, column=column or "").inc()

    def observe(self, problem: ServedProblem, answers: Answers) -> None:
        if problem.is_classifier:
            for label in answers.predictions:
                self.predictions.labels(**self.labels, label=label).inc()
            if self.emf:
                self._emf(answers)
        if self.probability is not None and answers.probabilities is not None:
            for p in answers.probabilities[:, 1]:  # P(positive): made for binary models only
                self.probability.labels(**self.labels).observe(float(p))
        if self.value is not None and not problem.is_classifier:
            for v in answers.predictions:
                self.value.labels(**self.labels).observe(v)

    def _emf(self, answers: Answers) -> None:
        counts: dict[str, int] = {}
        for label in answers.predictions:
            counts[str(label)] = counts.get(str(label), 0) + 1
        now = int(time.time() * 1000)
        for label, n in counts.items():
            line = {
                "_aws": {
                    "Timestamp": now,
                    "CloudWatchMetrics": [
                        {
                            "Namespace": "mlops",
                            "Dimensions": [["model", "version", "label"]],
                            "Metrics": [{"Name": "Predictions", "Unit": "Count"}],
                        }
                    ],
                },
                **self.labels,
                "label": label,
                "Predictions": n,
            }
            print(json.dumps(line, separators=(",", ":")), flush=True)


class SafeJSON(JSONResponse):
    """JSON with non-ASCII escaped: a field name the caller sent with a lone surrogate is echoed
    back as the same ``\\ud800`` escape instead of failing to encode (a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class Refused(Exception):
    def __init__(
        self, status: int, kind: str, message: str, fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.fields = status, kind, message, fields or []


def _field_errors(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    """Each error's place as a dotted path (``rows.3.age``); ``body`` when the whole body is."""
    return [
        {
            "field": ".".join([prefix, *(str(p) for p in err["loc"])]).strip(".") or "body",
            "message": err["msg"],
        }
        for err in exc.errors()
    ]


def _invalid(kind: str, exc: ValidationError, prefix: str) -> Refused:
    """A 422 naming every field that failed validation."""
    fields = _field_errors(exc, prefix)
    return Refused(422, kind, "; ".join(f"{f['field']}: {f['message']}" for f in fields), fields)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise Refused(400, "malformed_json", "body is nested too deeply to read") from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise Refused(400, "malformed_json", f"body is not valid JSON: {exc}") from None


#: The route label V2 inference requests are counted under (one label for every model name).
V2_INFER = "/v2/models/{model}/infer"


def create_app(
    load: Callable[[], ServedModel],
    log: PredictionLog,
    config: ServerConfig = ServerConfig(),
    model_name: str = "model",
    model_ref: str = "?",
) -> FastAPI:
    """The app for the model ``load`` returns; loading runs in the background so /health answers at once."""
    state: dict[str, Any] = {"model": None, "row": None, "feedback": None, "error": None}
    metrics = Metrics(model_name, model_ref)
    metrics.registry.register(log.collector())  # rows written, spilled, dropped; buffered

    def load_and_warm() -> None:
        try:
            model = load()
            state["row"] = row_model(model.columns)
            state["feedback"] = feedback_model(model.problem)
            metrics.for_problem(model.problem)
            metrics.for_path(model.path)
            _give_schemas(log, model)
            _warm(model, log)
            app.openapi_schema = merge(
                app.openapi(),
                operations(
                    state["row"],
                    state["feedback"],
                    model,
                    config.max_batch_rows,
                    config.max_body_bytes,
                    config.token is not None,
                    config.max_explain_rows,
                ),
            )
            app.state.batcher = Batcher(
                model.predict_records,
                config.batch_rows,
                config.batch_wait_seconds,
                on_batch=metrics.batch_rows.labels(**metrics.labels).observe,
            )
            state["model"] = model
        except Exception as exc:  # reported by /ready and /health: in detail only to the token
            logger.exception("the model failed to load")
            state["error"] = f"{type(exc).__name__}: {exc}"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load_and_warm, daemon=True).start()
        yield
        if app.state.batcher is not None:
            app.state.batcher.close()
        log.close()

    app = FastAPI(title="mlops model server", lifespan=lifespan, default_response_class=SafeJSON)
    # Set once the model has loaded: one model call at a time (mlops.serving.batching: a lone
    # request's on its own thread, a batch on the batcher's). The model's OpenMP limit
    # (mlops.serving.model) is process-wide, and overlapping limit/restore pairs from two
    # threads could leave it at one thread for good.
    app.state.batcher = None

    def authorized(request: Request) -> bool:
        """The caller presents the bearer token (compared in constant time)."""
        if config.token is None:
            return False
        presented = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(presented, f"Bearer {config.token}".encode())

    def failure(request: Request) -> str:
        """Why the model is not serving: the detail (paths, URLs) only to a caller with the token;
        everyone else reads the server's log."""
        if state["error"] is None:
            return "the model is still loading"
        generic = "the model failed to load"
        return f"{generic}: {state['error']}" if authorized(request) else generic

    def count(route: str, status: int, started: float) -> None:
        metrics.requests.labels(**metrics.labels, route=route, status=str(status)).inc()
        metrics.latency.labels(**metrics.labels, route=route).observe(time.perf_counter() - started)

    def respond(route: str, status: int, body: dict[str, Any], started: float) -> Response:
        count(route, status, started)
        return SafeJSON(body, status_code=status)

    def refuse(route: str, exc: Refused, started: float, v2: bool = False) -> Response:
        """The refusal's JSON: ``error`` and, except on the V2 routes (whose error object is
        ``{"error": ...}`` alone), ``fields``."""
        metrics.errors.labels(**metrics.labels, route=route, kind=exc.kind).inc()
        body: dict[str, Any] = {"error": exc.message}
        if exc.fields and not v2:
            body["fields"] = exc.fields
        return respond(route, exc.status, body, started)

    async def read_body(request: Request) -> bytes:
        """The body, read no further than the limit (a chunked upload declares no length)."""
        if config.token and not authorized(request):
            raise Refused(401, "unauthorized", "missing or wrong bearer token")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise Refused(
                415, "unsupported_encoding", f"Content-Encoding {encoding}: send the body as is"
            )
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise Refused(
                413, "too_large", f"body of {declared} bytes exceeds the limit of {limit}"
            )
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise Refused(413, "too_large", f"body exceeds the limit of {limit} bytes")
        except ClientDisconnect:
            raise Refused(400, "disconnected", "the client went away mid-body") from None
        return bytes(body)

    def log_rows(route: str, kind: str, records: list[dict[str, Any]]) -> None:
        """An answered request never fails because of logging: the log counts what it loses."""
        try:
            log.append(kind, records)
        except Exception:
            metrics.errors.labels(**metrics.labels, route=route, kind="log_failed").inc()
            logger.exception("the prediction log refused %d %s records", len(records), kind)

    def loaded(request: Request) -> ServedModel:
        model: ServedModel | None = state["model"]
        if model is None:
            raise Refused(503, "not_ready", failure(request))
        return model

    def settle(
        model: ServedModel,
        route: str,
        checked: list[dict[str, Any]],
        answers: Answers,
        synthetic: bool,
        where: Callable[[int], str],
    ) -> str:
        """The model's answers to rows already validated through it, checked, counted and
        logged: the one path of /predict and V2 inference alike; the request's id. ``where``
        names row i in a refusal."""
        bad = answers.non_finite()
        if bad:  # a 4xx, not a 5xx: the rows caused it, and a canary must not roll back for it
            why = "the model's answer is not a finite number (the values are likely far outside "
            fields = [{"field": where(i), "message": why + "its training data)"} for i in bad]
            message = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:10])
            raise Refused(422, "non_finite_answer", message, fields)
        request_id = uuid.uuid4().hex
        # The release's smoke test and warm-up mark themselves: answered like any caller, but
        # neither logged nor counted as production predictions (monitoring judges real traffic).
        if not synthetic:
            metrics.observe(model.problem, answers)
            log_rows(route, PREDICTIONS, _records(model, request_id, checked, answers))
        return request_id

    def outliers(model: ServedModel, checked: list[dict[str, Any]], synthetic: bool) -> Any:
        """Each row's outlier score, flag and column (None for a model without a detector),
        counted in /metrics for real traffic."""
        if model.outliers is None:
            return None
        scored = model.outliers.score_records(checked)
        if not synthetic:
            metrics.observe_outliers(scored)
        return scored

    def validated(
        raw: bytes, limit: int = config.max_batch_rows
    ) -> tuple[list[dict[str, Any]], Callable[[int], str]]:
        """A /predict (or /explain) body's rows, each validated through the model, at most
        ``limit`` of them; how to name row i."""
        body = _parse_json(raw)
        rows = _rows(body, limit)
        batch = "rows" in body

        def where(i: int) -> str:
            return f"rows.{i}" if batch else "row"

        checked = []
        for i, row in enumerate(rows):
            try:
                checked.append(state["row"].model_validate(row).model_dump())
            except ValidationError as exc:
                raise _invalid("invalid_row", exc, where(i)) from None
        return checked, where

    def answer(raw: bytes, synthetic: bool, started: float) -> Response:
        """Validate, predict, log, answer, on a worker thread: a big /predict body."""
        model: ServedModel = state["model"]
        try:
            checked, where = validated(raw)
            answers = app.state.batcher(checked)  # set before the model is
            request_id = settle(model, "/predict", checked, answers, synthetic, where)
        except Refused as exc:
            return refuse("/predict", exc, started)
        scored = outliers(model, checked, synthetic)
        return respond("/predict", 200, _answer_body(model, request_id, answers, scored), started)

    @app.post("/predict", include_in_schema=False)  # described by mlops.serving.openapi once loaded
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            raw = await read_body(request)
            model = loaded(request)
        except Refused as exc:
            return refuse("/predict", exc, started)
        synthetic = request.headers.get(SYNTHETIC_HEADER) is not None
        if len(raw) > config.inline_body_bytes:
            return await run_in_threadpool(answer, raw, synthetic, started)
        try:  # a few rows: here, on the event loop (the module docstring)
            checked, where = validated(raw)
            answers = await asyncio.wrap_future(app.state.batcher.submit(checked, here=False))
            request_id = settle(model, "/predict", checked, answers, synthetic, where)
        except Refused as exc:
            return refuse("/predict", exc, started)
        scored = outliers(model, checked, synthetic)
        return respond("/predict", 200, _answer_body(model, request_id, answers, scored), started)

    def explain(raw: bytes, started: float) -> Response:
        """Validate as /predict does, then attribute each row's answer to its input columns
        (mlops.core.explanations), on a worker thread: never on the loop, never in a batch."""
        model: ServedModel = state["model"]
        try:
            checked, _ = validated(raw, config.max_explain_rows)
            try:
                explainer = model.explainer()
            except NotExplainable as exc:
                raise Refused(
                    501, "not_explainable", f"{model.name} v{model.version}: {exc}"
                ) from None
            got = explainer.explain(model.frame(checked))
        except Refused as exc:
            return refuse("/explain", exc, started)
        body = {
            "model": model.name,
            "version": model.version,
            "method": got.method,
            "space": got.space,
            "outputs": list(got.outputs),
            "explanations": got.records(),
        }
        return respond("/explain", 200, body, started)

    @app.post("/explain", include_in_schema=False)  # described by mlops.serving.openapi
    async def explain_rows(request: Request) -> Response:
        started = time.perf_counter()
        try:
            raw = await read_body(request)
            loaded(request)
        except Refused as exc:
            return refuse("/explain", exc, started)
        return await run_in_threadpool(explain, raw, started)

    def accept_feedback(raw: bytes, started: float) -> Response:
        try:
            try:
                item = state["feedback"].model_validate(_parse_json(raw))
            except ValidationError as exc:
                raise _invalid("invalid_feedback", exc, "") from None
        except Refused as exc:
            return refuse("/feedback", exc, started)
        log_rows(
            "/feedback",
            FEEDBACK,
            [{"request_id": item.request_id, "label": item.label, "time": datetime.now(UTC)}],
        )
        return respond("/feedback", 202, {"accepted": item.request_id}, started)

    @app.post("/feedback", include_in_schema=False)
    async def feedback(request: Request) -> Response:
        started = time.perf_counter()
        try:
            raw = await read_body(request)
            loaded(request)  # the label's type is the model's
        except Refused as exc:
            return refuse("/feedback", exc, started)
        return await run_in_threadpool(accept_feedback, raw, started)

    # ---- the Open Inference Protocol (V2 REST) ------------------------------------------------
    def served(request: Request, name: str, version: str | None) -> ServedModel:
        """The model a V2 path names: 503 while none is loaded, 404 for another name or version."""
        model = loaded(request)
        if name != model.name:
            raise Refused(
                404,
                "unknown_model",
                f"model {name!r} is not served here (this serves {model.name!r})",
            )
        if version is not None and version != str(model.version):
            raise Refused(
                404,
                "unknown_version",
                f"{model.name} version {version!r} is not served here (version {model.version} is)",
            )
        return model

    def infer_answer(
        raw: bytes, header_length: str | None, synthetic: bool, started: float
    ) -> Response:
        """The V2 request as rows, then the same path as /predict, then output tensors."""
        model: ServedModel = state["model"]
        try:
            head, binary = _split_binary(raw, header_length)
            try:
                request = oip.parse_request(
                    _parse_json(head), binary, model.columns, model.problem, config.max_batch_rows
                )
            except oip.InferenceRefused as exc:
                raise Refused(exc.status, exc.kind, exc.message) from None
            checked = []
            for i, row in enumerate(request.rows):
                try:
                    checked.append(state["row"].model_validate(row).model_dump())
                except ValidationError as exc:
                    problems = [
                        oip.row_error(e["msg"], i, ".".join(str(p) for p in e["loc"]))
                        for e in exc.errors()
                    ]
                    raise Refused(400, "invalid_row", "; ".join(problems)) from None
            answers = app.state.batcher(checked)
            request_id = settle(
                model, V2_INFER, checked, answers, synthetic, lambda i: f"row {i} of the inputs"
            )
        except Refused as exc:
            return refuse(V2_INFER, exc, started, v2=True)
        content, json_length = oip.response(
            request, answers, model.problem, model.name, model.version, request_id
        )
        count(V2_INFER, 200, started)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={oip.HEADER_LENGTH: str(json_length)},
        )

    # Each V2 model route with and without /versions/{version}; the version is only ever in the
    # path (a `version: str | None` parameter on the path without it would take ?version=).
    @app.post("/v2/models/{name}/infer", include_in_schema=False)
    async def infer(request: Request, name: str) -> Response:
        return await infer_version(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def infer_version(request: Request, name: str, version: str | None) -> Response:
        started = time.perf_counter()
        try:
            raw = await read_body(request)
            served(request, name, version)
        except Refused as exc:
            return refuse(V2_INFER, exc, started, v2=True)
        synthetic = request.headers.get(SYNTHETIC_HEADER) is not None
        header_length = request.headers.get(oip.HEADER_LENGTH)
        return await run_in_threadpool(infer_answer, raw, header_length, synthetic, started)

    @app.get("/v2/models/{name}", include_in_schema=False)
    async def v2_model(request: Request, name: str) -> Response:
        return await v2_model_version(request, name, None)

    @app.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    async def v2_model_version(request: Request, name: str, version: str | None) -> Response:
        try:
            model = served(request, name, version)
        except Refused as exc:
            return SafeJSON({"error": exc.message}, status_code=exc.status)
        return SafeJSON(oip.model_metadata(model.name, model.version, model.columns, model.problem))

    @app.get("/v2/models/{name}/ready", include_in_schema=False)
    async def v2_model_ready(request: Request, name: str) -> Response:
        return await v2_version_ready(request, name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def v2_version_ready(request: Request, name: str, version: str | None) -> Response:
        try:
            served(request, name, version)
        except Refused as exc:
            if exc.status == 503:
                return SafeJSON({"name": name, "ready": False}, status_code=503)
            return SafeJSON({"error": exc.message}, status_code=exc.status)
        return SafeJSON({"name": name, "ready": True})

    @app.get("/v2", include_in_schema=False)
    async def v2_server() -> Response:
        return SafeJSON({"name": SERVER_NAME, "version": _version(), "extensions": oip.EXTENSIONS})

    @app.get("/v2/health/live", include_in_schema=False)
    async def v2_live(request: Request) -> Response:
        if state["error"] is None:  # as /health: live while loading, not once the load failed
            return SafeJSON({"live": True})
        return SafeJSON({"live": False, "error": failure(request)}, status_code=500)

    @app.get("/v2/health/ready", include_in_schema=False)
    async def v2_ready(request: Request) -> Response:
        if state["model"] is None:
            return SafeJSON({"ready": False, "error": failure(request)}, status_code=503)
        return SafeJSON({"ready": True})

    # ---- health, readiness, metrics -----------------------------------------------------------
    def log_status(request: Request) -> dict[str, Any]:
        """A degraded log keeps the replica in rotation (rows spill locally and are counted in
        /metrics); pulling every replica out because a shared store is down would turn a
        monitoring gap into an outage. The detail names paths: only with the token."""
        try:
            problem = log.problem()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return {"status": "ok"}
        detail = {"detail": problem} if authorized(request) else {}
        return {"status": "degraded", **detail}

    # Liveness and readiness are `async def` on purpose: they do no I/O and must not queue for a
    # worker thread behind busy predictions.
    @app.get("/health")
    async def health(request: Request) -> Response:
        if state["error"] is None:
            return SafeJSON({"status": "ok", "error": None})
        reason = failure(request)
        return SafeJSON({"status": "failed", "error": reason}, status_code=500)

    @app.get("/ready")
    async def ready(request: Request) -> Response:
        model = state["model"]
        if model is None:
            reason = failure(request)
            return SafeJSON({"ready": False, "reason": reason}, status_code=503)
        return SafeJSON(
            {
                "ready": True,
                "model": {"name": model.name, "version": model.version},
                "log": log_status(request),
                "path": asdict(model.path),  # compiled or registered, why, the measured difference
            }
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Predict, endpoint=predict)
    return app


class _Predict:
    """``POST /predict`` answered before FastAPI's routing and middleware (pure ASGI), by the
    same endpoint the router holds: on a one-row request their layers (exception handlers, the
    exit stack, dependency solving, query parsing) took more of the event loop than the model
    took. Any other method or path (``GET /predict``: 405) goes on to FastAPI; an exception the
    endpoint raises reaches Starlette's ServerErrorMiddleware, outside this one, as before."""

    def __init__(self, app: ASGIApp, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            response = await self.endpoint(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


#: What GET /v2 calls this server.
SERVER_NAME = "mlops-model-server"


def _version() -> str:
    try:
        return package_version("mlops")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (the binary extension), or the
    whole body and nothing."""
    if header_length is None:
        return raw, b""
    value = header_length.strip()
    if not value.isdigit() or int(value) > len(raw):
        raise Refused(
            400,
            "invalid_inference_request",
            f"{oip.HEADER_LENGTH} {header_length!r} is not a byte count within the body's "
            f"{len(raw)} bytes",
        )
    return raw[: int(value)], raw[int(value) :]


def _answer_body(
    model: ServedModel, request_id: str, answers: Answers, scored: OutlierScores | None = None
) -> dict[str, Any]:
    """/predict's answer: the request id, the model, the problem type, a prediction per row,
    for classifiers the classes and one probability per class per row (in class order) and,
    for a model saved with an outlier detector, each row's outlier score, flag and column."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version},
        "problem": model.problem.kind,
        "predictions": answers.predictions,
    }
    if answers.probabilities is not None:
        body["classes"] = list(model.problem.classes)
        body["probabilities"] = answers.probabilities.tolist()
    if scored is not None:
        body["outliers"] = [
            {"score": round(float(score), 4), "outlier": bool(flag), "column": column}
            for score, flag, column in zip(scored.scores, scored.flags, scored.columns, strict=True)
        ]
    return body


def _records(
    model: ServedModel, request_id: str, rows: list[dict[str, Any]], answers: Answers
) -> list[dict[str, Any]]:
    """The prediction-log records of answered rows (``mlops.adapters.prediction_log``'s columns):
    the answer's columns win over a feature of the same name."""
    now = datetime.now(UTC)
    proba = answers.probabilities
    binary = model.problem.kind == "binary"
    records = []
    for i, row in enumerate(rows):
        record = {**row, "request_id": request_id, "row": i, "time": now, "model": model.name,
                  "version": model.version, "prediction": answers.predictions[i]}  # fmt: skip
        if proba is not None:
            record["probabilities"] = proba[i].tolist()
            if binary:
                record["probability"] = float(proba[i, 1])
        records.append(record)
    return records


def _give_schemas(log: PredictionLog, model: ServedModel) -> None:
    """The log writes with the signature's and the problem's types; if it cannot take them it
    still works (it infers them), so the model serves regardless."""
    kind = model.problem.kind
    try:
        log.use_schema(
            PREDICTIONS, prediction_schema(((c.name, c.type) for c in model.columns), kind)
        )
    except Exception:
        logger.exception("the prediction log refused the signature's schema")
    try:
        log.use_schema(FEEDBACK, feedback_schema(kind))
    except Exception:
        logger.exception("the prediction log refused the feedback schema")


def _warm(model: ServedModel, log: PredictionLog) -> None:
    """One prediction and one log record in memory: the first caller does not pay for lazy
    imports."""
    numeric = ("long", "integer", "double", "float")
    warm = pd.DataFrame(
        [
            {c.name: (0 if c.type in numeric else False if c.type == "boolean" else "")
             for c in model.columns}
        ]
    )  # fmt: skip
    answers = model.predict(warm)
    log.warm(_records(model, "0" * 32, warm.to_dict("records"), answers)[0])


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
