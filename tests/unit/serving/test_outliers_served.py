"""Outlier scores at serving: a model saved with its outlier detector (as training saves it)
answers each row's score, flag and column beside its prediction, ``/metrics`` counts the flagged
rows by column over the scored ones, the release's synthetic requests are not counted, and a
model saved without a detector answers as before. In process (Starlette's TestClient)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlops.adapters.prediction_log import SYNTHETIC_HEADER
from mlops.serving.model import load_model_folder
from tests.unit.serving.test_explain import client
from tests.unit.serving.tiny_models import features, save_folder

pytestmark = pytest.mark.unit


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted((k, v) for k, v in s.labels.items() if k in ("column",))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_predict_answers_each_rows_outlier_score_and_metrics_count_the_flagged(
    tmp_path: Path,
) -> None:
    meta = save_folder(tmp_path / "model", "binary", "tiny")
    model = load_model_folder(tmp_path / "model", "tiny", 1, meta["sha256"])
    assert model.outliers is not None
    rows = features(5, seed=9).to_dict("records")
    rows[1]["x"] = 80.0  # the training's x is normal(0, 1)
    rows[3]["color"] = "ultraviolet"  # never seen
    with client(model, tmp_path) as c:
        body = c.post("/predict", json={"rows": rows}).json()
        outliers = body["outliers"]
        assert [o["outlier"] for o in outliers] == [False, True, False, True, False], outliers
        assert outliers[1]["column"] == "x" and outliers[3]["column"] == "color"
        assert outliers[1]["score"] > 50 and all(o["score"] >= 0 for o in outliers)
        assert len(body["predictions"]) == 5  # the answers are given all the same
        one = c.post("/predict", json={"row": rows[1]}).json()
        assert one["outliers"] == [outliers[1]]
        # the release's smoke test is answered the same, and not counted
        smoke = c.post("/predict", json={"row": rows[3]}, headers={SYNTHETIC_HEADER: "smoke"})
        assert smoke.json()["outliers"] == [outliers[3]]
        text = c.get("/metrics").text
    flagged = _samples(text, "mlops_outlier_rows_total")
    assert flagged == {(("column", "x"),): 2.0, (("column", "color"),): 1.0}
    assert _samples(text, "mlops_outlier_scored_rows_total") == {(): 6.0}
    spec = c.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    assert "Outlier" in spec and "outliers" in spec["Answer"]["properties"]


def test_a_model_saved_without_a_detector_answers_without_outlier_scores(tmp_path: Path) -> None:
    meta = save_folder(tmp_path / "model", "regression", "tiny")
    model = dataclasses.replace(
        load_model_folder(tmp_path / "model", "tiny", 1, meta["sha256"]), outliers=None
    )
    with client(model, tmp_path) as c:
        body = c.post("/predict", json={"row": features(1).to_dict("records")[0]}).json()
    assert "outliers" not in body and len(body["predictions"]) == 1
