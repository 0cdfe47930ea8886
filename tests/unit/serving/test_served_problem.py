"""The server answers for each problem type exactly as the library reads the same model
(mlops.ml.problems), from the metadata training writes; old models answer as the binary
classifiers they were; a malformed declaration is refused naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.core.errors import MlopsError
from mlops.core.lineage import PROBLEM_METADATA
from mlops.ml import problems
from mlops.serving import model as served
from mlops.serving.model import LEGACY_BINARY, Column, ServedModel, served_problem
from tests.unit.serving.tiny_models import (
    CLASSES,
    COLUMNS,
    TARGET,
    features,
    fitted,
    problem_spec,
)

pytestmark = pytest.mark.unit


def test_the_servers_threshold_is_the_librarys() -> None:
    assert served.THRESHOLD == problems.THRESHOLD


@pytest.mark.parametrize("problem", ["binary", "multiclass", "regression"])
def test_answers_equal_the_librarys_reading_of_the_same_model(problem: str) -> None:
    pipeline, _, y = fitted(problem)
    spec = problem_spec(problem, y)
    model = ServedModel("m", 1, pipeline, COLUMNS, served_problem({PROBLEM_METADATA: spec}, "m"))
    rows = features(40, seed=9)
    answers = model.predict(rows)
    library = problems.Problem(problem, tuple(CLASSES[problem]), TARGET).predict(pipeline, rows)  # type: ignore[arg-type]
    if problem == "regression":
        assert answers.probabilities is None
        assert answers.predictions == pytest.approx(list(library.values), rel=0, abs=0)
        assert all(isinstance(v, float) for v in answers.predictions)
    else:
        assert answers.predictions == [CLASSES[problem][i] for i in library.values]
        assert answers.probabilities is not None and library.proba is not None
        assert np.array_equal(answers.probabilities, library.proba)
        assert len(set(answers.predictions)) > 1, "the rows are answered more than one class"


def test_a_class_absent_from_training_gets_a_column_of_zeros_in_its_place() -> None:
    """Fitted on labels 0 and 2 of three classes: classes_ is [0, 2], and the probabilities sit
    at the classes' positions, as mlops.ml.problems places them."""
    pipeline, X, y = fitted("multiclass")
    keep = y != 1
    pipeline.fit(X[keep], y[keep])
    model = ServedModel("m", 1, pipeline, COLUMNS, served_problem({PROBLEM_METADATA: {
        "type": "multiclass", "target": TARGET, "classes": CLASSES["multiclass"]}}, "m"))  # fmt: skip
    answers = model.predict(features(30, seed=4))
    assert answers.probabilities is not None and answers.probabilities.shape == (30, 3)
    assert (answers.probabilities[:, 1] == 0).all()
    assert set(answers.predictions) <= {"low", "high"}
    library = problems.Problem("multiclass", tuple(CLASSES["multiclass"]), TARGET)
    assert np.array_equal(answers.probabilities, library.predict(pipeline, features(30, 4)).proba)


class Fixed:
    """An estimator answering fixed probability rows (no classes_)."""

    def __init__(self, proba: list[list[float]]) -> None:
        self.proba = np.array(proba)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.tile(self.proba, (len(X), 1))[: len(X)]


def test_binary_is_positive_at_the_threshold_and_an_old_model_answers_the_classes_0_and_1() -> None:
    model = ServedModel("m", 1, Fixed([[0.5, 0.5]]), [Column("a", "long", True)])
    assert model.problem == LEGACY_BINARY
    answers = model.predict(pd.DataFrame({"a": [1, 2]}))
    assert answers.predictions == ["1", "1"]
    assert served_problem({"other": 1}, "m") == LEGACY_BINARY
    assert served_problem(None, "m") == LEGACY_BINARY


def test_answers_that_do_not_fit_the_classes_are_refused() -> None:
    model = ServedModel("m", 1, Fixed([[0.2, 0.3, 0.5]]), [Column("a", "long", True)])
    with pytest.raises(MlopsError, match=r"3 probability columns for the 2 classes \['0', '1'\]"):
        model.predict(pd.DataFrame({"a": [1]}))
    labelled = Fixed([[0.4, 0.6]])
    labelled.classes_ = np.array(["no", "yes"])  # type: ignore[attr-defined]
    model = ServedModel("m", 1, labelled, [Column("a", "long", True)])
    with pytest.raises(MlopsError, match=r"classes_ \['no', 'yes'\] are not label indexes 0..1"):
        model.predict(pd.DataFrame({"a": [1]}))


def test_non_finite_answers_are_found_per_row() -> None:
    assert served.Answers([1.0, float("inf"), float("nan")]).non_finite() == [1, 2]
    proba = np.array([[0.5, 0.5], [np.nan, 1.0]])
    assert served.Answers(["a", "b"], proba).non_finite() == [1]


def test_training_metadata_round_trips_into_the_servers_problem() -> None:
    _, _, y = fitted("regression")
    problem = served_problem({PROBLEM_METADATA: problem_spec("regression", y)}, "m")
    assert problem.kind == "regression" and problem.target == TARGET and problem.classes == ()
    bounds = problem.value_buckets
    assert 1 <= len(bounds) <= 10 and list(bounds) == sorted(set(bounds))
    assert bounds[-1] == pytest.approx(float(y.max()))
    assert bounds[4] == pytest.approx(float(np.quantile(y, 0.5)))
    _, _, labels = fitted("binary")
    binary = served_problem({PROBLEM_METADATA: problem_spec("binary", labels)}, "m")
    assert binary.classes == ("no", "yes") and binary.value_buckets == ()


def test_value_buckets_merge_ties_of_a_target_with_few_values() -> None:
    y = pd.Series([1.0] * 50 + [2.0] * 50 + [7.0])
    spec = problem_spec("regression", y)
    assert spec["value_buckets"] == [1.0, 2.0, 7.0]


GOOD: dict[str, Any] = {"type": "multiclass", "target": TARGET, "classes": ["a", "b", "c"]}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"type": "ranking"}, ".type is 'ranking'"),
        ({"target": ""}, ".target is ''"),
        ({"classes": [0, 1, 2]}, ".classes is [0, 1, 2]: a list of class names"),
        ({"classes": ["a", "a"]}, "names a class twice"),
        ({"classes": ["a"]}, "a multiclass model has two or more"),
        ({"type": "binary"}, "a binary classifier has two classes"),
        ({"type": "regression"}, "a regression has no classes"),
        ({"type": "regression", "classes": [], "value_buckets": [1, 1]}, ".value_buckets is"),
        ({"type": "regression", "classes": [], "value_buckets": [1, "2"]}, ".value_buckets is"),
        ({"type": "regression", "classes": [], "value_buckets": [float("inf")]}, "increasing"),
        ({"type": "regression", "classes": [], "value_buckets": list(range(11))}, "up to 10"),
    ],
)
def test_a_malformed_declaration_is_refused_naming_the_field(
    change: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(MlopsError, match="m v1: MLmodel metadata mlops_problem") as caught:
        served_problem({PROBLEM_METADATA: GOOD | change}, "m v1")
    assert fragment in str(caught.value)


def test_a_missing_value_sent_as_null_is_answered_as_training_imputes_it() -> None:
    """JSON null reaches the server as None; training saw NaN. Both must be imputed alike (a
    None category was one-hot encoded as unknown, and a row whose only numeric value was None
    made an object column the median imputer refused)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from mlops.core.config import FeatureConfig
    from mlops.ml.features import build_feature_pipeline

    X = features(400)
    X.loc[::7, "color"] = np.nan
    X.loc[::5, "x"] = np.nan
    y = (X["color"].fillna("red") == "red").astype(int) ^ (X["n"] > 40).astype(int)
    pipe = Pipeline(
        [
            (
                "features",
                build_feature_pipeline(FeatureConfig(numeric=("x", "n"), categorical=("color",))),
            ),
            ("model", LogisticRegression()),
        ]
    ).fit(X[["x", "n", "color"]], y)
    columns = [
        Column("x", "double", False),
        Column("n", "long", True),
        Column("color", "string", False),
    ]
    model = ServedModel("m", 1, pipe, columns, served.ServedProblem("binary", "y", ("no", "yes")))
    sent = pd.DataFrame([{"x": None, "n": 45, "color": None}], columns=["x", "n", "color"])
    trained_on = pd.DataFrame({"x": [np.nan], "n": [45], "color": [np.nan]})
    expected = pipe.predict_proba(trained_on)
    assert np.allclose(model.predict(sent).probabilities, expected)
