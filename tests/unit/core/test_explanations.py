"""Per-row attributions (mlops.core.explanations) for every family the project ships and every
problem type it fits: one number per input column and output, adding up with the base value to
the model's own output (log-odds, class scores, probability or value, computed here from the
estimator independently of the explainer); and what cannot be explained says why."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures
from sklearn.svm import SVC

from mlops.core.explanations import (
    ADDITIVITY_TOLERANCE,
    NotExplainable,
    baseline_of,
    explainer_for,
)
from tests.unit.serving.shipped_models import CLASSES, FEATURES, SHIPPED, frame, shipped, target

pytestmark = pytest.mark.unit

INPUTS = list(FEATURES.columns)


def raw_output(model: Pipeline, X: pd.DataFrame, problem: str, space: str) -> np.ndarray:
    """The model's output in ``space``, from its own answers: what attributions must add up to."""
    if problem == "regression":
        return np.asarray(model.predict(X), dtype="float64").reshape(-1, 1)
    proba = np.asarray(model.predict_proba(X), dtype="float64")
    if space == "probability":
        return proba[:, 1:] if problem == "binary" else proba
    if space == "log_odds":
        p = np.clip(proba[:, 1:], 1e-12, 1 - 1e-12)
        return np.log(p / (1 - p))
    # logits are known up to a constant per row: compare them centred
    return np.log(np.clip(proba, 1e-300, None))


def explain(family: str, problem: str) -> tuple[Pipeline, Any, pd.DataFrame]:
    model = shipped(family, problem)
    train = frame(300, seed=0)
    explainer = explainer_for(
        model, INPUTS, problem, CLASSES[problem], frame(20, seed=5), baseline_of(model, train)
    )
    return model, explainer, frame(80, seed=9)


@pytest.mark.parametrize(("family", "problem"), SHIPPED, ids=[f"{f}-{p}" for f, p in SHIPPED])
def test_attributions_and_the_base_add_up_to_the_models_output(family: str, problem: str) -> None:
    model, explainer, rows = explain(family, problem)
    got = explainer.explain(rows)
    assert got.features == tuple(INPUTS)
    want_outputs = {
        "binary": ("yes",),
        "multiclass": CLASSES["multiclass"],
        "regression": ("value",),
    }
    assert got.outputs == tuple(want_outputs[problem])
    assert got.values.shape == (80, len(INPUTS), len(got.outputs))
    assert got.method == (
        "linear" if family in ("logistic_regression", "linear_regression") else "tree_shap"
    )
    want = raw_output(model, rows[INPUTS], problem, got.space)
    totals = got.totals()
    if got.space == "logit":
        totals = totals - totals.mean(axis=1, keepdims=True)
        want = want - want.mean(axis=1, keepdims=True)
    assert np.abs(totals - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), got.space
    # the attributions say something: x drives the target, so it moves the answers most
    influence = got.mean_abs()
    assert max(influence, key=influence.__getitem__) == "x", influence


def test_a_forest_is_explained_in_probabilities_and_a_boosted_model_in_log_odds() -> None:
    _, forest, rows = explain("random_forest", "binary")
    _, boosted, _ = explain("hist_gradient_boosting", "binary")
    assert forest.space == "probability" and boosted.space == "log_odds"
    assert 0 <= forest.explain(rows).base[0] <= 1


def test_one_hot_columns_are_given_back_to_their_categorical_column() -> None:
    _, explainer, rows = explain("logistic_regression", "binary")
    got = explainer.explain(rows)
    # a linear model's attribution of a column is its coefficients times the row's distance from
    # the mean: a row of the same colour as another gets the same colour attribution
    color = INPUTS.index("color")
    same = rows.index[rows["color"] == rows["color"].iloc[0]]
    assert np.allclose(got.values[same, color, 0], got.values[same[0], color, 0])
    record = got.records()[0]
    assert set(record["attributions"]["yes"]) == set(INPUTS)
    total = record["base_value"]["yes"] + sum(record["attributions"]["yes"].values())
    assert total == pytest.approx(record["output_value"]["yes"])


def test_a_linear_model_without_its_training_mean_is_not_explained() -> None:
    model = shipped("logistic_regression", "binary")
    with pytest.raises(NotExplainable, match="mean training row"):
        explainer_for(model, INPUTS, "binary", CLASSES["binary"], frame(5, seed=1), None)


def test_an_estimator_shap_cannot_read_is_not_explained_and_says_which() -> None:
    X = frame(200, seed=0)
    prep = ColumnTransformer([("n", "passthrough", ["x"])])
    model = Pipeline([("features", prep), ("model", SVC(probability=True))])
    model.fit(X.fillna(0), target(X, "binary"))
    with pytest.raises(NotExplainable, match="SVC"):
        explainer_for(model, ["x"], "binary", CLASSES["binary"], X.fillna(0).head(5))


def test_a_transformer_that_mixes_columns_is_not_explained() -> None:
    X = frame(200, seed=0)[["x", "n"]].fillna(0)
    prep = ColumnTransformer([("poly", PolynomialFeatures(2), ["x", "n"])])
    model = Pipeline([("features", prep), ("model", LogisticRegression(max_iter=2000))])
    model.fit(X, target(frame(200, seed=0), "binary"))
    with pytest.raises(NotExplainable, match="which comes from which"):
        explainer_for(model, ["x", "n"], "binary", CLASSES["binary"], X.head(5), [0.0] * 6)


class Tempered(LogisticRegression):
    """A logistic regression whose probabilities are tempered after the fact: its coefficients
    no longer say what it answers."""

    def predict_proba(self, X: Any) -> np.ndarray:
        logits = self.decision_function(X) / 3
        p = 1 / (1 + np.exp(-logits))
        return np.column_stack([1 - p, p])


def test_attributions_that_do_not_add_up_to_the_answers_are_refused() -> None:
    X = frame(200, seed=0)[["x", "n"]].fillna(0)
    prep = ColumnTransformer([("numbers", "passthrough", ["x", "n"])])
    model = Pipeline([("features", prep), ("model", Tempered())])
    model.fit(X, target(frame(200, seed=0), "binary"))
    baseline = baseline_of(model, X)
    with pytest.raises(NotExplainable, match="do not add up"):
        explainer_for(model, ["x", "n"], "binary", CLASSES["binary"], X.head(5), baseline)
    # the same model untempered is explained
    plain = Pipeline([("features", prep), ("model", LogisticRegression(max_iter=2000))]).fit(
        X, target(frame(200, seed=0), "binary")
    )
    explainer = explainer_for(plain, ["x", "n"], "binary", CLASSES["binary"], X.head(5), baseline)
    assert explainer.space == "log_odds"
    assert np.abs(explainer.explain(X).totals()[:, 0] - plain.decision_function(X)).max() <= (
        ADDITIVITY_TOLERANCE
    )
