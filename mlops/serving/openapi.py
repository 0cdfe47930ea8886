"""The model server's OpenAPI document: the real bodies of /predict, /feedback and V2 inference.

The routes read the raw request (to bound the body while it streams and to name each bad field
themselves), so FastAPI cannot see their bodies; the row's columns and what the model answers
(its classes, or a number) are known only once the model has loaded. This module writes those
operations from the same pydantic models the routes validate with (and, for the Open Inference
Protocol, from the model's tensors), and adds them to the document FastAPI builds for the other
routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from mlops.serving import open_inference as oip
from mlops.serving.model import Column, ServedModel, ServedProblem

REF = "#/components/schemas/{model}"

#: The JSON type of a tensor element for each MLflow column type (the ranges the server takes).
_JSON_VALUES: dict[str, dict[str, Any]] = {
    "long": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    "integer": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    "double": {"type": "number"},
    "float": {"type": "number"},
    "string": {"type": "string"},
    "boolean": {"type": "boolean"},
}


class ModelId(BaseModel):
    name: str
    version: int


class Accepted(BaseModel):
    accepted: str = Field(pattern=r"^[0-9a-f]{32}$")


class FieldError(BaseModel):
    field: str
    message: str = Field(min_length=1)


class ErrorBody(BaseModel):
    """Every refusal: what is wrong and, for invalid rows or feedback, each bad field."""

    error: str = Field(min_length=1)
    fields: list[FieldError] | None = Field(None, min_length=1)


class Outlier(BaseModel):
    """How unlike the training rows an answered row is (``mlops.core.outliers``)."""

    score: float = Field(ge=0, description="The row's largest surprise, in normal deviates.")
    outlier: bool = Field(description="Above the threshold 1 % of the training rows exceed.")
    column: str | None = Field(description="The column the score comes from.")


def answer_model(problem: ServedProblem) -> type[BaseModel]:
    """What /predict answers for a model of ``problem``: a prediction per row, in order (a class
    name, or a number) and, for classifiers, the classes and a probability per class per row."""
    kind: Any = Literal[problem.kind]
    common: dict[str, Any] = {
        "request_id": (str, Field(pattern=r"^[0-9a-f]{32}$")),
        "model": (ModelId, ...),
        "problem": (kind, ...),
        "outliers": (list[Outlier] | None, None),
    }
    if not problem.is_classifier:
        return create_model("Answer", predictions=(list[float], ...), **common)
    k = len(problem.classes)
    label: Any = Literal[problem.classes]
    probability = Annotated[float, Field(ge=0, le=1)]
    return create_model(
        "Answer",
        predictions=(list[label], ...),
        classes=(
            list[label],
            Field(min_length=k, max_length=k, json_schema_extra={"const": list(problem.classes)}),
        ),
        probabilities=(list[Annotated[list[probability], Field(min_length=k, max_length=k)]], ...),
        **common,
    )


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


def _refusals(statuses: dict[int, str], error: str = "ErrorBody") -> dict[str, Any]:
    ref = REF.format(model=error)
    return {str(s): {"description": why, "content": _json(ref)} for s, why in statuses.items()}


def operations(
    row: type[BaseModel],
    feedback: type[BaseModel],
    model: ServedModel,
    max_rows: int,
    max_bytes: int,
    token: bool,
    max_explain_rows: int = 100,
) -> dict[str, Any]:
    """The paths and component schemas of /predict, /explain, /feedback and the V2 routes
    (merged into FastAPI's document)."""
    one, batch = body_models(row, max_rows)
    answer = answer_model(model.problem)
    models: list[type[BaseModel]] = [one, batch, feedback, answer, Accepted, ErrorBody]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    common = {
        400: "the body is not JSON, or is nested too deeply",
        413: f"the body is over {max_bytes} bytes, or the batch over {max_rows} rows",
        415: "the body is compressed (Content-Encoding): send it as is",
        422: "the body's shape or a field is wrong, or the model's answer to a row is not a "
        "finite number: `fields` names each",
    } | ({401: "missing or wrong bearer token"} if token else {})
    security: list[dict[str, list[str]]] = [{"bearer": []}] if token else []
    predict_body = {"oneOf": [{"$ref": REF.format(model=m.__name__)} for m in (one, batch)]}
    not_ready = {503: "the model is not loaded (yet)"}

    def post(
        summary: str, op: str, body: dict[str, Any], ok: tuple[int, str, dict[str, Any]],
        refusals: dict[int, str], description: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        status, what, content = ok
        return {
            "post": {
                "summary": summary,
                "operationId": op,
                "security": security,
                "requestBody": {"required": True, "content": body},
                "responses": {
                    str(status): {"description": what, "content": content},
                    **_refusals(refusals),
                },
            }
            | ({"description": description} if description else {})
        }

    rows_body = {"application/json": {"schema": predict_body}}
    paths = {
        "/predict": post(
            "Predict one row or a batch",
            "predict",
            rows_body,
            (200, f"the answers ({model.problem.kind})", _json(REF.format(model=answer.__name__))),
            common | not_ready,
        ),
        "/explain": post(
            "Why the model answers as it does: each row's answer attributed to its input columns",
            "explain",
            rows_body,
            (200, "the attributions", {"application/json": {"schema": _EXPLANATION}}),
            common | not_ready | {501: "the model has no explainer (the reason says why)"},
            description=f"The body /predict takes, at most {max_explain_rows} rows. Per row and "
            "output (the positive class, each class, or the value), `base_value` plus the "
            "`attributions` is `output_value`, the model's output in `space` (probability, "
            "log_odds, logit or value).",
        ),
        "/feedback": post(
            "A label that arrived later for an earlier request",
            "feedback",
            _json(REF.format(model=feedback.__name__)),
            (202, "recorded", _json(REF.format(model="Accepted"))),
            common | not_ready,
        ),
        **_v2_paths(model, max_rows, max_bytes, token, security),
    }
    components: dict[str, Any] = {"schemas": defs["$defs"] | _v2_schemas(model, max_rows)}
    if token:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {"paths": paths, "components": components}


_PER_OUTPUT = {"type": "object", "additionalProperties": {"type": "number"}}

#: What /explain answers (mlops.core.explanations.Attributions.records, one item a row).
_EXPLANATION = {
    "type": "object",
    "required": ["model", "version", "method", "space", "outputs", "explanations"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "method": {"enum": ["tree_shap", "linear"]},
        "space": {"enum": ["probability", "log_odds", "logit", "value"]},
        "outputs": {"type": "array", "items": {"type": "string"}},
        "explanations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["base_value", "output_value", "attributions"],
                "properties": {
                    "base_value": _PER_OUTPUT,
                    "output_value": _PER_OUTPUT,
                    "attributions": {"type": "object", "additionalProperties": _PER_OUTPUT},
                },
            },
        },
    },
}


# ---- the Open Inference Protocol ------------------------------------------------------------
def _v2_schemas(model: ServedModel, max_rows: int) -> dict[str, Any]:
    """JSON Schemas of the V2 bodies for this model's tensors (JSON tensor data; binary tensor
    data is the same header followed by the bytes it announces)."""
    outputs = oip.output_names(model.problem)
    parameters = {
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]},
    }
    rows = {"type": "integer", "minimum": 1, "maximum": max_rows}
    shape = {
        "oneOf": [
            {"type": "array", "prefixItems": [rows], "minItems": 1, "maxItems": 1},
            {"type": "array", "prefixItems": [rows, {"const": 1}], "minItems": 2, "maxItems": 2},
        ]
    }

    def column_input(column: Column) -> dict[str, Any]:
        """One column's tensor: its name, the data types that hold it, its values' JSON type."""
        value: dict[str, Any] = dict(_JSON_VALUES.get(column.type, {"type": "string"}))
        if not column.required:
            value = {"anyOf": [value, {"type": "null"}]}
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"const": column.name},
                "shape": shape,
                "datatype": {"enum": list(oip.ACCEPTED.get(column.type, ("BYTES",)))},
                "parameters": parameters,
                "data": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            value,
                            {"type": "array", "items": value, "minItems": 1, "maxItems": 1},
                        ]
                    },
                },
            },
        }

    request_input = {"oneOf": [column_input(c) for c in model.columns]}
    request = {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": parameters,
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": REF.format(model="V2RequestInput")},
            },
            "outputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {"name": {"enum": outputs}, "parameters": parameters},
                },
            },
        },
    }
    predict_data = (
        {"enum": list(model.problem.classes)} if model.problem.is_classifier else {"type": "number"}
    )
    response_output = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"enum": outputs},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"enum": ["BYTES", "FP64"]},
            "parameters": parameters,
            # the predictions' (class names, or numbers), or the probabilities (numbers)
            "data": {"type": "array", "items": {"anyOf": [predict_data, {"type": "number"}]}},
        },
    }
    response = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"const": model.name},
            "model_version": {"const": str(model.version)},
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
            },
            "outputs": {"type": "array", "items": {"$ref": REF.format(model="V2ResponseOutput")}},
        },
    }
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    metadata = {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"const": model.name},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"const": oip.PLATFORM},
            "inputs": {"type": "array", "items": tensor},
            "outputs": {"type": "array", "items": tensor},
        },
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "minLength": 1}},
    }
    return {
        "V2RequestInput": request_input,
        "V2InferenceRequest": request,
        "V2ResponseOutput": response_output,
        "V2InferenceResponse": response,
        "V2ModelMetadata": metadata,
        "V2Error": error,
    }


def _v2_paths(
    model: ServedModel,
    max_rows: int,
    max_bytes: int,
    token: bool,
    security: list[dict[str, list[str]]],
) -> dict[str, Any]:
    refusals = {
        400: "the request is not a valid inference request for this model: `error` names the "
        "tensor",
        404: "no such model or version is served here",
        413: f"the body is over {max_bytes} bytes, or a tensor over {max_rows} rows",
        415: "the body is compressed (Content-Encoding): send it as is",
        422: "the model's answer to a row is not a finite number",
        503: "the model is not loaded (yet)",
    } | ({401: "missing or wrong bearer token"} if token else {})
    infer = {
        "post": {
            "summary": "Open Inference Protocol: infer (one tensor per input column)",
            "operationId": "v2_infer",
            "security": security,
            "parameters": [_name_parameter(model.name)],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="V2InferenceRequest")}}
                },
            },
            "responses": {
                "200": {
                    "description": "the output tensors (binary data after the JSON header "
                    f"when asked, its length in {oip.HEADER_LENGTH})",
                    "content": _json(REF.format(model="V2InferenceResponse")),
                },
                **_refusals(refusals, "V2Error"),
            },
        }
    }
    metadata = {
        "get": {
            "summary": "Open Inference Protocol: model metadata",
            "operationId": "v2_model_metadata",
            "parameters": [_name_parameter(model.name)],
            "responses": {
                "200": {
                    "description": "the model's input and output tensors",
                    "content": _json(REF.format(model="V2ModelMetadata")),
                },
                **_refusals({404: refusals[404], 503: refusals[503]}, "V2Error"),
            },
        }
    }
    ready = {
        "get": {
            "summary": "Open Inference Protocol: model ready",
            "operationId": "v2_model_ready",
            "parameters": [_name_parameter(model.name)],
            "responses": {
                "200": {"description": "ready"},
                "503": {"description": "not loaded (yet)"},
                **_refusals({404: refusals[404]}, "V2Error"),
            },
        }
    }
    health = {
        "/v2/health/live": ("server live", "v2_live", 500, "the model failed to load"),
        "/v2/health/ready": ("server ready", "v2_ready", 503, "the model is not loaded (yet)"),
        "/v2": ("server metadata", "v2_server_metadata", None, None),
    }
    paths: dict[str, Any] = {
        "/v2/models/{name}/infer": infer,
        "/v2/models/{name}": metadata,
        "/v2/models/{name}/ready": ready,
    }
    for path, (summary, op_id, status, why) in health.items():
        responses: dict[str, Any] = {"200": {"description": "yes"}}
        if status is not None:
            responses[str(status)] = {"description": why}
        paths[path] = {
            "get": {
                "summary": f"Open Inference Protocol: {summary}",
                "operationId": op_id,
                "responses": responses,
            }
        }
    return paths


def _name_parameter(name: str) -> dict[str, Any]:
    return {"name": "name", "in": "path", "required": True, "schema": {"enum": [name]}}


def merge(document: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``extra``'s paths and components added (neither is changed)."""
    merged = {**document, "paths": {**document.get("paths", {}), **extra["paths"]}}
    components = dict(document.get("components", {}))
    for key, values in extra["components"].items():
        components[key] = {**components.get(key, {}), **values}
    merged["components"] = components
    return merged
