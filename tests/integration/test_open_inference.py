"""The model server per problem type, as the image runs it (``python -m mlops.serving``, its own
process, a bearer token): a binary, a multiclass and a regression model, each a tiny real
pipeline in a verified model folder. Triton's own HTTP client (written for KServe, Triton,
MLServer and Seldon servers) gets through the Open Inference Protocol the answers /predict gives;
/feedback takes a label of the model's type and refuses others naming ``label``; the prediction
log and the metrics hold each answer with its type; the release's smoke test passes per type."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from mlops.adapters.prediction_log import FEEDBACK, PREDICTIONS
from mlops.adapters.prediction_window import read_log
from mlops.release.smoke import check_answers, known_batch, wait_until_ready
from mlops.stack.processes import free_port, spawn, stop_process_group, tail
from tests.unit.serving.tiny_models import CLASSES, features, save_folder

pytestmark = pytest.mark.integration

PROBLEMS = ("binary", "multiclass", "regression")
TOKEN = "oip-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def auth() -> dict[str, str]:
    """The token header, fresh per call: Triton's client adds its own headers to the dict it is
    given (Inference-Header-Content-Length), which would leak into the next request."""
    return dict(AUTH)


STARTUP = float(os.environ.get("MLOPS_STARTUP_TIMEOUT", "120"))

COLUMNS = {"x": "FP64", "n": "INT64", "color": "BYTES", "flag": "BOOL"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """One server process per problem type, started together."""
    work = tmp_path_factory.mktemp("open-inference")
    started: dict[str, dict[str, Any]] = {}
    env = os.environ | {"MLOPS_ENV": "local", "MLOPS_SERVING_TOKEN": TOKEN}
    try:
        for problem in PROBLEMS:
            folder = work / problem
            meta = save_folder(folder, problem, f"tiny-{problem}", version=3)
            port, log, out = free_port(), work / f"{problem}-log", work / f"{problem}.out"
            argv = ["-m", "mlops.serving", "--model-dir", str(folder), "--metadata",
                    f"{folder}.json", "--host", "127.0.0.1", "--port", str(port),
                    "--log-root", str(log)]  # fmt: skip
            proc = spawn([sys.executable, *argv], out, env=env)
            started[problem] = {"proc": proc, "base": f"http://127.0.0.1:{port}", "port": port,
                                "log": str(log), "out": out, "folder": folder, **meta}  # fmt: skip
        for s in started.values():

            def alive(s: dict[str, Any] = s) -> str | None:
                gone = s["proc"].poll() is not None
                return f"the server exited:\n{tail(s['out'])}" if gone else None

            wait_until_ready(s["base"], STARTUP, alive)
        yield started
    finally:
        for s in started.values():
            stop_process_group(s["proc"].pid, timeout=30)


def caller_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Rows as a caller posts them (plain JSON types)."""
    frame = features(n, seed=seed)
    return [
        {"x": float(r.x), "n": int(r.n), "color": str(r.color), "flag": bool(r.flag)}
        for r in frame.itertuples()
    ]


def triton_inputs(rows: list[dict[str, Any]], binary: bool) -> list[triton.InferInput]:
    frame = pd.DataFrame(rows)
    dtypes = {"x": np.float64, "n": np.int64, "color": np.object_, "flag": np.bool_}
    tensors = []
    for name, datatype in COLUMNS.items():
        data = frame[name].to_numpy(dtype=dtypes[name])
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        tensors.append(tensor)
    return tensors


def _text(value: Any) -> str:
    """A BYTES element as the client hands it back: bytes from binary data, str from JSON."""
    return value.decode() if isinstance(value, bytes) else str(value)


def client(server: dict[str, Any]) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server['port']}")


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{base}/metrics").text
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model", "version")))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }  # fmt: skip


def logged(root: str, kind: str, request_ids: set[str], timeout: float = 30) -> pd.DataFrame:
    """The log's records of ``request_ids`` once all are written (the server flushes every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = read_log(root, kind)
        mine = frame[frame["request_id"].isin(request_ids)] if not frame.empty else frame
        if (
            not mine.empty and set(mine["request_id"]) == request_ids
        ) or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_a_triton_client_gets_the_answers_predict_gives(
    servers: dict[str, dict[str, Any]], problem: str
) -> None:
    server = servers[problem]
    name = server["name"]
    rows = caller_rows(25, seed=3)
    answer = httpx.post(f"{server['base']}/predict", json={"rows": rows}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["problem"] == problem
    c = client(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    assert c.is_model_ready(name, model_version="3") and not c.is_model_ready("other")
    meta = c.get_model_metadata(name)
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == COLUMNS
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    # the client's defaults: binary tensors in and, with no outputs named, binary tensors out
    result = c.infer(name, triton_inputs(rows, binary=True), headers=auth(), request_id="r-1")
    predicted = result.as_numpy("predict")
    assert predicted is not None and predicted.shape == (25,)
    if problem == "regression":
        assert predicted.tolist() == body["predictions"]
        assert result.as_numpy("probabilities") is None
        assert all(isinstance(v, float) for v in body["predictions"])
    else:
        assert [_text(v) for v in predicted] == body["predictions"]
        assert (
            set(body["predictions"]) <= set(CLASSES[problem]) and len(set(body["predictions"])) > 1
        )
        assert body["classes"] == CLASSES[problem]
        proba = result.as_numpy("probabilities")
        assert proba is not None and proba.tolist() == body["probabilities"]
        assert np.allclose(proba.sum(axis=1), 1)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_version"] == "3"
    assert response["parameters"]["request_id"] != body["request_id"]
    # JSON tensors, one output named, the version in the path, one row: the same answer
    json_result = c.infer(
        name,
        triton_inputs(rows[:1], binary=False),
        model_version="3",
        outputs=[triton.InferRequestedOutput("predict", binary_data=False)],
        headers=auth(),
    )
    one = json_result.as_numpy("predict")
    assert one is not None
    if problem == "regression":  # one row alone meets other floating-point rounding than in 25
        assert float(one[0]) == pytest.approx(body["predictions"][0], rel=1e-12)
    else:
        assert _text(one[0]) == body["predictions"][0]
    assert [o["name"] for o in json_result.get_response()["outputs"]] == ["predict"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_v2_refusals_are_the_protocols_error_object_naming_the_tensor(
    servers: dict[str, dict[str, Any]], problem: str
) -> None:
    server = servers[problem]
    c, name = client(server), server["name"]
    rows = caller_rows(2, seed=4)
    wrong = triton_inputs(rows, binary=True)
    wrong[1] = triton.InferInput("n", [2], "FP64")
    wrong[1].set_data_from_numpy(np.array([1.5, 2.0]))
    with pytest.raises(InferenceServerException) as refused:
        c.infer(name, wrong, headers=auth())
    assert refused.value.status() == "400"
    assert "input 'n': datatype FP64 cannot hold the model's long column" in refused.value.message()
    with pytest.raises(InferenceServerException, match="required by the model"):
        c.infer(name, triton_inputs(rows, binary=True)[1:], headers=auth())
    bad_value = triton_inputs(rows, binary=False)
    bad_value[0] = triton.InferInput("x", [2], "FP64")
    bad_value[0].set_data_from_numpy(np.array([1.0, np.inf]))  # binary: JSON cannot send inf
    with pytest.raises(
        InferenceServerException, match="input 'x' element 1: Input should be a finite"
    ):
        c.infer(name, bad_value, headers=auth())
    with pytest.raises(InferenceServerException) as unknown:
        c.infer("someone-else", triton_inputs(rows, binary=True), headers=auth())
    assert unknown.value.status() == "404" and "is not served here" in unknown.value.message()
    with pytest.raises(InferenceServerException) as anonymous:
        c.infer(name, triton_inputs(rows, binary=True))
    assert anonymous.value.status() == "401"
    raw = httpx.post(f"{server['base']}/v2/models/{name}/infer", json={"inputs": []}, headers=AUTH)
    assert raw.status_code == 400 and set(raw.json()) == {"error"}, raw.text
    gzip = httpx.post(
        f"{server['base']}/v2/models/{name}/infer",
        content=b"\x1f\x8b",
        headers=AUTH | {"Content-Encoding": "gzip"},
    )
    assert gzip.status_code == 415 and "gzip" in gzip.json()["error"]


def test_a_row_the_model_answers_no_finite_number_for_is_a_4xx_naming_it_not_a_5xx(
    servers: dict[str, dict[str, Any]],
) -> None:
    """A regression's answer to a huge value overflows to infinity, which JSON cannot carry: a
    422 naming the row (a 5xx would count against a canary, for the caller's row), nothing
    logged or counted."""
    server = servers["regression"]
    base, name = server["base"], server["name"]
    before = metrics(base)
    good = caller_rows(1, seed=8)[0]
    r = httpx.post(f"{base}/predict", json={"rows": [good, good | {"x": 1.7e308}]}, headers=AUTH)
    assert r.status_code == 422, r.text
    (field,) = r.json()["fields"]
    assert field["field"] == "rows.1" and "not a finite number" in field["message"]
    huge = triton_inputs([good | {"x": 1.7e308}], binary=True)
    with pytest.raises(InferenceServerException, match="row 0 of the inputs: the model's answer"):
        client(server).infer(name, huge, headers=auth())
    after = metrics(base)
    count = ("mlops_prediction_value_count", ())
    assert after.get(count, 0.0) == before.get(count, 0.0)


FEEDBACK_CASES: dict[str, tuple[Any, list[Any], str]] = {
    # the accepted label, labels refused, and what the refusal says it must be
    "binary": ("yes", ["maybe", True, 1.5, 1, None], "Input should be 'no' or 'yes'"),
    "multiclass": ("high", ["HIGH", 2, False, ["low"]], "Input should be 'low', 'mid' or 'high'"),
    "regression": (12.25, ["12.5", True, None, {"value": 1}], "Input should be a valid number"),
}


@pytest.fixture(scope="module")
def labelled(servers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """On each server: four rows answered through /predict, two through V2, and the true label
    of the V2 answer sent back (posted to all three before any test waits for a log flush)."""
    out = {}
    for problem, server in servers.items():
        rows = caller_rows(4, seed=5)
        answered = httpx.post(f"{server['base']}/predict", json={"rows": rows}, headers=AUTH)
        result = client(server).infer(server["name"], triton_inputs(rows[:2], True), headers=auth())
        v2_id = result.get_response()["parameters"]["request_id"]
        good = FEEDBACK_CASES[problem][0]
        accepted = httpx.post(
            f"{server['base']}/feedback", json={"request_id": v2_id, "label": good}, headers=AUTH
        )
        assert accepted.status_code == 202, accepted.text
        out[problem] = {"rows": rows, "answered": answered.json(), "v2_id": v2_id, "label": good}
    return out


@pytest.mark.parametrize("problem", PROBLEMS)
def test_feedback_refuses_a_label_not_of_the_models_type_naming_label(
    servers: dict[str, dict[str, Any]], labelled: dict[str, dict[str, Any]], problem: str
) -> None:
    base, request_id = servers[problem]["base"], labelled[problem]["answered"]["request_id"]
    _, refused, must = FEEDBACK_CASES[problem]
    for label in refused:
        r = httpx.post(
            f"{base}/feedback", json={"request_id": request_id, "label": label}, headers=AUTH
        )
        assert r.status_code == 422, (label, r.text)
        (field,) = r.json()["fields"]
        assert field["field"] == "label" and must in field["message"], (label, field)
    if problem == "regression":  # a JSON integer is a number too
        again = {"request_id": request_id, "label": 12}
        assert httpx.post(f"{base}/feedback", json=again, headers=AUTH).status_code == 202


@pytest.mark.parametrize("problem", PROBLEMS)
def test_the_log_keeps_each_answer_and_label_with_its_type(
    servers: dict[str, dict[str, Any]], labelled: dict[str, dict[str, Any]], problem: str
) -> None:
    server, sent = servers[problem], labelled[problem]
    answered, v2_id, k = sent["answered"], sent["v2_id"], len(CLASSES[problem])
    log = logged(server["log"], PREDICTIONS, {answered["request_id"], v2_id})
    assert len(log) == 6, "the /predict rows and the V2 rows, each once"
    mine = log[log["request_id"] == answered["request_id"]].sort_values("row")
    assert list(mine[list(sent["rows"][0])].to_dict("records")) == sent["rows"]
    assert list(mine["prediction"]) == answered["predictions"]
    if problem == "regression":
        assert mine["prediction"].dtype == np.float64 and "probabilities" not in log
    else:
        assert [list(p) for p in mine["probabilities"]] == answered["probabilities"]
        assert all(len(p) == k for p in log["probabilities"])
    if problem == "binary":
        assert list(mine["probability"]) == [p[1] for p in answered["probabilities"]]
    else:
        assert "probability" not in log
    labels = logged(server["log"], FEEDBACK, {v2_id})
    assert list(labels["label"]) == [sent["label"]]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_metrics_count_each_answer_by_class_or_value(
    servers: dict[str, dict[str, Any]], problem: str
) -> None:
    server = servers[problem]
    base = server["base"]
    before = metrics(base)
    rows = caller_rows(30, seed=6)
    body = httpx.post(f"{base}/predict", json={"rows": rows}, headers=AUTH).json()
    client(server).infer(server["name"], triton_inputs(rows[:10], True), headers=auth())
    httpx.post(f"{base}/predict", json={"rows": rows}, headers=AUTH | {"X-Mlops-Synthetic": "1"})
    after = metrics(base)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    answers = body["predictions"] + body["predictions"][:10]  # the V2 rows are the first ten
    route = {"route": "/v2/models/{model}/infer", "status": "200"}
    assert delta("mlops_requests_total", **route) == 1
    if problem == "regression":
        bounds = [float(b) for b in _value_buckets(server["folder"])]
        assert delta("mlops_prediction_value_count") == 40
        # (no _sum: prometheus_client leaves it out of a histogram with negative bounds)
        for le in bounds:
            below = sum(v <= le for v in answers)
            assert delta("mlops_prediction_value_bucket", le=_le(le)) == below, le
        assert not any(name == "mlops_predictions_total" for name, _ in after)
    else:
        for label in CLASSES[problem]:
            assert delta("mlops_predictions_total", label=label) == answers.count(label)
        assert sum(v for (n, _), v in after.items() if n == "mlops_predictions_total") >= 40
    has_probability = any(n == "mlops_prediction_probability_count" for n, _ in after)
    assert has_probability == (problem == "binary")
    if problem == "binary":
        assert delta("mlops_prediction_probability_count") == 40


def _value_buckets(folder: Path) -> list[float]:
    from mlflow.models import Model

    return list(Model.load(str(folder)).metadata["mlops_problem"]["value_buckets"])


def _le(bound: float) -> str:
    """A bucket bound as Prometheus's text format spells it (prometheus_client's floatToGoString)."""
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))


@pytest.mark.parametrize("problem", PROBLEMS)
def test_the_openapi_document_describes_each_types_answer_and_real_answers_conform(
    servers: dict[str, dict[str, Any]], problem: str
) -> None:
    server = servers[problem]
    base, name = server["base"], server["name"]
    doc = httpx.get(f"{base}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    answer, label = schemas["Answer"], schemas["Feedback"]["properties"]["label"]
    if problem == "regression":
        assert answer["properties"]["predictions"]["items"]["type"] == "number"
        assert label["type"] == "number" and "probabilities" not in answer["properties"]
    else:
        assert answer["properties"]["predictions"]["items"]["enum"] == CLASSES[problem]
        assert label["enum"] == CLASSES[problem]
        assert answer["properties"]["classes"]["const"] == CLASSES[problem]
    rows = caller_rows(3, seed=7)

    def conforms(path: str, method: str, status: int, body: Any) -> None:
        op = doc["paths"][path][method]["responses"][str(status)]
        schema = op["content"]["application/json"]["schema"] | {"components": doc["components"]}
        jsonschema.validate(body, schema)

    conforms(
        "/predict",
        "post",
        200,
        httpx.post(f"{base}/predict", json={"rows": rows}, headers=AUTH).json(),
    )
    request = {
        "id": "doc",
        "inputs": [
            {"name": c, "shape": [3], "datatype": t, "data": [r[c] for r in rows]}
            for c, t in COLUMNS.items()
        ],
    }
    infer = f"/v2/models/{name}/infer"
    body_schema = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    jsonschema.validate(
        request, body_schema["application/json"]["schema"] | {"components": doc["components"]}
    )
    answered = httpx.post(f"{base}{infer}", json=request, headers=AUTH)
    assert answered.status_code == 200, answered.text
    conforms("/v2/models/{name}/infer", "post", 200, answered.json())
    meta = httpx.get(f"{base}/v2/models/{name}").json()
    conforms("/v2/models/{name}", "get", 200, meta)
    refused = httpx.post(f"{base}{infer}", json={"inputs": "x"}, headers=AUTH)
    conforms("/v2/models/{name}/infer", "post", 400, refused.json())


@pytest.mark.parametrize("problem", PROBLEMS)
def test_the_release_smoke_test_passes_per_type_and_fails_on_another_models_answers(
    servers: dict[str, dict[str, Any]], problem: str
) -> None:
    server = servers[problem]
    batch = known_batch(server["folder"], server["name"], 3, server["sha256"])
    assert batch.problem == problem and len(batch.predictions) == 5
    check_answers(server["base"], batch, TOKEN)
    other = servers["multiclass" if problem == "binary" else "binary"]
    from mlops.release.smoke import SmokeTestFailed

    with pytest.raises(SmokeTestFailed):
        check_answers(other["base"], batch, TOKEN)
