"""The Open Inference Protocol translation: requests as Triton's own client encodes them (JSON and
binary tensor data) become the rows /predict takes; answers become tensors that client decodes;
whatever the protocol or the model's inputs refuse names the tensor."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from mlops.serving import open_inference as oip
from mlops.serving.model import Answers, Column, ServedProblem

pytestmark = pytest.mark.unit

COLUMNS = [
    Column("x", "double", True),
    Column("n", "long", True),
    Column("color", "string", True),
    Column("flag", "boolean", False),
]
BINARY = ServedProblem("binary", "y", ("no", "yes"))
REGRESSION = ServedProblem("regression", "y", (), (1.0, 2.0))

X = np.array([1.5, -2.0, 0.25])
N = np.array([3, 4, 5], dtype=np.int64)
COLOR = np.array(["red", "grün", ""], dtype=object)
FLAG = np.array([True, False, True])
ROWS = [
    {"x": 1.5, "n": 3, "color": "red", "flag": True},
    {"x": -2.0, "n": 4, "color": "grün", "flag": False},
    {"x": 0.25, "n": 5, "color": "", "flag": True},
]


def inputs(binary: bool, shape_1: bool = False) -> list[triton.InferInput]:
    tensors = []
    for name, values, datatype in (
        ("x", X, "FP64"),
        ("n", N, "INT64"),
        ("color", COLOR, "BYTES"),
        ("flag", FLAG, "BOOL"),
    ):
        data = values.reshape(-1, 1) if shape_1 else values
        tensor = triton.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        tensors.append(tensor)
    return tensors


def parse(body: bytes, json_size: int | None, problem: ServedProblem = BINARY) -> oip.InferRequest:
    head, tail = (body, b"") if json_size is None else (body[:json_size], body[json_size:])
    return oip.parse_request(json.loads(head), tail, COLUMNS, problem, max_rows=100)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("shape_1", [False, True], ids=["[n]", "[n,1]"])
def test_the_clients_tensors_become_the_rows_predict_takes(binary: bool, shape_1: bool) -> None:
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs(binary, shape_1), request_id="req-7"
    )
    assert (json_size is not None) == binary
    request = parse(body, json_size)
    assert request.rows == ROWS
    assert request.id == "req-7"
    # no outputs named: the client asks for all of them, in binary
    assert request.outputs == [(oip.PREDICT, True), (oip.PROBABILITIES, True)]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_answers_become_tensors_the_client_decodes(binary: bool) -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "probabilities")]  # fmt: skip
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs(True), outputs)
    request = parse(body, json_size)
    proba = np.array([[0.75, 0.25], [0.1, 0.9], [0.5, 0.5]])
    answers = Answers(["no", "yes", "yes"], proba)
    content, header = oip.response(request, answers, BINARY, "m", 3, "a" * 32)
    assert (header is not None) == binary
    result = triton.InferenceServerClient.parse_response_body(content, header_length=header)
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict")] == [
        "no",
        "yes",
        "yes",
    ]
    assert np.array_equal(result.as_numpy("probabilities"), proba)
    response = result.get_response()
    assert response["model_name"] == "m" and response["model_version"] == "3"
    assert response["parameters"] == {"request_id": "a" * 32}
    assert "id" not in response  # none was given


def test_a_regression_answers_one_fp64_tensor() -> None:
    body = {
        "id": "1",
        "inputs": [
            {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2]},
            {"name": "n", "shape": [2], "datatype": "INT32", "data": [1, 2]},
            {"name": "color", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
        ],
    }
    request = oip.parse_request(body, b"", COLUMNS, REGRESSION, 10)
    assert request.outputs == [(oip.PREDICT, False)]
    assert request.rows == [{"x": 1.0, "n": 1, "color": "a"}, {"x": 2, "n": 2, "color": "b"}]
    content, header = oip.response(request, Answers([1.5, -2.0]), REGRESSION, "m", 1, "b" * 32)
    assert header is None
    answer = json.loads(content)
    assert answer["id"] == "1"
    assert answer["outputs"] == [
        {"name": "predict", "datatype": "FP64", "shape": [2], "data": [1.5, -2.0]}
    ]


def test_the_metadata_names_each_column_with_its_datatype_and_the_outputs() -> None:
    meta = oip.model_metadata("m", 4, COLUMNS, BINARY)
    assert meta["name"] == "m" and meta["versions"] == ["4"] and meta["platform"] == "sklearn_skops"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("x", "FP64", [-1]),
        ("n", "INT64", [-1]),
        ("color", "BYTES", [-1]),
        ("flag", "BOOL", [-1]),
    ]
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]},
    ]
    regression = oip.model_metadata("m", 4, COLUMNS, REGRESSION)["outputs"]
    assert regression == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


def tensor(name: str, **fields: Any) -> dict[str, Any]:
    base = {
        "x": {"datatype": "FP64", "data": [1.0]},
        "n": {"datatype": "INT64", "data": [1]},
        "color": {"datatype": "BYTES", "data": ["a"]},
    }[name]
    return {"name": name, "shape": [1], **base, **fields}


def request_with(**change: Any) -> dict[str, Any]:
    return {"inputs": [tensor("x"), tensor("n"), tensor("color")]} | change


@pytest.mark.parametrize(
    ("body", "binary", "status", "fragment"),
    [
        ([1], b"", 400, "must be an inference request object"),
        (request_with(extra=1), b"", 400, "unknown field(s) ['extra']"),
        (request_with(id=7), b"", 400, "id: must be a string"),
        (request_with(inputs=[]), b"", 400, "inputs: must be a non-empty list"),
        (request_with(inputs=[tensor("x"), tensor("n")]), b"", 400, "['color'] are required"),
        (request_with(inputs=[tensor("x"), tensor("x")]), b"", 400, "input 'x' is sent twice"),
        (request_with(inputs=[{"name": "shoe", "shape": [1], "datatype": "FP64", "data": [1]}]),
         b"", 400, "input 'shoe': the model has no such input"),
        (request_with(inputs=[tensor("n", datatype="FP64")]), b"", 400,
         "input 'n': datatype FP64 cannot hold the model's long column (send INT64)"),
        (request_with(inputs=[tensor("color", datatype="INT64")]), b"", 400,
         "input 'color': datatype INT64 cannot hold"),
        (request_with(inputs=[tensor("x", datatype="FP8")]), b"", 400, "datatype 'FP8' is none"),
        (request_with(inputs=[tensor("x", shape=[1, 2])]), b"", 400,
         "input 'x': shape [1, 2] is not [rows] or [rows, 1]"),
        (request_with(inputs=[tensor("x", shape=[0], data=[])]), b"", 400, "the batch is empty"),
        (request_with(inputs=[tensor("x", data=[1.0, 2.0])]), b"", 400,
         "input 'x': data holds 2 values for shape [1]"),
        (request_with(inputs=[tensor("x", data=[[1.0]])]), b"", 400, "one value per row"),
        (request_with(inputs=[tensor("x", shape=[2], data=[1.0, 2.0]), tensor("n")]), b"", 400,
         "input 'n' holds 1 rows, input 'x' 2"),
        (request_with(inputs=[tensor("x", shape=[101], data=[1.0] * 101)]), b"", 413,
         "101 rows exceed the limit of 100"),
        (request_with(inputs=[{"name": "x", "shape": [1], "datatype": "FP64",
                               "parameters": {"binary_data_size": 16}}]),
         b"\0" * 8, 400, "runs past the 8 bytes"),
        (request_with(inputs=[tensor("x", parameters={"binary_data_size": 8})]), b"\0" * 8, 400,
         "both `data` and binary_data_size"),
        (request_with(inputs=[{"name": "x", "shape": [1], "datatype": "FP64",
                               "parameters": {"binary_data_size": 4}}]), b"\0" * 4, 400,
         "input 'x': 4 bytes of FP64 for 1 rows (8 expected)"),
        (request_with(inputs=[{"name": "color", "shape": [1], "datatype": "BYTES",
                               "parameters": {"binary_data_size": 6}}]),
         b"\x02\0\0\0\xff\xfe", 400, "input 'color': element 0 is not UTF-8 text"),
        (request_with(inputs=[{"name": "color", "shape": [1], "datatype": "BYTES",
                               "parameters": {"binary_data_size": 5}}]),
         b"\x09\0\0\0a", 400, "element 0 runs past the tensor's bytes"),
        (request_with(), b"\0", 400, "1 bytes of binary data follow"),
        (request_with(outputs=[{"name": "explanation"}]), b"", 400,
         "output 'explanation': the model has no such output"),
        (request_with(parameters={"binary_data_output": "yes"}), b"", 400,
         "binary_data_output: must be true or false"),
        (request_with(parameters={"nested": {"a": 1}}), b"", 400, "parameters: must be an object"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_tensor(
    body: Any, binary: bytes, status: int, fragment: str
) -> None:
    with pytest.raises(oip.InferenceRefused) as refused:
        oip.parse_request(body, binary, COLUMNS, BINARY, max_rows=100)
    assert refused.value.status == status
    assert fragment in refused.value.message, refused.value.message


def test_values_pass_through_untouched_for_the_servers_own_validation() -> None:
    """The protocol layer does not coerce: a string in an FP64 tensor, a NaN sent in binary or
    an int64 beyond the column's range reach the same row validation as /predict's rows."""
    nan = np.array([np.nan]).tobytes()
    body = request_with(
        inputs=[
            {"name": "x", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}},
            tensor("n", data=["7"]),
            tensor("color"),
        ]
    )
    (row,) = oip.parse_request(body, nan, COLUMNS, BINARY, 10).rows
    assert np.isnan(row["x"]) and row["n"] == "7"
    assert oip.row_error("Input should be a valid integer", 3, "n") == (
        "input 'n' element 3: Input should be a valid integer"
    )
