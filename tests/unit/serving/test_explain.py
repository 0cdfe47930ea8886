"""``POST /explain`` on the model server, for every family the project ships and every problem
type it fits: each row's attributions add up, with the base value, to the answer /predict gives
the same row (turned into the explanation's space); the body is validated as /predict's, the
rows are limited, the token is required, and a model with no explainer gets a 501 saying why.
The app runs in process (Starlette's TestClient, lifespan included): no services."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.svm import SVR
from starlette.testclient import TestClient

from mlops.adapters.prediction_log import PredictionLog
from mlops.core.explanations import ADDITIVITY_TOLERANCE, baseline_of
from mlops.serving.app import ServerConfig, create_app
from mlops.serving.model import ServedModel, ServedProblem, load_model_folder
from tests.unit.serving.shipped_models import (
    SHIPPED,
    example,
    frame,
    records,
    served,
    shipped,
    target,
)
from tests.unit.serving.tiny_models import save_folder

pytestmark = pytest.mark.unit


@contextmanager
def client(model: ServedModel, tmp: Path, config: ServerConfig | None = None) -> Iterator[Any]:
    app = create_app(lambda: model, PredictionLog(str(tmp / "log")), config or ServerConfig())
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c


def callers_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Rows a server accepts: the required columns (x, shape) present, the others may be null."""
    rows = [r for r in records(frame(3 * count, seed)) if None not in (r["x"], r["shape"])]
    return rows[:count]


def as_space(body: dict[str, Any], space: str, problem: str) -> np.ndarray:
    """/predict's answers in the explanation's ``space``, one row of outputs per row."""
    if problem == "regression":
        return np.asarray(body["predictions"], dtype="float64").reshape(-1, 1)
    proba = np.asarray(body["probabilities"], dtype="float64")
    if problem == "binary":
        proba = proba[:, 1:]
    if space == "probability":
        return proba
    if space == "log_odds":
        return np.log(proba / (1 - proba))
    logits = np.log(proba)  # known up to a constant per row
    return logits - logits.mean(axis=1, keepdims=True)


@pytest.mark.parametrize(("family", "problem"), SHIPPED, ids=[f"{f}-{p}" for f, p in SHIPPED])
def test_explain_adds_up_to_what_predict_answers(family: str, problem: str, tmp_path: Path) -> None:
    pipeline = shipped(family, problem)
    model = dataclasses.replace(
        served(pipeline, problem),
        baseline=tuple(baseline_of(pipeline, frame(300, seed=0)) or ()),
        example=example(),
    )
    rows = callers_rows(12, seed=4)
    rows[0] |= {"color": "never seen", "n": None}  # unseen and missing, as callers send them
    with client(model.with_fast_path(example()), tmp_path) as c:
        answer = c.post("/predict", json={"rows": rows}).json()
        r = c.post("/explain", json={"rows": rows})
        assert r.status_code == 200, r.text
        body = r.json()
        one = c.post("/explain", json={"row": rows[0]}).json()
    outputs = body["outputs"]
    assert body["method"] in ("tree_shap", "linear") and len(body["explanations"]) == len(rows)
    got = np.array([[e["output_value"][o] for o in outputs] for e in body["explanations"]])
    want = as_space(answer, body["space"], problem)
    if body["space"] == "logit":
        got = got - got.mean(axis=1, keepdims=True)
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max())
    for e in body["explanations"]:
        for o in outputs:
            # every input column; the one the feature pipeline drops moves nothing
            assert set(e["attributions"][o]) == {"x", "n", "color", "shape", "unused"}
            assert e["attributions"][o]["unused"] == 0
            total = e["base_value"][o] + sum(e["attributions"][o].values())
            assert total == pytest.approx(e["output_value"][o], abs=ADDITIVITY_TOLERANCE)
    # a row alone is explained as in a batch
    first, alone = body["explanations"][0], one["explanations"][0]
    for o in outputs:
        assert alone["output_value"][o] == pytest.approx(first["output_value"][o], abs=1e-9)
        assert alone["attributions"][o] == pytest.approx(first["attributions"][o], abs=1e-9)


def test_explain_validates_limits_and_counts_as_predict_does(tmp_path: Path) -> None:
    model = served(shipped("random_forest", "binary"), "binary")
    rows = callers_rows(6, seed=1)
    config = ServerConfig(max_explain_rows=5, token="secret")
    with client(model, tmp_path, config) as c:
        auth = {"Authorization": "Bearer secret"}
        assert c.post("/explain", json={"rows": rows[:2]}).status_code == 401
        too_many = c.post("/explain", json={"rows": rows}, headers=auth)
        assert too_many.status_code == 413 and "limit of 5" in too_many.json()["error"]
        bad = c.post("/explain", json={"rows": [rows[0], {**rows[1], "x": "tall"}]}, headers=auth)
        assert bad.status_code == 422
        assert bad.json()["fields"][0]["field"].startswith("rows.1.x")
        assert c.post("/explain", json={"rows": rows[:5]}, headers=auth).status_code == 200
        metrics = c.get("/metrics").text
    assert 'route="/explain",status="200"' in metrics
    assert 'route="/explain",status="413"' in metrics
    assert "mlops_request_seconds_count" in metrics and 'route="/explain"' in metrics


def test_a_model_without_an_explainer_gets_a_501_saying_why(tmp_path: Path) -> None:
    X = frame(200, seed=0)
    prep = ColumnTransformer([("x", "passthrough", ["x"])])
    svr = Pipeline([("features", prep), ("model", SVR())]).fit(X.fillna(0), target(X, "regression"))
    model = ServedModel(
        "svr", 3, svr, served(svr, "regression").columns, ServedProblem("regression", "y")
    )
    with client(model, tmp_path) as c:
        row = callers_rows(1, seed=2)[0]
        r = c.post("/explain", json={"row": row})
        predicted = c.post("/predict", json={"row": row})
    assert r.status_code == 501
    assert r.json()["error"].startswith("svr v3: SVR: not a model shap's TreeExplainer reads")
    assert predicted.status_code == 200  # serving goes on


def test_a_saved_linear_model_is_explained_from_the_training_mean_it_was_saved_with(
    tmp_path: Path,
) -> None:
    meta = save_folder(tmp_path / "model", "binary", "tiny")
    model = load_model_folder(tmp_path / "model", "tiny", 1, meta["sha256"])
    assert model.baseline is not None and model.example
    explainer = model.explainer()
    assert explainer.method == "linear" and explainer.space == "log_odds"
