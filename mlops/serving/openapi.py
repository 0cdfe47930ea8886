"""The model server's OpenAPI document: the real bodies of /predict and /feedback.

The routes read the raw request (to bound the body while it streams and to name each bad field
themselves), so FastAPI cannot see their bodies; the row's columns are known only once the model
has loaded. This module writes those two operations from the same pydantic models the routes
validate with, and adds them to the document FastAPI builds for the other routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


class ModelId(BaseModel):
    name: str
    version: int


class Answer(BaseModel):
    """What /predict answers: one prediction and one probability per row, in order."""

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    model: ModelId
    predictions: list[Literal[0, 1]]
    probabilities: list[Annotated[float, Field(ge=0, le=1)]]


class Accepted(BaseModel):
    accepted: str = Field(pattern=r"^[0-9a-f]{32}$")


class FieldError(BaseModel):
    field: str
    message: str = Field(min_length=1)


class ErrorBody(BaseModel):
    """Every refusal: what is wrong and, for invalid rows or feedback, each bad field."""

    error: str = Field(min_length=1)
    fields: list[FieldError] | None = Field(None, min_length=1)


def body_models(row: type[BaseModel], max_rows: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """``{"row": Row}`` and ``{"rows": [Row, ...]}``, the two bodies /predict takes."""
    strict = ConfigDict(extra="forbid")
    one = create_model("PredictRow", __config__=strict, row=(row, ...))
    batch = create_model(
        "PredictRows",
        __config__=strict,
        rows=(list[row], Field(min_length=1, max_length=max_rows)),  # type: ignore[valid-type]
    )
    return one, batch


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}


def _refusals(statuses: dict[int, str]) -> dict[str, Any]:
    error = REF.format(model="ErrorBody")
    return {str(s): {"description": why, "content": _json(error)} for s, why in statuses.items()}


def operations(
    row: type[BaseModel], feedback: type[BaseModel], max_rows: int, max_bytes: int, token: bool
) -> dict[str, Any]:
    """The paths and component schemas of /predict and /feedback (merged into FastAPI's document)."""
    one, batch = body_models(row, max_rows)
    models: list[type[BaseModel]] = [one, batch, feedback, Answer, Accepted, ErrorBody]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    common = {
        400: "the body is not JSON, or is nested too deeply",
        413: f"the body is over {max_bytes} bytes, or the batch over {max_rows} rows",
        422: "the body's shape or a field is wrong: `fields` names each",
    } | ({401: "missing or wrong bearer token"} if token else {})
    security: list[dict[str, list[str]]] = [{"bearer": []}] if token else []
    predict_body = {"oneOf": [{"$ref": REF.format(model=m.__name__)} for m in (one, batch)]}
    paths = {
        "/predict": {
            "post": {
                "summary": "Predict one row or a batch",
                "operationId": "predict",
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": predict_body}},
                },
                "responses": {
                    "200": {
                        "description": "the answers",
                        "content": _json(REF.format(model="Answer")),
                    },
                    **_refusals(common | {503: "the model is not loaded (yet)"}),
                },
            }
        },
        "/feedback": {
            "post": {
                "summary": "A label that arrived later for an earlier request",
                "operationId": "feedback",
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": _json(REF.format(model=feedback.__name__)),
                },
                "responses": {
                    "202": {
                        "description": "recorded",
                        "content": _json(REF.format(model="Accepted")),
                    },
                    **_refusals(common),
                },
            }
        },
    }
    components: dict[str, Any] = {"schemas": defs["$defs"]}
    if token:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {"paths": paths, "components": components}


def merge(document: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``extra``'s paths and components added (neither is changed)."""
    merged = {**document, "paths": {**document.get("paths", {}), **extra["paths"]}}
    components = dict(document.get("components", {}))
    for key, values in extra["components"].items():
        components[key] = {**components.get(key, {}), **values}
    merged["components"] = components
    return merged
