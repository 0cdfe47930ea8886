"""The model server on loopback against the real MLflow server: answers, refusals, metrics, log."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import uvicorn

from flows.training import training
from mlops.settings import Settings
from mlops.stack import free_port
from serving.app import ServerConfig, create_app
from serving.model import ModelIntegrityError, load_served_model
from serving.prediction_log import PredictionLog, read_labelled, read_log
from tasks.smoke import wait_until_ready
from tasks.tracking import tracking_server
from tests.helpers import adult_frame, make_project

pytestmark = pytest.mark.integration

INTS = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]


@pytest.fixture(scope="module")
def registered(local_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    root = tmp_path_factory.mktemp("serving-project")
    name = f"serving-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(root, adult_frame(3000), model_name=name)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLOPS_PROJECT_DIR", str(root))
    try:
        version = training(pipeline=str(pipeline), trigger="test").version
    finally:
        mp.undo()
    return name, version


def _rows(n: int = 20) -> list[dict[str, Any]]:
    frame = adult_frame(n).drop(columns=["income"]).replace("?", None)
    frame[INTS] = frame[INTS].astype(int)
    return [{k: (None if v is None else v) for k, v in r.items()} for r in frame.to_dict("records")]


@pytest.fixture(scope="module")
def server(
    local_stack: Settings, registered: tuple[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    name, version = registered
    work = tmp_path_factory.mktemp("server")
    log = PredictionLog(str(work / "log"), batch_rows=10_000, max_age_seconds=0.5)
    app = create_app(
        lambda: load_served_model(str(local_stack.mlflow_tracking_uri), name, str(version), work),
        log,
        ServerConfig(max_body_bytes=200_000, max_batch_rows=500),
        model_name=name,
        model_ref=str(version),
    )
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base, 60)
    yield {"base": base, "log": str(work / "log"), "name": name, "version": version}
    uv.should_exit = True
    thread.join(timeout=10)


def test_answers_equal_the_models_own_predictions(
    local_stack: Settings, server: dict[str, Any]
) -> None:
    rows = _rows(50)
    r = httpx.post(f"{server['base']}/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    with tracking_server(str(local_stack.mlflow_tracking_uri)):
        model = mlflow.sklearn.load_model(f"models:/{server['name']}/{server['version']}")
    expected = model.predict_proba(pd.DataFrame(rows))[:, 1]
    assert np.allclose(body["probabilities"], expected, rtol=0, atol=1e-12)
    assert body["predictions"] == [int(p >= 0.5) for p in expected]
    assert body["model"] == {"name": server["name"], "version": server["version"]}
    assert len(body["request_id"]) == 32
    one = httpx.post(f"{server['base']}/predict", json={"row": rows[0]}).json()
    assert one["probabilities"] == pytest.approx([expected[0]], abs=1e-12)


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"row": {"age": NaN}}', 400, "NaN is not a number"),
        (b'{"rows": []}', 422, "the batch is empty"),
        (b'{"rows": {"age": 1}}', 422, "must be a list"),
        (b'{"data": []}', 422, 'the body must be {"row"'),
        (b"[1, 2]", 422, 'the body must be {"row"'),
    ],
)
def test_malformed_bodies_get_a_4xx_naming_the_problem(
    server: dict[str, Any], payload: bytes, status: int, fragment: str
) -> None:
    r = httpx.post(
        f"{server['base']}/predict", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_bad_rows_are_refused_with_the_field_named(server: dict[str, Any]) -> None:
    good = _rows(1)[0]
    cases = [
        ({k: v for k, v in good.items() if k != "age"}, "rows.1.age", "Field required"),
        (good | {"shoe_size": 42}, "rows.1.shoe_size", "Extra inputs"),
        (good | {"age": "forty"}, "rows.1.age", "valid integer"),
        (good | {"age": 40.5}, "rows.1.age", "valid integer"),
        (good | {"sex": 1}, "rows.1.sex", "valid string"),
    ]
    for bad, field, message in cases:
        r = httpx.post(f"{server['base']}/predict", json={"rows": [good, bad]})
        assert r.status_code == 422, (bad, r.text)
        fields = r.json()["fields"]
        assert fields[0]["field"] == field and message in fields[0]["message"], fields


def test_oversized_payloads_get_413(server: dict[str, Any]) -> None:
    rows = _rows(1) * 501
    r = httpx.post(f"{server['base']}/predict", json={"rows": rows})
    assert r.status_code == 413 and "exceed" in r.json()["error"]
    big = b'{"rows": [' + b"1," * 150_000 + b"1]}"
    assert httpx.post(f"{server['base']}/predict", content=big).status_code == 413


def test_health_ready_and_metrics(server: dict[str, Any]) -> None:
    assert httpx.get(f"{server['base']}/health").json()["status"] == "ok"
    assert httpx.get(f"{server['base']}/ready").json()["model"]["version"] == server["version"]
    httpx.post(f"{server['base']}/predict", json={"rows": _rows(3)})
    httpx.post(f"{server['base']}/predict", content=b"{oops")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(f"{server['base']}/metrics").text)
        for s in family.samples
    }
    model = (("model", server["name"]), ("version", str(server["version"])))

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted({**dict(model), **labels}.items()))), 0.0)

    assert value("mlops_requests_total", route="/predict", status="200") >= 1
    assert value("mlops_requests_total", route="/predict", status="400") >= 1
    assert value("mlops_request_errors_total", route="/predict", kind="malformed_json") >= 1
    assert value("mlops_request_seconds_count", route="/predict") >= 2
    assert value("mlops_model_info") == 1
    assert (
        value("mlops_predictions_total", label="0") + value("mlops_predictions_total", label="1")
        >= 3
    )
    assert value("mlops_prediction_probability_count") >= 3


def test_only_valid_rows_reach_the_log_and_labels_join_by_request_id(
    server: dict[str, Any],
) -> None:
    marker = 77_777_777  # an fnlwgt no other test sends
    rows = _rows(2)
    rows[0]["fnlwgt"] = marker
    ok = httpx.post(f"{server['base']}/predict", json={"rows": rows}).json()
    bad = dict(rows[1], fnlwgt=marker + 1, age="old")
    assert httpx.post(f"{server['base']}/predict", json={"rows": [bad]}).status_code == 422
    assert (
        httpx.post(
            f"{server['base']}/feedback", json={"request_id": ok["request_id"], "label": 1}
        ).status_code
        == 202
    )
    assert (
        httpx.post(
            f"{server['base']}/feedback", json={"request_id": "nope", "label": 1}
        ).status_code
        == 422
    )
    time.sleep(1.5)  # the log flushes every 0.5 s
    log = read_log(server["log"])
    assert (log["fnlwgt"] == marker).sum() == 1
    assert not (log["fnlwgt"] == marker + 1).any(), "a refused row must not be logged"
    mine = read_labelled(server["log"]).query("request_id == @ok['request_id']")
    assert len(mine) == 2 and set(mine["label"]) == {1}
    assert math.isclose(
        float(mine.loc[mine["row"] == 0, "probability"].iloc[0]), ok["probabilities"][0]
    )


def test_a_tampered_artifact_is_refused(
    local_stack: Settings, registered: tuple[str, int], tmp_path: Path
) -> None:
    name, version = registered
    uri = str(local_stack.mlflow_tracking_uri)
    assert load_served_model(uri, name, str(version), tmp_path / "ok").version == version
    from mlflow import MlflowClient

    mv = MlflowClient(uri, registry_uri=uri).get_model_version(name, str(version))
    model_id = mv.source.rsplit("/", 1)[-1]
    stored = [
        p
        for p in (local_stack.state_dir / "mlflow" / "artifacts").rglob("*")
        if p.is_file() and model_id in str(p) and p.name == "MLmodel"
    ]
    assert stored, "the model's files in the MLflow artifact store"
    stored[0].write_text(stored[0].read_text() + "\n# tampered\n")
    with pytest.raises(ModelIntegrityError, match="refusing to serve it"):
        load_served_model(uri, name, str(version), tmp_path / "tampered")


def test_fuzzed_bodies_never_get_a_5xx(server: dict[str, Any]) -> None:
    """Property: whatever JSON arrives (right, wrong or strange columns and values), no 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = _rows(1)[0]
    values = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.lists(st.integers(), max_size=3),
        st.sampled_from(list(good.values())),
    )
    keys = st.one_of(st.sampled_from(list(good)), st.text(max_size=12))
    row = st.one_of(
        # the good row with some values replaced by anything
        st.fixed_dictionaries({k: st.one_of(st.just(v), values) for k, v in good.items()}),
        st.dictionaries(keys, values, max_size=16),
        values,
    )
    body = st.one_of(
        st.fixed_dictionaries({"rows": st.lists(row, max_size=5)}),
        st.fixed_dictionaries({"row": row}),
        st.dictionaries(st.text(max_size=5), values, max_size=3),
        values,
    )
    client = httpx.Client(base_url=server["base"])

    @settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(body)
    def no_server_error(payload: Any) -> None:
        r = client.post("/predict", json=payload)
        assert r.status_code < 500, (payload, r.text)

    no_server_error()
    assert httpx.get(f"{server['base']}/health").json()["status"] == "ok", "still serving"
