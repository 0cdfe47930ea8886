"""The compiled inference path answers as the registered model does, for every family the project
ships and every problem type, on rows with missing values and unseen and infrequent categories;
a pipeline it does not recognise, and a compiled parameter that is wrong, leave the model on its
registered path with the reason; the smoke test's rows and comparison hold the served answers to
the registered ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler

from mlops.core.config import ModelConfig
from mlops.ml.training import build_pipeline
from mlops.serving.fast_path import (
    TOLERANCE,
    UNSEEN,
    NumericBlock,
    OneHotBlock,
    _Scale,
    compile_pipeline,
    disagreement,
)
from mlops.serving.model import Column, ServedModel, ServedProblem, load_model_folder
from tests.unit.serving.shipped_models import (
    CLASSES,
    COLUMNS,
    FEATURES,
    SHIPPED,
    example,
    frame,
    records,
    served,
    shipped,
    target,
)
from tests.unit.serving.tiny_models import fitted, save_model_folder

pytestmark = pytest.mark.unit


def assert_same_answers(model: ServedModel, rows: list[dict[str, Any]]) -> None:
    """The compiled path's Answers equal the registered model's: the same classes, probabilities
    or values within the tolerance, and the same form (types, dtype, shape)."""
    fast = model.predict_records(rows)
    slow = model.predict(pd.DataFrame(rows, columns=[c.name for c in COLUMNS]))
    assert [type(p) for p in fast.predictions] == [type(p) for p in slow.predictions]
    if slow.probabilities is None:
        assert fast.probabilities is None
        assert np.allclose(fast.predictions, slow.predictions, rtol=TOLERANCE, atol=TOLERANCE)
    else:
        assert fast.predictions == slow.predictions
        assert fast.probabilities is not None
        assert fast.probabilities.dtype == slow.probabilities.dtype == np.float64
        assert fast.probabilities.shape == slow.probabilities.shape
        assert np.allclose(fast.probabilities, slow.probabilities, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.parametrize(("family", "problem"), SHIPPED, ids=[f"{f}-{p}" for f, p in SHIPPED])
def test_the_compiled_path_answers_as_the_registered_model(family: str, problem: str) -> None:
    model = served(shipped(family, problem), problem).with_fast_path(example())
    assert model.path.name == "compiled", model.path.reason
    assert model.path.max_difference is not None and model.path.max_difference <= TOLERANCE
    fresh = records(frame(60, seed=11))
    fresh[0] |= {"color": UNSEEN, "shape": "hexagon"}  # unseen in both text columns
    fresh[1] |= {"color": "teal", "x": None, "n": None, "shape": None}  # infrequent, all missing
    fresh[2] |= {"color": "violet"}
    assert_same_answers(model, fresh)
    assert_same_answers(model, fresh[:1])  # one row, as most requests are
    assert_same_answers(model, model.probe_rows(example()))


def test_the_encoder_is_compiled_with_its_infrequent_group_and_unknown_values_as_zeros() -> None:
    compiled = compile_pipeline(shipped("logistic_regression", "binary"), COLUMNS)
    numeric, one_hot = compiled.blocks
    assert isinstance(numeric, NumericBlock) and numeric.columns == ("x", "n")
    assert isinstance(one_hot, OneHotBlock) and one_hot.columns == ("color", "shape")
    colors = one_hot.lookup[0]
    # frequent categories in order, then one output for the infrequent group
    assert [colors[c] for c in ("blue", "green", "red")] == [0, 1, 2]
    assert colors["teal"] == colors["violet"] == 3 and one_hot.widths[0] == 4
    assert one_hot.unknown == (None, None)  # handle_unknown="ignore": all zeros
    row = {"x": 0.0, "n": 1, "color": "mauve", "shape": "round", "unused": None}
    assert one_hot.transform([row])[0, :4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert compiled.width == compiled.final.n_features_in_


def test_a_column_missing_in_every_row_is_imputed_as_the_registered_path_does() -> None:
    model = served(shipped("hist_gradient_boosting", "binary"), "binary").with_fast_path([])
    assert model.path.name == "compiled", model.path.reason
    empty = [dict.fromkeys(c.name for c in COLUMNS)] * 3
    assert_same_answers(model, empty)


def factory_pipeline() -> Pipeline:
    """A user's whole Pipeline on the raw columns."""
    X = frame(200, seed=0)[["x", "n"]].fillna(0)
    return Pipeline([("model", LogisticRegression())]).fit(X, target(frame(200, 0), "binary"))


def pandas_output() -> Pipeline:
    """The shipped features set to output a DataFrame: the estimator knows the feature names."""
    config = ModelConfig(family="logistic_regression")
    X = frame(200, seed=0)
    pipeline = build_pipeline(FEATURES, config, "binary").set_output(transform="pandas")
    return pipeline.fit(X, target(X, "binary"))


def with_min_max() -> Pipeline:
    X = frame(200, seed=0)
    prep = ColumnTransformer([("numeric", MinMaxScaler(), ["x", "n"])])
    return Pipeline([("features", prep), ("model", LogisticRegression())]).fit(
        X.fillna(0), target(X, "binary")
    )


@pytest.mark.parametrize(
    ("pipeline", "reason"),
    [
        (lambda: fitted("binary")[0], "'cat': a OneHotEncoder with sparse output"),
        (factory_pipeline, "steps are model (LogisticRegression): compiled is a ColumnTransformer"),
        (pandas_output, "LogisticRegression was fitted with feature names and wants a DataFrame"),
        (with_min_max, "holds a MinMaxScaler, which is not compiled"),
        (lambda: LogisticRegression(), "not a scikit-learn Pipeline"),
    ],
    ids=["sparse", "factory-pipeline", "feature-names", "unknown-transformer", "no-pipeline"],
)
def test_a_pipeline_the_compiler_does_not_recognise_is_served_by_the_registered_path(
    pipeline: Any, reason: str
) -> None:
    model = served(pipeline(), "binary").with_fast_path(example())
    assert model.path.name == "registered" and model.compiled is None
    assert reason in model.path.reason, model.path.reason
    assert model.path.max_difference is None


def test_the_tiny_passthrough_model_still_answers_through_predict_records() -> None:
    pipeline, X, _ = fitted("binary")
    model = ServedModel("m", 1, pipeline, [
        Column("x", "double", True), Column("n", "long", True),
        Column("color", "string", True), Column("flag", "boolean", True)],
        ServedProblem("binary", "y", ("no", "yes"))).with_fast_path([])  # fmt: skip
    assert model.path.name == "registered"
    rows = X.head(4).to_dict("records")
    assert model.predict_records(rows).predictions == model.predict(X.head(4)).predictions


def corrupt_scale(block: Any) -> Any:
    if not isinstance(block, NumericBlock):
        return block
    impute, scale = block.steps
    assert isinstance(scale, _Scale) and scale.mean is not None
    moved = dataclasses.replace(scale, mean=scale.mean + 1e-6)
    return dataclasses.replace(block, steps=(impute, moved))


def corrupt_lookup(block: Any) -> Any:
    if not isinstance(block, OneHotBlock):
        return block
    colors = dict(block.lookup[0])
    colors["red"], colors["green"] = colors["green"], colors["red"]
    return dataclasses.replace(block, lookup=(colors, *block.lookup[1:]))


@pytest.mark.parametrize("corrupt", [corrupt_scale, corrupt_lookup], ids=["mean", "category"])
def test_a_corrupted_compiled_parameter_is_caught_at_load_and_the_registered_path_serves(
    corrupt: Any,
) -> None:
    pipeline = shipped("logistic_regression", "multiclass")
    compiled = compile_pipeline(pipeline, COLUMNS)
    broken = dataclasses.replace(compiled, blocks=tuple(corrupt(b) for b in compiled.blocks))
    model = served(pipeline, "multiclass").with_fast_path(example(), compiled=broken)
    assert model.path.name == "registered" and model.compiled is None
    assert "the compiled path disagrees on" in model.path.reason, model.path.reason
    assert model.path.max_difference is not None and model.path.max_difference > TOLERANCE


def test_disagreement_names_the_first_row_and_class_and_allows_the_tolerance() -> None:
    proba = np.array([[0.25, 0.75], [0.5, 0.5]])
    nudged = proba * (1 + TOLERANCE / 2)
    same = disagreement((["yes", "no"], proba), (["yes", "no"], nudged), ("no", "yes"))
    assert same.agrees and 0 < same.max_difference <= TOLERANCE
    off = disagreement((["yes", "no"], proba), (["yes", "yes"], proba), ("no", "yes"))
    assert off.first == "row 1: a different class" and off.max_difference == 0
    values = np.array([1.0, 2.0])
    far = disagreement(([1.0, 2.0], values), ([1.0, 2.1], np.array([1.0, 2.1])))
    assert not far.agrees and far.first is not None and far.first.startswith("row 1: the value")


def test_probe_rows_for_the_smoke_test_leave_required_columns_filled_and_keep_every_column() -> (
    None
):
    model = served(shipped("logistic_regression", "binary"), "binary").with_fast_path(example())
    rows = model.probe_rows(example(), servable=True, limit=14)
    assert len(rows) == 14 and rows[:5] == example()
    required = [c.name for c in COLUMNS if c.required]
    assert all(r[c] is not None for r in rows for c in required)
    assert any(r["color"] == UNSEEN for r in rows) and any(r["shape"] == UNSEEN for r in rows)
    everything = model.probe_rows(example())
    assert {r["color"] for r in everything} >= {"red", "green", "blue", "teal", "violet"}
    assert any(r["x"] is None for r in everything)


def save_shipped_folder(folder: Path) -> str:
    """The shipped pipeline saved as training logs it; returns the folder's checksum."""
    spec = {"type": "binary", "target": "y", "classes": list(CLASSES["binary"])}
    pipeline = shipped("logistic_regression", "binary")
    return save_model_folder(folder, pipeline, frame(50, seed=5), spec)


def test_the_smoke_test_checks_the_probe_rows_and_names_a_row_that_differs(tmp_path: Path) -> None:
    """The release's known batch holds the probe rows and the registered model's answers; the
    compiled path's answers (what the server sends) pass, a changed probability is named."""
    from mlops.release.smoke import answer_differences, known_batch

    folder = tmp_path / "model"
    sha256 = save_shipped_folder(folder)
    model = load_model_folder(folder, "m", 1, sha256)
    assert model.path.name == "compiled", model.path.reason
    batch = known_batch(folder, "m", 1, sha256)
    assert len(batch.rows) > 5 and any(UNSEEN in r.values() for r in batch.rows)
    answers = model.predict_records(batch.rows)
    assert answers.probabilities is not None
    body = {"problem": "binary", "predictions": answers.predictions,
            "classes": list(CLASSES["binary"]), "probabilities": answers.probabilities.tolist()}  # fmt: skip
    assert answer_differences(body, batch) == []
    body["probabilities"][6] = [p + 1e-6 for p in body["probabilities"][6]]
    assert any(d.startswith("row 6: probabilities") for d in answer_differences(body, batch))


def test_metrics_say_which_path_serves_and_why() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mlops.serving.app import Metrics

    model = served(fitted("binary")[0], "binary").with_fast_path([])
    metrics = Metrics("m", "1")
    metrics.for_path(model.path)
    text = generate_latest(metrics.registry).decode()
    samples = [
        s for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "mlops_inference_path"
    ]  # fmt: skip
    assert [(s.labels, s.value) for s in samples] == [
        ({"model": "m", "version": "1", "path": "registered", "reason": model.path.reason}, 1.0)
    ]
