"""Problem types on tiny inputs: labels in and out, a model's answers read per type, scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlops.core.config import TargetConfig
from mlops.core.errors import MlopsError
from mlops.ml.problems import Predictions, Problem, problem_for

pytestmark = pytest.mark.unit

BINARY = Problem("binary", ("<=50K", ">50K"), "income")
SPECIES = Problem("multiclass", ("adelie", "chinstrap", "gentoo"), "species")
PRICE = Problem("regression", (), "price")


def test_a_classifier_target_encodes_to_class_positions_and_decodes_back() -> None:
    y = pd.Series([">50K", "<=50K", ">50K"], name="income")
    codes = BINARY.encode(y)
    assert codes.tolist() == [1, 0, 1] and codes.dtype == "int64" and codes.name == "income"
    assert BINARY.decode(codes.to_numpy()) == y.tolist()
    species = pd.Series(["gentoo", "adelie", "chinstrap", "gentoo"], name="species")
    assert SPECIES.encode(species).tolist() == [2, 0, 1, 2]
    assert SPECIES.decode(np.array([2, 0, 1])) == ["gentoo", "adelie", "chinstrap"]


def test_a_value_outside_the_classes_is_refused_naming_the_column_and_the_values() -> None:
    y = pd.Series(["adelie", "emperor", "emperor", "king"], name="species")
    with pytest.raises(MlopsError) as err:
        SPECIES.encode(y)
    assert str(err.value) == (
        "target 'species': 3 row(s) hold values outside the classes "
        "['adelie', 'chinstrap', 'gentoo']: ['emperor', 'king']"
    )


def test_a_regression_target_encodes_to_floats_and_refuses_what_is_no_number() -> None:
    assert PRICE.encode(pd.Series(["1.5", "2", "3e2"], name="price")).tolist() == [1.5, 2.0, 300.0]
    assert PRICE.decode(np.array([1, 2.5])) == [1.0, 2.5]
    with pytest.raises(MlopsError, match=r"target 'price': 2 row\(s\) hold no finite number"):
        PRICE.encode(pd.Series(["1", "cheap", "inf"], name="price"))


class Proba:
    """A stand-in classifier answering the probabilities it is given (and, if told, classes_)."""

    def __init__(self, proba: list[list[float]], classes: list[int] | None = None) -> None:
        self.proba = np.array(proba)
        if classes is not None:
            self.classes_ = np.array(classes)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.proba[: len(X)]


X3 = pd.DataFrame({"a": [0.0, 1.0, 2.0]})


def test_binary_labels_are_p_positive_at_the_threshold() -> None:
    model = Proba([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]], classes=[0, 1])
    answers = BINARY.predict(model, X3)
    assert answers.values.tolist() == [0, 1, 1]
    assert Problem("binary", BINARY.classes, "income", threshold=0.7).predict(
        model, X3
    ).values.tolist() == [0, 0, 1]


def test_multiclass_labels_are_the_most_likely_class() -> None:
    model = Proba([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    answers = SPECIES.predict(model, X3)
    assert answers.values.tolist() == [1, 0, 2]
    assert answers.proba is not None and answers.proba.shape == (3, 3)


def test_a_class_absent_from_training_is_a_column_of_zeros_at_its_position() -> None:
    X = pd.DataFrame({"a": np.arange(12.0)})
    model = LogisticRegression().fit(X, [0] * 6 + [2] * 6)  # never saw class 1 ('chinstrap')
    answers = SPECIES.predict(model, X)
    assert answers.proba is not None
    assert (answers.proba[:, 1] == 0).all()
    np.testing.assert_allclose(answers.proba[:, [0, 2]], model.predict_proba(X))
    assert set(answers.values.tolist()) <= {0, 2}
    # The log loss still scores against all three classes the model knows.
    y = np.array([0] * 6 + [2] * 6)
    expected = skm.log_loss(y, answers.proba, labels=[0, 1, 2])
    assert SPECIES.score("log_loss", y, answers) == pytest.approx(expected)


def test_probability_columns_that_cannot_be_placed_are_refused() -> None:
    with pytest.raises(MlopsError, match="gives 2 probability columns for the 3 classes"):
        SPECIES.predict(Proba([[0.5, 0.5]] * 3), X3)
    with pytest.raises(MlopsError, match=r"knows labels \[7\] outside 0..2"):
        SPECIES.predict(Proba([[0.5, 0.5]] * 3, classes=[0, 7]), X3)


def test_a_regression_answers_its_numbers() -> None:
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    model = LinearRegression().fit(X, [1.0, 3.0, 5.0, 7.0])
    answers = PRICE.predict(model, X)
    assert answers.proba is None and answers.values.dtype == "float64"
    np.testing.assert_allclose(answers.values, [1.0, 3.0, 5.0, 7.0])


def test_scores_are_scikit_learns_for_each_type() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.2, 0.8, 0.4, 0.3, 0.9])
    binary = Predictions((p >= 0.5).astype(int), np.column_stack([1 - p, p]))
    assert BINARY.score("roc_auc", y, binary) == pytest.approx(skm.roc_auc_score(y, p))
    assert BINARY.score("f1", y, binary) == pytest.approx(skm.f1_score(y, binary.values))
    assert BINARY.score("brier", y, binary) == pytest.approx(skm.brier_score_loss(y, p))

    ym = np.array([0, 1, 2, 2, 1, 0])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]] * 2)
    multi = Predictions(proba.argmax(axis=1), proba)
    assert SPECIES.score("f1_macro", ym, multi) == pytest.approx(
        skm.f1_score(ym, multi.values, average="macro")
    )
    assert SPECIES.score("roc_auc_ovr", ym, multi) == pytest.approx(
        skm.roc_auc_score(ym, proba, multi_class="ovr")
    )

    yr = np.array([1.0, 2.0, 4.0])
    values = Predictions(np.array([1.5, 2.0, 3.0]))
    assert PRICE.score("rmse", yr, values) == pytest.approx(np.sqrt((0.25 + 0 + 1) / 3))
    assert PRICE.score("mae", yr, values) == pytest.approx(0.5)
    assert set(PRICE.score_all(yr, values)) == {"rmse", "mae", "r2", "mape"}


def test_a_metric_of_another_type_or_undefined_on_the_rows_is_a_value_error() -> None:
    values = Predictions(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="roc_auc does not apply to a regression problem"):
        PRICE.score("roc_auc", np.array([1.0, 2.0]), values)
    one_class = Predictions(np.array([1, 1]), np.array([[0.3, 0.7], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="roc_auc is undefined on these 2 rows"):
        BINARY.score("roc_auc", np.array([1, 1]), one_class)
    scores = BINARY.score_all(np.array([1, 1]), one_class)
    assert np.isnan(scores["roc_auc"]) and scores["accuracy"] == 1.0


def test_predictions_take_the_rows_of_a_resample() -> None:
    answers = Predictions(np.array([0, 1, 2]), np.eye(3))
    taken = answers.take(np.array([2, 2, 0]))
    assert taken.values.tolist() == [2, 2, 0] and len(taken) == 3
    assert taken.proba is not None and taken.proba[0].tolist() == [0, 0, 1]


def test_the_problem_of_a_resolved_target() -> None:
    target = TargetConfig(column="species", problem="multiclass", classes=("a", "b", "c"))
    assert problem_for(target) == Problem("multiclass", ("a", "b", "c"), "species")
    assert problem_for(target).stratify and not PRICE.stratify
