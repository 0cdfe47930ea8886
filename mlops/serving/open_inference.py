"""The Open Inference Protocol (V2 REST: KServe, Triton, MLServer, Seldon) for one tabular model.

A model's inputs are its signature's columns, one tensor each (shape ``[n]`` or ``[n, 1]``, the
same ``n`` for all); its outputs are ``predict`` (the class name, BYTES, or the number, FP64, per
row) and, for classifiers, ``probabilities`` (FP64, ``[n, classes]``, class order). This module
only translates: a request becomes the rows ``/predict`` takes (then the server validates them,
predicts, logs and counts them on the one path both routes share), and the answers become output
tensors.

Tensor data comes as JSON or, with Triton's binary tensor data extension (what its clients send by
default), as raw bytes after the JSON header (``Inference-Header-Content-Length``); outputs are
returned in binary when the request asks (``binary_data_output``, or an output's ``binary_data``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops.core.integrity import SERIALIZATION_FORMAT
from mlops.serving.model import Answers, Column, ServedProblem

#: The V2 data type each MLflow column type is advertised as.
DATATYPES = {
    "long": "INT64",
    "integer": "INT32",
    "double": "FP64",
    "float": "FP32",
    "string": "BYTES",
    "boolean": "BOOL",
}

_INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOATS = ("FP16", "FP32", "FP64")

#: The data types a column of each MLflow type accepts: any whose values it holds without loss
#: (an integer tensor for a double column, as /predict takes the JSON number 12 for one).
ACCEPTED = {
    "long": _INTEGERS,
    "integer": _INTEGERS,
    "double": _INTEGERS + _FLOATS,
    "float": _INTEGERS + _FLOATS,
    "string": ("BYTES",),
    "boolean": ("BOOL",),
}

#: Fixed-size data types as little-endian numpy types (the binary extension's layout).
_NUMPY = {
    "BOOL": "<u1",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}

KNOWN_DATATYPES = (*_NUMPY, "BYTES")

PREDICT = "predict"
PROBABILITIES = "probabilities"

#: The HTTP header of the binary extension: how many leading bytes of the body are JSON.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: The extension this server supports beyond the required API (in GET /v2's answer).
EXTENSIONS = ["binary_tensor_data"]

PLATFORM = f"sklearn_{SERIALIZATION_FORMAT}"

_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_OUTPUT_KEYS = {"name", "parameters"}


class InferenceRefused(Exception):
    """A request the protocol's rules or the model's inputs refuse; ``message`` names the tensor."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass(frozen=True)
class InferRequest:
    """A parsed request: the rows its tensors hold (one mapping per row, the columns sent) and
    which outputs to return, each in binary or not."""

    id: str | None
    rows: list[dict[str, Any]]
    outputs: list[tuple[str, bool]]


def output_names(problem: ServedProblem) -> list[str]:
    return [PREDICT, PROBABILITIES] if problem.is_classifier else [PREDICT]


def model_metadata(
    name: str, version: int, columns: list[Column], problem: ServedProblem
) -> dict[str, Any]:
    """The model metadata response: name, versions, platform, input and output tensors."""
    predict = "BYTES" if problem.is_classifier else "FP64"
    outputs = [{"name": PREDICT, "datatype": predict, "shape": [-1]}]
    if problem.is_classifier:
        outputs.append(
            {"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, len(problem.classes)]}
        )
    return {
        "name": name,
        "versions": [str(version)],
        "platform": PLATFORM,
        "inputs": [
            {"name": c.name, "datatype": DATATYPES.get(c.type, "BYTES"), "shape": [-1]}
            for c in columns
        ],
        "outputs": outputs,
    }


def parse_request(
    body: Any, binary: bytes, columns: list[Column], problem: ServedProblem, max_rows: int
) -> InferRequest:
    """The rows and outputs of an inference request (``body`` its JSON, ``binary`` the bytes
    after it); anything the protocol or the model's inputs refuse raises InferenceRefused."""
    if not isinstance(body, dict):
        raise _bad("the body must be an inference request object with `inputs`")
    unknown = sorted(set(body) - _REQUEST_KEYS)
    if unknown:
        raise _bad(f"unknown field(s) {unknown} in the request (known: {sorted(_REQUEST_KEYS)})")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id: must be a string")
    parameters = _parameters(body.get("parameters"), "parameters")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise _bad("parameters.binary_data_output: must be true or false")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs: must be a non-empty list of input tensors")
    by_name = {c.name: c for c in columns}
    values: dict[str, list[Any]] = {}
    offset = 0
    rows: int | None = None
    first = ""
    for i, tensor in enumerate(inputs):
        name, data, offset = _input(tensor, i, by_name, binary, offset)
        if name in values:
            raise _bad(f"input {name!r} is sent twice")
        n = len(data)
        if rows is None:
            rows, first = n, name
            if n > max_rows:
                raise InferenceRefused(
                    413, "too_many_rows", f"input {name!r}: {n} rows exceed the limit of {max_rows}"
                )
        elif n != rows:
            raise _bad(f"input {name!r} holds {n} rows, input {first!r} {rows}")
        values[name] = data
    if offset != len(binary):
        raise _bad(
            f"{len(binary) - offset} bytes of binary data follow the tensors' binary_data_size"
        )
    missing = [c.name for c in columns if c.required and c.name not in values]
    if missing:
        raise _bad(f"input(s) {missing} are required by the model and were not sent")
    return InferRequest(
        request_id,
        [{name: data[r] for name, data in values.items()} for r in range(rows or 0)],
        _outputs(body.get("outputs"), problem, binary_default),
    )


def _bad(message: str) -> InferenceRefused:
    return InferenceRefused(400, "invalid_inference_request", message)


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in value.values()
    ):
        raise _bad(f"{where}: must be an object of string, number or boolean values")
    return value


def _input(
    tensor: Any, i: int, columns: dict[str, Column], binary: bytes, offset: int
) -> tuple[str, list[Any], int]:
    """One input tensor's name and values (Python scalars, row order), and the binary offset
    after it."""
    if not isinstance(tensor, dict):
        raise _bad(f"inputs[{i}]: must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise _bad(f"inputs[{i}].name: must be a string")
    if name not in columns:
        raise _bad(f"input {name!r}: the model has no such input (its inputs: {list(columns)})")
    unknown = sorted(set(tensor) - _INPUT_KEYS)
    if unknown:
        raise _bad(f"input {name!r}: unknown field(s) {unknown}")
    column = columns[name]
    datatype = tensor.get("datatype")
    if datatype not in KNOWN_DATATYPES:
        raise _bad(f"input {name!r}: datatype {datatype!r} is none of {list(KNOWN_DATATYPES)}")
    if datatype not in ACCEPTED.get(column.type, ("BYTES",)):
        raise _bad(
            f"input {name!r}: datatype {datatype} cannot hold the model's {column.type} column "
            f"(send {DATATYPES.get(column.type, 'BYTES')})"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or len(shape) not in (1, 2)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise _bad(f"input {name!r}: shape {shape!r} is not [rows] or [rows, 1]")
    rows = shape[0]
    if rows == 0:
        raise _bad(f"input {name!r}: the batch is empty")
    parameters = _parameters(tensor.get("parameters"), f"input {name!r}: parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise _bad(f"input {name!r}: no data (neither `data` nor binary_data_size)")
        data = _json_data(tensor["data"], shape, name)
    else:
        if "data" in tensor:
            raise _bad(f"input {name!r}: both `data` and binary_data_size are given")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"input {name!r}: binary_data_size {size!r} is not a byte count")
        if offset + size > len(binary):
            raise _bad(
                f"input {name!r}: binary_data_size {size} runs past the {len(binary)} bytes "
                "of binary data"
            )
        data = _binary_data(binary[offset : offset + size], datatype, rows, name)
        offset += size
    return name, data, offset


def _json_data(data: Any, shape: list[int], name: str) -> list[Any]:
    """The elements of ``data``: flat, or nested as a ``[rows, 1]`` shape is (``[[v], [v]]``)."""
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: data must be a list")
    if len(shape) == 2 and all(isinstance(v, list) for v in data):
        if any(len(v) != 1 for v in data):
            raise _bad(f"input {name!r}: data for shape {shape} holds a row of other than 1 value")
        data = [v[0] for v in data]
    if any(isinstance(v, (list, dict)) for v in data):
        raise _bad(f"input {name!r}: data must hold one value per row (shape {shape})")
    if len(data) != shape[0]:
        raise _bad(f"input {name!r}: data holds {len(data)} values for shape {shape}")
    return data


def _binary_data(raw: bytes, datatype: str, rows: int, name: str) -> list[Any]:
    if datatype == "BYTES":
        return _read_bytes(raw, rows, name)
    width = np.dtype(_NUMPY[datatype]).itemsize
    if len(raw) != rows * width:
        raise _bad(
            f"input {name!r}: {len(raw)} bytes of {datatype} for {rows} rows "
            f"({rows * width} expected)"
        )
    values = np.frombuffer(raw, dtype=_NUMPY[datatype])
    if datatype == "BOOL":
        if ((values != 0) & (values != 1)).any():
            raise _bad(f"input {name!r}: BOOL bytes must be 0 or 1")
        return [bool(v) for v in values]
    return list(values.tolist())


def _read_bytes(raw: bytes, rows: int, name: str) -> list[str]:
    """BYTES elements, each a 4-byte little-endian length and that many bytes, as UTF-8 text."""
    out: list[str] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise _bad(f"input {name!r}: element {len(out)} is cut off in its length")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise _bad(f"input {name!r}: element {len(out)} runs past the tensor's bytes")
        try:
            out.append(raw[at : at + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _bad(f"input {name!r}: element {len(out)} is not UTF-8 text ({exc})") from None
        at += length
    if len(out) != rows:
        raise _bad(f"input {name!r}: {len(out)} BYTES elements for shape [{rows}]")
    return out


def _outputs(
    requested: Any, problem: ServedProblem, binary_default: bool
) -> list[tuple[str, bool]]:
    available = output_names(problem)
    if requested is None:
        return [(name, binary_default) for name in available]
    if not isinstance(requested, list) or not requested:
        raise _bad("outputs: must be a non-empty list of {name} objects when given")
    out: list[tuple[str, bool]] = []
    for i, item in enumerate(requested):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"outputs[{i}]: must be an object with a name")
        name = item["name"]
        if name not in available:
            raise _bad(f"output {name!r}: the model has no such output (its outputs: {available})")
        unknown = sorted(set(item) - _OUTPUT_KEYS)
        if unknown:
            raise _bad(f"output {name!r}: unknown field(s) {unknown}")
        if name in (n for n, _ in out):
            raise _bad(f"output {name!r} is requested twice")
        binary = _parameters(item.get("parameters"), f"output {name!r}: parameters").get(
            "binary_data", binary_default
        )
        if not isinstance(binary, bool):
            raise _bad(f"output {name!r}: parameters.binary_data must be true or false")
        out.append((name, binary))
    return out


def row_error(message: str, row: int, field: str) -> str:
    """A row validation error as the tensor and element it came from."""
    return f"input {field!r} element {row}: {message}"


def response(
    request: InferRequest,
    answers: Answers,
    problem: ServedProblem,
    name: str,
    version: int,
    request_id: str,
) -> tuple[bytes, int | None]:
    """The inference response's bytes, and the length of its JSON header when binary outputs
    follow it (None: the body is JSON alone)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output, binary in request.outputs:
        tensor, raw = _output(output, answers, problem)
        if binary:
            blob = _encode(raw, tensor["datatype"])
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = raw
        outputs.append(tensor)
    body: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if request.id is not None:
        body["id"] = request.id
    body["parameters"] = {"request_id": request_id}
    body["outputs"] = outputs
    header = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("ascii")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _output(
    output: str, answers: Answers, problem: ServedProblem
) -> tuple[dict[str, Any], list[Any]]:
    n = len(answers)
    if output == PREDICT:
        datatype = "BYTES" if problem.is_classifier else "FP64"
        return {"name": PREDICT, "datatype": datatype, "shape": [n]}, list(answers.predictions)
    assert answers.probabilities is not None  # only classifiers have this output
    k = answers.probabilities.shape[1]
    flat = [float(p) for p in answers.probabilities.reshape(-1)]
    return {"name": PROBABILITIES, "datatype": "FP64", "shape": [n, k]}, flat


def _encode(values: Sequence[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in values:
            data = str(v).encode("utf-8")
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.asarray(values, dtype=_NUMPY[datatype]).tobytes()
